"""GPU kernels for per-row normalization (LayerNorm, GroupNorm, InstanceNorm).

Shape legend: x is a C-contiguous (R, M) device array with R = N * G rows of M = Cg * S
elements: row r = n * G + g holds the Cg channels of group g of sample n, each with S spatial
elements. The affine weight/bias have G * Cg entries; element (r, j) uses entry
g * Cg + j // S.
  LayerNorm:    G = 1, Cg = prod(normalized_shape), S = 1 (per-element affine)
  GroupNorm:    G = num_groups, Cg = C // G, S = prod(spatial)
  InstanceNorm: G = C, Cg = 1, S = prod(spatial)

Forward: one block per row (grid-stride over rows). Pass 1 sums (x - x[r, 0]) and its square
in float64 per thread (coalesced: consecutive threads on consecutive j), the block reduces
them (shared memory, then warp shuffles); pass 2 re-reads the row (from L2 for rows that fit)
and writes y. Backward: the same per-row structure for dx (row sums of w*dy and w*dy*xhat),
and dweight/dbias by the channel kernels' two-stage reduction over x viewed as (N, G*Cg, S)
with per-(sample, group) statistics. No float atomics: deterministic.
"""
import math

import numpy as np
from numba import cuda, float64

from . import channel_norm, config
from ._common import (block_sum2, cdiv, device_array, float_signatures, op_stream, shared_bytes,
                      threads)

KERNEL_SIGNATURES = {}  # kernel name -> argument signatures (see _common)


def _row_blocks(R):
    """One block per row, grid-striding over rows beyond a few waves of config.TARGET_BLOCKS."""
    return max(1, min(R, 4 * int(config.TARGET_BLOCKS)))


@cuda.jit
def _forward(x, weight, bias, G, Cg, S, eps, y, mean, rstd):
    R, M = x.shape
    sh = cuda.shared.array(0, float64)
    tid = cuda.threadIdx.x
    T = cuda.blockDim.x
    for r in range(cuda.blockIdx.x, R, cuda.gridDim.x):
        # pass 1: shifted sums (the shift keeps the variance free of cancellation)
        shift = float64(x[r, 0])
        a1 = 0.0
        a2 = 0.0
        for j in range(tid, M, T):
            d = float64(x[r, j]) - shift
            a1 += d
            a2 += d * d
        a1, a2 = block_sum2(a1, a2, sh)
        d_mean = a1 / M
        m = shift + d_mean
        rs = 1.0 / math.sqrt(max(a2 / M - d_mean * d_mean, 0.0) + eps)
        if tid == 0:
            mean[r] = m
            rstd[r] = rs
        # pass 2: normalize and apply the affine
        base = (r % G) * Cg
        for j in range(tid, M, T):
            ch = base + j // S
            y[r, j] = (float64(x[r, j]) - m) * (rs * weight[ch]) + bias[ch]


KERNEL_SIGNATURES["_forward"] = float_signatures(
    "{f}[:, ::1], {f}[::1], {f}[::1], int64, int64, int64, float64, {f}[:, ::1], "
    "float64[::1], float64[::1]")


def forward(x, weight, bias, G, Cg, S, eps):
    """Row-norm forward. weight/bias: (G*Cg,) device arrays of x's dtype (ones/zeros when absent).

    Returns (y, mean, rstd); mean and rstd are float64 (R,) device arrays.
    """
    R, M = x.shape
    t = threads()
    y = device_array((R, M), x.dtype)
    mean = device_array(R, np.float64)
    rstd = device_array(R, np.float64)
    _forward[_row_blocks(R), t, op_stream(), shared_bytes(t)](x, weight, bias, int(G), int(Cg), int(S), float(eps),
                                                            y, mean, rstd)
    return y, mean, rstd


@cuda.jit
def _backward_dx(x, dy, mean, rstd, weight, G, Cg, S, dx):
    R, M = x.shape
    sh = cuda.shared.array(0, float64)
    tid = cuda.threadIdx.x
    T = cuda.blockDim.x
    for r in range(cuda.blockIdx.x, R, cuda.gridDim.x):
        m = mean[r]
        rs = rstd[r]
        base = (r % G) * Cg
        # pass 1: s1 = sum(w * dy), s2 = sum(w * dy * xhat) over the row
        s1 = 0.0
        s2 = 0.0
        for j in range(tid, M, T):
            wg = float64(weight[base + j // S]) * float64(dy[r, j])
            s1 += wg
            s2 += wg * ((float64(x[r, j]) - m) * rs)
        s1, s2 = block_sum2(s1, s2, sh)
        # pass 2: dx = rstd * (w*dy - (s1 + xhat*s2) / M)
        f1 = s1 / M
        f2 = s2 / M
        for j in range(tid, M, T):
            xh = (float64(x[r, j]) - m) * rs
            dx[r, j] = rs * (weight[base + j // S] * float64(dy[r, j]) - f1 - xh * f2)


KERNEL_SIGNATURES["_backward_dx"] = float_signatures(
    "{f}[:, ::1], {f}[:, ::1], float64[::1], float64[::1], {f}[::1], int64, int64, int64, "
    "{f}[:, ::1]")


def backward(x, dy, mean, rstd, weight, G, Cg, S):
    """Row-norm backward -> (dx, dweight, dbias); dweight/dbias float64 (G*Cg,) device arrays.

    dweight[ch] = sum over rows and spatial of dy * xhat, dbias[ch] = sum of dy.
    """
    R, M = x.shape
    t = threads()
    dx = device_array((R, M), x.dtype)
    _backward_dx[_row_blocks(R), t, op_stream(), shared_bytes(t)](x, dy, mean, rstd, weight,
                                                                int(G), int(Cg), int(S), dx)
    N = R // G
    x3 = x.reshape(N, G * Cg, S)
    dy3 = dy.reshape(N, G * Cg, S)
    p1, p2 = channel_norm.partial_sums(x3, dy3, mean, rstd, G, Cg, 2)
    dbias, dweight = channel_norm.merge(p1, p2)
    return dx, dweight, dbias


@cuda.jit
def _instance_running_update(mean, rstd, eps, N, S, running_mean, running_var, momentum):
    """Per channel c: average over n of the instance mean and unbiased variance, then the
    running update. Serial over n (fixed order)."""
    C = running_mean.shape[0]
    c = cuda.grid(1)
    if c >= C:
        return
    sm = 0.0
    sv = 0.0
    for n in range(N):
        rs = rstd[n * C + c]
        sm += mean[n * C + c]
        sv += (1.0 / (rs * rs) - eps) * (S / (S - 1.0))
    running_mean[c] = running_mean[c] * (1.0 - momentum) + momentum * (sm / N)
    running_var[c] = running_var[c] * (1.0 - momentum) + momentum * (sv / N)


KERNEL_SIGNATURES["_instance_running_update"] = float_signatures(
    "float64[::1], float64[::1], float64, int64, int64, {f}[::1], {f}[::1], float64")


def instance_running_update(mean, rstd, eps, N, C, S, running_mean, running_var, momentum):
    """InstanceNorm running statistics: per-instance mean and unbiased variance, averaged over N.

    mean/rstd: float64 (N*C,) per-instance statistics from forward. Updates in place on the device.
    """
    t = threads()
    _instance_running_update[cdiv(C, t), t, op_stream()](mean, rstd, float(eps), int(N), int(S),
                                            running_mean, running_var, float(momentum))
