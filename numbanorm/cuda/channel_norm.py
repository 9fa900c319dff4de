"""GPU kernels for per-channel normalization (BatchNorm; InstanceNorm with running stats).

Shape legend: x is a C-contiguous (N, C, S) device array, S = prod(spatial) (1 for (N, C)).
Statistics are reduced per channel over the L = N * S values of a channel; all statistics
and parameter gradients are float64 (C,) device arrays. Same formulas as numbanorm.cpu.

Two-stage reduction (no float atomics, deterministic):
  1. partial blocks: channel c is cut into P chunks, P chosen from the shape and config so
     that about config.TARGET_BLOCKS blocks run even when C is small; each block writes
     partial sums p1[c, p], p2[c, p]. Layouts:
       plane   (S > 1, or C < 32): a block walks its chunk of (n, s) with consecutive threads
               on consecutive s (coalesced), then reduces in shared memory / warp shuffles;
       column  (S == 1 and C >= 32): consecutive threads take consecutive channels of a row
               (coalesced) and each sums its column over a chunk of rows.
  2. one thread per channel sums its P partials in order and computes what the next pass
     needs (mean, rstd, scale/offset, running-stat update, or the backward coefficients).
A forward in training is 3 launches (partials, coefficients, affine); a backward 4.

Partial modes: 0 = shifted stats of x: p1 = sum(x - x[0, c, 0]), p2 = sum((x - x[0, c, 0])^2);
1 = backward sums: p1 = sum(dy), p2 = sum(dy * (x - mean[k])); 2 = as 1 with p2 scaled by
rstd[k]. The statistic index is k = n * nstride + c // Cg (nstride = 0, Cg = 1 for BatchNorm;
the row-norm backward uses nstride = G to get per-(sample, group) statistics).
"""
import functools
import math

import numpy as np
from numba import cuda, float64

from . import config
from ._common import (block_sum2, cdiv, device_array, flat, float_signatures, grid_1d, launch,
                      shared_bytes, threads)

COLUMN_MIN_C = 32  # (N, C) input with at least this many channels uses the column layout
KERNEL_SIGNATURES = {}  # kernel name -> argument signatures (see _common)


# ---------------------------------------------------------------- stage 1: partial sums

@cuda.jit(device=True)
def cdiv_dev(a, b):
    return (a + b - 1) // b


@cuda.jit
def _plane_partials(x, dy, mean, rstd, nstride, Cg, mode, chunk, p1, p2):
    """Block b = c * P + p reduces values i in [p*chunk, (p+1)*chunk) of channel c (i = n*S + s)."""
    N, C, S = x.shape
    P = p1.shape[1]
    sh = cuda.shared.array(0, float64)
    tid = cuda.threadIdx.x
    T = cuda.blockDim.x
    c = cuda.blockIdx.x // P
    p = cuda.blockIdx.x % P
    i0 = p * chunk
    i1 = min(N * S, i0 + chunk)
    a1 = 0.0
    a2 = 0.0
    if mode == 0:
        shift = float64(x[0, c, 0])
        for i in range(i0 + tid, i1, T):
            n = i // S
            s = i - n * S
            d = float64(x[n, c, s]) - shift
            a1 += d
            a2 += d * d
    else:
        g0 = c // Cg
        for i in range(i0 + tid, i1, T):
            n = i // S
            s = i - n * S
            k = n * nstride + g0
            g = float64(dy[n, c, s])
            t = g * (float64(x[n, c, s]) - mean[k])
            if mode == 2:
                t *= rstd[k]
            a1 += g
            a2 += t
    a1, a2 = block_sum2(a1, a2, sh)
    if tid == 0:
        p1[c, p] = a1
        p2[c, p] = a2


KERNEL_SIGNATURES["_plane_partials"] = float_signatures(
    "{f}[:, :, ::1], {f}[:, :, ::1], float64[::1], float64[::1], int64, int64, int64, int64, "
    "float64[:, ::1], float64[:, ::1]")


