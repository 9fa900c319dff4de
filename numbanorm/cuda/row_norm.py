"""GPU kernels for per-row normalization (LayerNorm, GroupNorm, InstanceNorm).

Shape legend: x is a C-contiguous (R, M) device array with R = N * G rows of M = Cg * S
elements: row r = n * G + g holds the Cg channels of group g of sample n, each with S spatial
elements. The affine weight/bias have G * Cg entries; element (r, j) uses entry
g * Cg + j // S.
  LayerNorm:    G = 1, Cg = prod(normalized_shape), S = 1 (per-element affine)
  GroupNorm:    G = num_groups, Cg = C // G, S = prod(spatial)
  InstanceNorm: G = C, Cg = 1, S = prod(spatial)
Channels-last memory (GroupNorm/InstanceNorm on NLC/NHWC/NDHWC x, numbanorm.cuda.
row_norm_channels_last): the same kernels with `channels_last` set take x as its (N, S*C)
view; row r = n * G + g is then x[n, s*C + g*Cg + c] for j = s * Cg + c (consecutive j run
over a group's Cg adjacent channels, then the next s); y/dx in the same layout.
Dtypes: x/dy/y/dx float32, float64 or float16 (read into float64); weight/bias of x's dtype,
float32 for float16 x.

Forward: one block per row (grid-stride over rows). Pass 1 sums (x - x[r, 0]) and its square
in float64 per thread (coalesced: consecutive threads on consecutive j), the block reduces
them (shared memory, then warp shuffles); pass 2 writes y. Backward: the same per-row
structure for dx (row sums of w*dy and w*dy*xhat), and dweight/dbias by the channel kernels'
two-stage reduction over x viewed as (N, G*Cg, S) (channels-last: (N*S, C, 1)) with
per-(sample, group) statistics. No float atomics: deterministic.

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


@cuda.jit(device=True)
def _column(j, base, Cg, C, channels_last):
    """The column of x's 2-D view holding element j of a row whose group starts at channel base
    (see the module docstring); j itself for the (N*G, Cg*S) rows."""
    if channels_last:
        s = j // Cg
        return s * C + base + (j - s * Cg)
    return j


@cuda.jit(device=True)
def _channel(j, base, Cg, S, channels_last):
    """The channel (weight/bias entry) of element j of a row whose group starts at base."""
    if channels_last:
        return base + j % Cg
    return base + j // S


@cuda.jit
def _forward(x, weight, bias, G, Cg, S, eps, cached, channels_last, y, mean, rstd):
    R = mean.shape[0]
    M = Cg * S
    C = G * Cg
    sh = cuda.shared.array(0, float64)  # [0, 2T): block_sum2; [2T, 2T + M): the row when cached
    tid = cuda.threadIdx.x
    T = cuda.blockDim.x
    row = 2 * T
    for r in range(cuda.blockIdx.x, R, cuda.gridDim.x):
        xr = r // G if channels_last else r  # x's row holding row r
        base = (r % G) * Cg
        # pass 1: shifted sums (the shift keeps the variance free of cancellation)
        shift = float64(x[xr, base if channels_last else 0])
        a1 = 0.0
        a2 = 0.0
        for j in range(tid, M, T):
            v = float64(x[xr, _column(j, base, Cg, C, channels_last)])
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
        for j in range(tid, M, T):
            col = _column(j, base, Cg, C, channels_last)
            ch = _channel(j, base, Cg, S, channels_last)
            v = sh[row + j] if cached else float64(x[xr, col])
            y[xr, col] = (v - m) * (rs * weight[ch]) + bias[ch]


KERNEL_SIGNATURES["_forward"] = float_signatures(
    "{f}[:, ::1], {p}[::1], {p}[::1], int64, int64, int64, float64, boolean, boolean, {f}[:, ::1], "
    "float64[::1], float64[::1]", half=True)


def forward(x, weight, bias, G, Cg, S, eps, channels_last=False):
    """Row-norm forward. weight/bias: (G*Cg,) device arrays of x's dtype, float32 for float16 x
    (ones/zeros when absent). x: the (N*G, Cg*S) rows, or with channels_last the (N, S*C) view
    of channels-last memory (y in x's layout).

    Returns (y, mean, rstd); mean and rstd are float64 (N*G,) device arrays.
    """
    R, M = (x.shape[0] * G, Cg * S) if channels_last else x.shape
    t, blocks, cached, _ = plan(R, M)
    y = device_array(x.shape, x.dtype)
    mean = device_array(R, np.float64)
    rstd = device_array(R, np.float64)
    shmem = shared_bytes(t) + (8 * M if cached else 0)
    launch(_forward, blocks, t, shmem)(x, weight, bias, int(G), int(Cg), int(S), float(eps), cached,
                                       bool(channels_last), y, mean, rstd)
    return y, mean, rstd


@cuda.jit
def _backward_dx(x, dy, mean, rstd, weight, G, Cg, S, cached, channels_last, dx):
    R = mean.shape[0]
    M = Cg * S
    C = G * Cg
    sh = cuda.shared.array(0, float64)  # [0, 2T): block_sum2; then w*dy and xhat when cached
    tid = cuda.threadIdx.x
    T = cuda.blockDim.x
    row = 2 * T
    for r in range(cuda.blockIdx.x, R, cuda.gridDim.x):
        m = mean[r]
        rs = rstd[r]
        xr = r // G if channels_last else r
        base = (r % G) * Cg
        # pass 1: s1 = sum(w * dy), s2 = sum(w * dy * xhat) over the row
        s1 = 0.0
        s2 = 0.0
        for j in range(tid, M, T):
            col = _column(j, base, Cg, C, channels_last)
            wg = float64(weight[_channel(j, base, Cg, S, channels_last)]) * float64(dy[xr, col])
            xh = (float64(x[xr, col]) - m) * rs
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
            col = _column(j, base, Cg, C, channels_last)
            if cached:
                wg = sh[row + j]
                xh = sh[row + M + j]
            else:
                wg = float64(weight[_channel(j, base, Cg, S, channels_last)]) * float64(dy[xr, col])
                xh = (float64(x[xr, col]) - m) * rs
            dx[xr, col] = rs * (wg - f1 - xh * f2)


KERNEL_SIGNATURES["_backward_dx"] = float_signatures(
    "{f}[:, ::1], {f}[:, ::1], float64[::1], float64[::1], {p}[::1], int64, int64, int64, "
    "boolean, boolean, {f}[:, ::1]", half=True)


def backward(x, dy, mean, rstd, weight, G, Cg, S, channels_last=False):
    """Row-norm backward -> (dx, dweight, dbias); dweight/dbias float64 (G*Cg,) device arrays.
    x, dy (and dx): the layout forward took (channels_last: the (N, S*C) view).

    dweight[ch] = sum over rows and spatial of dy * xhat, dbias[ch] = sum of dy.
    """
    R, M = (x.shape[0] * G, Cg * S) if channels_last else x.shape
    t, blocks, _, cached = plan(R, M)
    dx = device_array(x.shape, x.dtype)
    shmem = shared_bytes(t) + (16 * M if cached else 0)
    launch(_backward_dx, blocks, t, shmem)(x, dy, mean, rstd, weight, int(G), int(Cg), int(S),
                                           cached, bool(channels_last), dx)
    N = R // G
    if channels_last:  # the (N*S, C, 1) view: channel sums over N*S rows, statistic (n, g)
        x3 = x.reshape(N * S, G * Cg, 1)
        dy3 = dy.reshape(N * S, G * Cg, 1)
        p1, p2 = channel_reduce.partial_sums(x3, dy3, mean, rstd, G, Cg, 2, nrows=S)
    else:
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
    "float64[::1], float64[::1], float64, int64, int64, {p}[::1], {p}[::1], float64")


def instance_running_update(mean, rstd, eps, N, C, S, running_mean, running_var, momentum):
    """InstanceNorm running statistics: per-instance mean and unbiased variance, averaged over N.

    mean/rstd: float64 (N*C,) per-instance statistics from forward. Updates in place on the device.
    """
    t = threads()
    launch(_instance_running_update, cdiv(C, t), t)(mean, rstd, float(eps), int(N), int(S),
                                            running_mean, running_var, float(momentum))
