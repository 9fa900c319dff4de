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
them (shared memory, then warp shuffles); pass 2 writes y. Backward: the same per-row
structure for dx (row sums of w*dy and w*dy*xhat), and dweight/dbias by the channel kernels'
two-stage reduction over x viewed as (N, G*Cg, S) with per-(sample, group) statistics. No
float atomics: deterministic.

Read once: a row that fits in config.ROW_CACHE_BYTES of shared memory per block (default 32 KB:
rows of up to 4096 elements in the forward, 2048 in the backward, which keeps x and w*dy) is
kept there, in float64, between pass 1 and pass 2, so x (and dy) are read from global memory
once; a longer row is read again in pass 2 (from L2 when it fits there). Each thread re-reads
only the elements it stored, so the cached path needs no extra barrier and gives the same bits.
"""
import functools
import math

import numpy as np
from numba import cuda, float64

from . import channel_reduce, config
from ._common import (block_sum2, cdiv, device_array, float_signatures, launch, shared_bytes,
                      threads)

KERNEL_SIGNATURES = {}  # kernel name -> argument signatures (see _common)


@functools.lru_cache(maxsize=256)
def _row_plan(R, M, t, target_blocks, cache_bytes):
    """(blocks, forward caches the row, backward caches the row): one block per row,
    grid-striding over rows beyond a few waves of config.TARGET_BLOCKS; cached when the row's
    float64 copies (1 per element forward, 2 backward) fit in cache_bytes, capped so that the
    block's dynamic shared memory stays within the 48 KB every GPU gives without opt-in."""
    budget = min(int(cache_bytes), 48 * 1024 - shared_bytes(t)) // 8
    return max(1, min(R, 4 * int(target_blocks))), M <= budget, 2 * M <= budget


def plan(R, M):
    """The launch plan of an (R, M) row norm under the current config (cached per shape)."""
    t = threads()
    return (t,) + _row_plan(R, M, t, int(config.TARGET_BLOCKS), int(config.ROW_CACHE_BYTES))


@cuda.jit
def _forward(x, weight, bias, G, Cg, S, eps, cached, y, mean, rstd):
    R, M = x.shape
    sh = cuda.shared.array(0, float64)  # [0, 2T): block_sum2; [2T, 2T + M): the row when cached
    tid = cuda.threadIdx.x
    T = cuda.blockDim.x
    row = 2 * T
    for r in range(cuda.blockIdx.x, R, cuda.gridDim.x):
        # pass 1: shifted sums (the shift keeps the variance free of cancellation)
        shift = float64(x[r, 0])
        a1 = 0.0
        a2 = 0.0
        for j in range(tid, M, T):
            v = float64(x[r, j])
            if cached:
                sh[row + j] = v
            d = v - shift
            a1 += d
            a2 += d * d
        a1, a2 = block_sum2(a1, a2, sh)
        d_mean = a1 / M
        m = shift + d_mean
        rs = 1.0 / math.sqrt(max(a2 / M - d_mean * d_mean, 0.0) + eps)
        if tid == 0:
            mean[r] = m
            rstd[r] = rs
        # pass 2: normalize and apply the affine (x from shared memory when cached)
        base = (r % G) * Cg
        for j in range(tid, M, T):
            ch = base + j // S
            v = sh[row + j] if cached else float64(x[r, j])
            y[r, j] = (v - m) * (rs * weight[ch]) + bias[ch]


KERNEL_SIGNATURES["_forward"] = float_signatures(
    "{f}[:, ::1], {f}[::1], {f}[::1], int64, int64, int64, float64, boolean, {f}[:, ::1], "
    "float64[::1], float64[::1]")


def forward(x, weight, bias, G, Cg, S, eps):
    """Row-norm forward. weight/bias: (G*Cg,) device arrays of x's dtype (ones/zeros when absent).

    Returns (y, mean, rstd); mean and rstd are float64 (R,) device arrays.
    """
    R, M = x.shape
    t, blocks, cached, _ = plan(R, M)
    y = device_array((R, M), x.dtype)
    mean = device_array(R, np.float64)
    rstd = device_array(R, np.float64)
    shmem = shared_bytes(t) + (8 * M if cached else 0)
    launch(_forward, blocks, t, shmem)(x, weight, bias, int(G), int(Cg), int(S), float(eps), cached,
                                            y, mean, rstd)
    return y, mean, rstd


@cuda.jit
def _backward_dx(x, dy, mean, rstd, weight, G, Cg, S, cached, dx):
    R, M = x.shape
    sh = cuda.shared.array(0, float64)  # [0, 2T): block_sum2; then w*dy and xhat when cached
    tid = cuda.threadIdx.x
    T = cuda.blockDim.x
    row = 2 * T
    for r in range(cuda.blockIdx.x, R, cuda.gridDim.x):
        m = mean[r]
        rs = rstd[r]
        base = (r % G) * Cg
        # pass 1: s1 = sum(w * dy), s2 = sum(w * dy * xhat) over the row
        s1 = 0.0
        s2 = 0.0
        for j in range(tid, M, T):
            wg = float64(weight[base + j // S]) * float64(dy[r, j])
            xh = (float64(x[r, j]) - m) * rs
            if cached:
                sh[row + j] = wg
                sh[row + M + j] = xh
            s1 += wg
            s2 += wg * xh
        s1, s2 = block_sum2(s1, s2, sh)
        # pass 2: dx = rstd * (w*dy - (s1 + xhat*s2) / M)
        f1 = s1 / M
        f2 = s2 / M
        for j in range(tid, M, T):
            if cached:
                wg = sh[row + j]
                xh = sh[row + M + j]
            else:
                wg = weight[base + j // S] * float64(dy[r, j])
                xh = (float64(x[r, j]) - m) * rs
            dx[r, j] = rs * (wg - f1 - xh * f2)


KERNEL_SIGNATURES["_backward_dx"] = float_signatures(
    "{f}[:, ::1], {f}[:, ::1], float64[::1], float64[::1], {f}[::1], int64, int64, int64, "
    "boolean, {f}[:, ::1]")


def backward(x, dy, mean, rstd, weight, G, Cg, S):
    """Row-norm backward -> (dx, dweight, dbias); dweight/dbias float64 (G*Cg,) device arrays.

    dweight[ch] = sum over rows and spatial of dy * xhat, dbias[ch] = sum of dy.
    """
    R, M = x.shape
    t, blocks, _, cached = plan(R, M)
    dx = device_array((R, M), x.dtype)
    shmem = shared_bytes(t) + (16 * M if cached else 0)
    launch(_backward_dx, blocks, t, shmem)(x, dy, mean, rstd, weight, int(G), int(Cg), int(S),
                                                cached, dx)
    N = R // G
    x3 = x.reshape(N, G * Cg, S)
    dy3 = dy.reshape(N, G * Cg, S)
    p1, p2 = channel_reduce.partial_sums(x3, dy3, mean, rstd, G, Cg, 2)
    dbias, dweight = channel_reduce.merge(p1, p2)
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
    launch(_instance_running_update, cdiv(C, t), t)(mean, rstd, float(eps), int(N), int(S),
                                            running_mean, running_var, float(momentum))