@cuda.jit
def _column_partials(x, dy, mean, rstd, nstride, Cg, mode, chunk, p1, p2):
    """S == 1: thread (column block cb, chunk p) sums channel c over rows [p*chunk, (p+1)*chunk)."""
    N, C, _ = x.shape
    ncb = cdiv_dev(C, cuda.blockDim.x)
    cb = cuda.blockIdx.x % ncb
    p = cuda.blockIdx.x // ncb
    c = cb * cuda.blockDim.x + cuda.threadIdx.x
    if c >= C:
        return
    a1 = 0.0
    a2 = 0.0
    n1 = min(N, (p + 1) * chunk)
    if mode == 0:
        shift = float64(x[0, c, 0])
        for n in range(p * chunk, n1):
            d = float64(x[n, c, 0]) - shift
            a1 += d
            a2 += d * d
    else:
        g0 = c // Cg
        for n in range(p * chunk, n1):
            k = n * nstride + g0
            g = float64(dy[n, c, 0])
            t = g * (float64(x[n, c, 0]) - mean[k])
            if mode == 2:
                t *= rstd[k]
            a1 += g
            a2 += t
    p1[c, p] = a1
    p2[c, p] = a2


KERNEL_SIGNATURES["_column_partials"] = float_signatures(
    "{f}[:, :, ::1], {f}[:, :, ::1], float64[::1], float64[::1], int64, int64, int64, int64, "
    "float64[:, ::1], float64[:, ::1]")


@functools.lru_cache(maxsize=256)
def _partial_plan(N, C, S, t, items, target_blocks):
    """(column layout?, blocks, P, chunk, shared bytes) of stage 1 (cached per shape and config)."""
    if S == 1 and C >= COLUMN_MIN_C:
        ncb = cdiv(C, t)
        P = max(1, min(cdiv(N, items), cdiv(target_blocks, ncb)))
        chunk = cdiv(N, P)
        P = cdiv(N, chunk)
        return True, ncb * P, P, chunk, 0
    L = N * S
    P = max(1, min(cdiv(L, t * items), cdiv(target_blocks, C)))
    chunk = cdiv(L, P)
    P = cdiv(L, chunk)
    return False, C * P, P, chunk, shared_bytes(t)


def partial_sums(x, dy, mean, rstd, nstride, Cg, mode):
    """Stage 1 for any mode: returns the (C, P) float64 partial arrays (p1, p2)."""
    N, C, S = x.shape
    t = threads()
    column, grid, P, chunk, shmem = _partial_plan(N, C, S, t, max(1, int(config.ITEMS_PER_THREAD)),
                                                  int(config.TARGET_BLOCKS))
    kernel = _column_partials if column else _plane_partials
    p1 = device_array((C, P), np.float64)
    p2 = device_array((C, P), np.float64)
    dy = x if dy is None else dy
    mean = p1.reshape(C * P) if mean is None else mean  # unused in mode 0
    rstd = mean if rstd is None else rstd
    launch(kernel, grid, t, shmem)(x, dy, mean, rstd, int(nstride), int(Cg), int(mode), int(chunk), p1, p2)
    return p1, p2


# ---------------------------------------------------------------- stage 2: merges

@cuda.jit(device=True)
def _sum_row(p, c):
    s = 0.0
    for j in range(p.shape[1]):
        s += p[c, j]
    return s


@cuda.jit
def _merge(p1, p2, out1, out2):
    c = cuda.grid(1)
    if c < out1.shape[0]:
        out1[c] = _sum_row(p1, c)
        out2[c] = _sum_row(p2, c)


KERNEL_SIGNATURES["_merge"] = float_signatures(
    "float64[:, ::1], float64[:, ::1], float64[::1], float64[::1]")


def merge(p1, p2):
    """Sum (C, P) partials over P in order -> two float64 (C,) arrays."""
    C = p1.shape[0]
    out1 = device_array(C, np.float64)
    out2 = device_array(C, np.float64)
    t = threads()
    launch(_merge, cdiv(C, t), t)(p1, p2, out1, out2)
    return out1, out2


@cuda.jit
def _stats(p1, p2, x, count, mean, var):
    c = cuda.grid(1)
    if c < mean.shape[0]:
        d = _sum_row(p1, c) / count
        mean[c] = float64(x[0, c, 0]) + d
        var[c] = max(_sum_row(p2, c) / count - d * d, 0.0)


KERNEL_SIGNATURES["_stats"] = float_signatures(
    "float64[:, ::1], float64[:, ::1], {f}[:, :, ::1], int64, float64[::1], float64[::1]")


def stats(x):
    """Per-channel mean and biased variance (float64 (C,) device arrays) of an (N, C, S) array.

    One pass over x: sums of (x - x[0, c, 0]) and its square in float64 (the shift keeps the
    variance free of cancellation for data with a large mean).
    """
    N, C, S = x.shape
    p1, p2 = partial_sums(x, None, None, None, 0, 1, 0)
    mean = device_array(C, np.float64)
    var = device_array(C, np.float64)
    t = threads()
    launch(_stats, cdiv(C, t), t)(p1, p2, x, int(N * S), mean, var)
    return mean, var


