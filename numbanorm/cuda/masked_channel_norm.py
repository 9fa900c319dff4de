"""GPU kernels for BatchNorm with masked statistics (padded batches, variable-size inputs).

Shape legend: x is a C-contiguous (N, C, S) device array (float32, float64, or float16 read
into float64); mask an (N, S) uint8 device array shared by every channel (1: the position
enters the statistics). Partial shifted sums per
(channel, chunk) block, then one thread per channel merges them in order (no float atomics,
deterministic); every position is normalized by numbanorm.cuda.channel_norm.
"""
import numpy as np
from numba import cuda, float64

from . import config
from .channel_norm import backward_coefficients
from .channel_reduce import block_chunk, split, sum_row
from ._common import (block_sum2, cdiv, device_array, float_signatures, grid_1d, launch,
                      shared_bytes, threads, unravel3)

KERNEL_SIGNATURES = {}  # kernel name -> argument signatures (see _common)


@cuda.jit
def _masked_partials(x, mask, n0, s0, chunk, p1, p2):
    """Block b = c * P + p: shifted sums of channel c over its chunk, selected positions only."""
    N, C, S = x.shape
    sh = cuda.shared.array(0, float64)
    tid = cuda.threadIdx.x
    T = cuda.blockDim.x
    c, p, i0, i1 = block_chunk(p1.shape[1], chunk, N * S)
    shift = float64(x[n0, c, s0])
    a1 = 0.0
    a2 = 0.0
    for i in range(i0 + tid, i1, T):
        n = i // S
        s = i - n * S
        if mask[n, s] != 0:
            d = float64(x[n, c, s]) - shift
            a1 += d
            a2 += d * d
    a1, a2 = block_sum2(a1, a2, sh)
    if tid == 0:
        p1[c, p] = a1
        p2[c, p] = a2


KERNEL_SIGNATURES["_masked_partials"] = float_signatures(
    "{f}[:, :, ::1], uint8[:, ::1], int64, int64, int64, float64[:, ::1], float64[:, ::1]", half=True)


@cuda.jit
def _masked_finish(p1, p2, x, n0, s0, count, mean, var):
    c = cuda.grid(1)
    if c < mean.shape[0]:
        d = sum_row(p1, c) / count
        mean[c] = float64(x[n0, c, s0]) + d
        var[c] = max(sum_row(p2, c) / count - d * d, 0.0)


KERNEL_SIGNATURES["_masked_finish"] = float_signatures(
    "float64[:, ::1], float64[:, ::1], {f}[:, :, ::1], int64, int64, float64, float64[::1], float64[::1]",
    half=True)


def stats(x, mask, n0, s0, count):
    """Per-channel mean and biased variance (float64 (C,) device arrays) of an (N, C, S) device
    array over the positions where the (N, S) uint8 device mask is nonzero; x[n0, c, s0] (a
    selected value) is the shift of channel c's sums; count: the number of selected positions."""
    N, C, S = x.shape
    t = threads()
    P, chunk = split(N * S, t * max(1, int(config.ITEMS_PER_THREAD)), cdiv(config.TARGET_BLOCKS, C))
    p1 = device_array((C, P), np.float64)
    p2 = device_array((C, P), np.float64)
    launch(_masked_partials, C * P, t, shared_bytes(t))(x, mask, int(n0), int(s0), chunk, p1, p2)
    count = float(count)
    mean = device_array(C, np.float64)
    var = device_array(C, np.float64)
    launch(_masked_finish, cdiv(C, t), t)(p1, p2, x, int(n0), int(s0), count, mean, var)
    return mean, var


@cuda.jit
def _masked_backward_dx(x, dy, mask, mean, a, b, d, dx):
    N, C, S = x.shape
    CS = C * S
    for i in range(cuda.grid(1), N * CS, cuda.gridsize(1)):
        n, c, s = unravel3(i, CS, S)
        v = a[c] * float64(dy[n, c, s])
        if mask[n, s] != 0:
            v += b[c] * (float64(x[n, c, s]) - mean[c]) + d[c]
        dx[n, c, s] = v


KERNEL_SIGNATURES["_masked_backward_dx"] = float_signatures(
    "{f}[:, :, ::1], {f}[:, :, ::1], uint8[:, ::1], float64[::1], float64[::1], float64[::1], "
    "float64[::1], {f}[:, :, ::1]", half=True)


def backward_from_sums(x, dy, mean, rstd, weight, mask, sum_dy, sum_dy_xmu, count):
    """Backward of BatchNorm with statistics over the `count` selected positions of the (N, S)
    uint8 mask; sums over ALL positions (backward_sums). Same formula as numbanorm.cpu:
        dx = k*dy + [selected] * (-k*rstd^2*sum_dy_xmu/count * (x - mean) - k*sum_dy/count)
    Returns (dx, dweight, dbias), grads float64 (C,) device arrays."""
    N, C, S = x.shape
    t = threads()
    dx = device_array(x.shape, x.dtype)
    dweight, dbias, a, b, d = backward_coefficients(sum_dy, sum_dy_xmu, rstd, weight, True, count,
                                                    x.dtype)
    launch(_masked_backward_dx, grid_1d(N * C * S, t), t)(x, dy, mask, mean, a, b, d, dx)
    return dx, dweight, dbias