TRAINING, HAS_RUNNING, HAS_WEIGHT, HAS_BIAS = 1, 2, 4, 8  # _forward_coeffs' flags


@cuda.jit
def _forward_coeffs(p1, p2, x, count, flags, eps, momentum, running_mean, running_var,
                    weight, bias, mean, rstd, scale, offset):
    """Per channel: statistics (batch, or running when not training), the running-stat update,
    and the affine coefficients y = (x - mean) * scale + offset. flags: TRAINING | HAS_RUNNING |
    HAS_WEIGHT | HAS_BIAS (one argument, not four)."""
    c = cuda.grid(1)
    if c >= mean.shape[0]:
        return
    training = (flags & TRAINING) != 0
    has_running = (flags & HAS_RUNNING) != 0
    has_weight = (flags & HAS_WEIGHT) != 0
    has_bias = (flags & HAS_BIAS) != 0
    if training:
        d = _sum_row(p1, c) / count
        m = float64(x[0, c, 0]) + d
        v = max(_sum_row(p2, c) / count - d * d, 0.0)
        if has_running:
            running_mean[c] = running_mean[c] * (1.0 - momentum) + momentum * m
            running_var[c] = running_var[c] * (1.0 - momentum) + momentum * v * (count / (count - 1.0))
    else:
        m = float64(running_mean[c])
        v = float64(running_var[c])
    rs = 1.0 / math.sqrt(v + eps)
    mean[c] = m
    rstd[c] = rs
    scale[c] = rs * weight[c] if has_weight else rs
    offset[c] = float64(bias[c]) if has_bias else 0.0


KERNEL_SIGNATURES["_forward_coeffs"] = float_signatures(
    # running stats: the data dtype, or float64 (SyncBatchNorm's global statistics)
    "float64[:, ::1], float64[:, ::1], {f}[:, :, ::1], int64, int64, float64, float64, {f}[::1], {f}[::1], "
    "{f}[::1], {f}[::1], float64[::1], float64[::1], float64[::1], float64[::1]",
    "float64[:, ::1], float64[:, ::1], {f}[:, :, ::1], int64, int64, float64, float64, float64[::1], "
    "float64[::1], {f}[::1], {f}[::1], float64[::1], float64[::1], float64[::1], float64[::1]")


@cuda.jit
def _affine(u, center, scale, offset, out):
    """out[n, c, s] = (u[n, c, s] - center[c]) * scale[c] + offset[c] over a flat grid-stride loop."""
    N, C, S = u.shape
    CS = C * S
    for i in range(cuda.grid(1), N * CS, cuda.gridsize(1)):
        n = i // CS
        r = i - n * CS
        c = r // S
        s = r - c * S
        out[n, c, s] = (float64(u[n, c, s]) - center[c]) * scale[c] + offset[c]


KERNEL_SIGNATURES["_affine"] = float_signatures(
    "{f}[:, :, ::1], float64[::1], float64[::1], float64[::1], {f}[:, :, ::1]")


def forward(x, weight, bias, eps, training, running_mean, running_var, momentum):
    """BatchNorm forward on an (N, C, S) device array.

    training: normalize with the batch statistics and, when running stats are given, update
    them in place on the device (running = (1 - momentum) * running + momentum * batch,
    unbiased variance). Otherwise normalize with running_mean / running_var.
    Returns (y, mean, rstd) with float64 (C,) statistics used for the normalization.
    """
    N, C, S = x.shape
    t = threads()
    mean = device_array(C, np.float64)
    rstd = device_array(C, np.float64)
    scale = device_array(C, np.float64)
    offset = device_array(C, np.float64)
    if training:
        p1, p2 = partial_sums(x, None, None, None, 0, 1, 0)
    else:
        p1 = p2 = mean.reshape(C, 1)  # unused
    y = device_array(x.shape, x.dtype)
    unused = flat(y)[:C]  # placeholder of x's dtype for an absent array (one signature per dtype)
    has_running = running_mean is not None
    flags = ((TRAINING if training else 0) | (HAS_RUNNING if has_running else 0)
             | (HAS_WEIGHT if weight is not None else 0) | (HAS_BIAS if bias is not None else 0))
    launch(_forward_coeffs, cdiv(C, t), t)(
        p1, p2, x, int(N * S), flags, float(eps), float(momentum),
        running_mean if has_running else unused, running_var if has_running else unused,
        weight if weight is not None else unused, bias if bias is not None else unused,
        mean, rstd, scale, offset)
    launch(_affine, grid_1d(N * C * S, t), t)(x, mean, scale, offset, y)
    return y, mean, rstd


# ---------------------------------------------------------------- backward

def backward_sums(x, dy, mean):
    """Per-channel float64 (sum(dy), sum(dy * (x - mean))) of (N, C, S) device arrays: the two
    reductions of the backward (SyncBatchNorm allreduces them across ranks)."""
    return merge(*partial_sums(x, dy, mean, None, 0, 1, 1))


@cuda.jit
def _backward_coeffs(sum_dy, sum_dy_xmu, rstd, weight, has_weight, training, count,
                     dweight, dbias, a, b, d):
    """dx = a*dy + b*(x - mean) + d with k = w*rstd: a = k, b = -k*rstd^2*sum_dy_xmu/count,
    d = -k*sum_dy/count (b = d = 0 when the statistics were constants)."""
    c = cuda.grid(1)
    if c >= rstd.shape[0]:
        return
    rs = rstd[c]
    dweight[c] = sum_dy_xmu[c] * rs
    dbias[c] = sum_dy[c]
    k = rs * weight[c] if has_weight else rs
    a[c] = k
    if training:
        b[c] = -k * rs * rs * sum_dy_xmu[c] / count
        d[c] = -k * sum_dy[c] / count
    else:
        b[c] = 0.0
        d[c] = 0.0


KERNEL_SIGNATURES["_backward_coeffs"] = float_signatures(
    "float64[::1], float64[::1], float64[::1], {f}[::1], boolean, boolean, float64, "
    "float64[::1], float64[::1], float64[::1], float64[::1], float64[::1]")


@cuda.jit
def _backward_dx(x, dy, mean, a, b, d, training, dx):
    N, C, S = x.shape
    CS = C * S
    for i in range(cuda.grid(1), N * CS, cuda.gridsize(1)):
        n = i // CS
        r = i - n * CS
        c = r // S
        s = r - c * S
        if training:
            dx[n, c, s] = a[c] * float64(dy[n, c, s]) + b[c] * (float64(x[n, c, s]) - mean[c]) + d[c]
        else:
            dx[n, c, s] = a[c] * float64(dy[n, c, s])


KERNEL_SIGNATURES["_backward_dx"] = float_signatures(
    "{f}[:, :, ::1], {f}[:, :, ::1], float64[::1], float64[::1], float64[::1], float64[::1], "
    "boolean, {f}[:, :, ::1]")


def backward_from_sums(x, dy, mean, rstd, weight, training, sum_dy, sum_dy_xmu, count):
    """BatchNorm backward given the reductions over `count` values per channel.

    Returns (dx, dweight, dbias), grads float64 (C,) device arrays.
    training: the statistics depended on x, so
        dx = w*rstd * (dy - sum_dy/count - (x - mean)*rstd^2 * sum_dy_xmu/count);
    otherwise they were constants: dx = w*rstd*dy.
    """
    N, C, S = x.shape
    t = threads()
    dx = device_array(x.shape, x.dtype)
    dweight, dbias, a, b, d = backward_coefficients(sum_dy, sum_dy_xmu, rstd, weight, training,
                                                    count, flat(dx)[:C])
    launch(_backward_dx, grid_1d(N * C * S, t), t)(x, dy, mean, a, b, d, bool(training), dx)
    return dx, dweight, dbias


def backward_coefficients(sum_dy, sum_dy_xmu, rstd, weight, training, count, placeholder):
    """-> (dweight, dbias, a, b, d), float64 (C,) device arrays, of dx = a*dy + b*(x - mean) + d
    (see _backward_coeffs). placeholder: a (C,) array of the data dtype standing in for an
    absent weight (one kernel signature per dtype)."""
    C = rstd.shape[0]
    t = threads()
    dweight, dbias, a, b, d = (device_array(C, np.float64) for _ in range(5))
    launch(_backward_coeffs, cdiv(C, t), t)(sum_dy, sum_dy_xmu, rstd,
                                    weight if weight is not None else placeholder, weight is not None,
                                    bool(training), float(count), dweight, dbias, a, b, d)
    return dweight, dbias, a, b, d


def backward(x, dy, mean, rstd, weight, training):
    """BatchNorm backward on (N, C, S) device arrays -> (dx, dweight, dbias), grads float64 (C,)."""
    N, C, S = x.shape
    sum_dy, sum_dy_xmu = backward_sums(x, dy, mean)
    return backward_from_sums(x, dy, mean, rstd, weight, training, sum_dy, sum_dy_xmu, N * S)
