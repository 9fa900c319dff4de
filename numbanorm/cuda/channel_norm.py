"""GPU kernels for per-channel normalization (BatchNorm; InstanceNorm with running stats).

Shape legend: x is a C-contiguous (N, C, S) device array, S = prod(spatial) (1 for (N, C);
channels-last memory comes as its (N*S, C, 1) view). Statistics are reduced per channel over
the L = N * S values of a channel; all statistics and parameter gradients are float64 (C,)
device arrays. Same formulas as numbanorm.cpu.

Dtypes: x/dy/y/dx float32, float64 or float16 (read into float64, the math in float64, the
result rounded once to x's dtype); weight/bias/running statistics of x's dtype, float32 for
float16 x (mixed precision).

Two-stage reduction (no float atomics, deterministic; numbanorm.cuda.channel_reduce):
  1. partial blocks write per-(channel, chunk) sums p1[c, p], p2[c, p];
  2. one thread per channel sums its P partials in order and computes what the next pass
     needs (mean, rstd, scale/offset, running-stat update, or the backward coefficients).
A forward in training is 3 launches (partials, coefficients, affine); a backward 3 (partials,
coefficients, dx).
"""
import math

import numpy as np
from numba import cuda, float64

from .._validate import param_dtype
from ._common import (cdiv, device_array, float_signatures, grid_1d, launch, placeholder,
                      threads, unravel3)
from .channel_reduce import merge, partial_sums, sum_row

KERNEL_SIGNATURES = {}  # kernel name -> argument signatures (see _common)


@cuda.jit
def _stats(p1, p2, x, count, mean, var):
    c = cuda.grid(1)
    if c < mean.shape[0]:
        d = sum_row(p1, c) / count
        mean[c] = float64(x[0, c, 0]) + d
        var[c] = max(sum_row(p2, c) / count - d * d, 0.0)


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


TRAINING, HAS_RUNNING, HAS_WEIGHT, HAS_BIAS = 1, 2, 4, 8  # the coefficient kernels' flags


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
        d = sum_row(p1, c) / count
        m = float64(x[0, c, 0]) + d
        v = max(sum_row(p2, c) / count - d * d, 0.0)
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
    "float64[:, ::1], float64[:, ::1], {f}[:, :, ::1], int64, int64, float64, float64, {p}[::1], {p}[::1], "
    "{p}[::1], {p}[::1], float64[::1], float64[::1], float64[::1], float64[::1]",
    "float64[:, ::1], float64[:, ::1], {f}[:, :, ::1], int64, int64, float64, float64, float64[::1], "
    "float64[::1], {p}[::1], {p}[::1], float64[::1], float64[::1], float64[::1], float64[::1]", half=True)


@cuda.jit
def _affine(u, center, scale, offset, out):
    """out[n, c, s] = (u[n, c, s] - center[c]) * scale[c] + offset[c] over a flat grid-stride loop."""
    N, C, S = u.shape
    CS = C * S
    for i in range(cuda.grid(1), N * CS, cuda.gridsize(1)):
        n, c, s = unravel3(i, CS, S)
        out[n, c, s] = (float64(u[n, c, s]) - center[c]) * scale[c] + offset[c]


KERNEL_SIGNATURES["_affine"] = float_signatures(
    "{f}[:, :, ::1], float64[::1], float64[::1], float64[::1], {f}[:, :, ::1]", half=True)


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
        p1 = p2 = placeholder(np.float64, 2)
    y = device_array(x.shape, x.dtype)
    unused = placeholder(param_dtype(x.dtype))
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
def _backward_coeffs(p_dy, p_dy_xmu, rstd, weight, flags, count, dweight, dbias, a, b, d):
    """dx = a*dy + b*(x - mean) + d with k = w*rstd: a = k, b = -k*rstd^2*sum_dy_xmu/count,
    d = -k*sum_dy/count (b = d = 0 when the statistics were constants). The sums are those
    of the (C, P) partials p_dy, p_dy_xmu, added in order here (P = 1 for given sums).
    flags: TRAINING | HAS_WEIGHT."""
    c = cuda.grid(1)
    if c >= rstd.shape[0]:
        return
    sum_dy = sum_row(p_dy, c)
    sum_dy_xmu = sum_row(p_dy_xmu, c)
    rs = rstd[c]
    dweight[c] = sum_dy_xmu * rs
    dbias[c] = sum_dy
    k = rs * weight[c] if (flags & HAS_WEIGHT) != 0 else rs
    a[c] = k
    if (flags & TRAINING) != 0:
        b[c] = -k * rs * rs * sum_dy_xmu / count
        d[c] = -k * sum_dy / count
    else:
        b[c] = 0.0
        d[c] = 0.0


KERNEL_SIGNATURES["_backward_coeffs"] = float_signatures(
    "float64[:, ::1], float64[:, ::1], float64[::1], {p}[::1], int64, float64, "
    "float64[::1], float64[::1], float64[::1], float64[::1], float64[::1]")


@cuda.jit
def _backward_dx(x, dy, mean, a, b, d, training, dx):
    N, C, S = x.shape
    CS = C * S
    for i in range(cuda.grid(1), N * CS, cuda.gridsize(1)):
        n, c, s = unravel3(i, CS, S)
        if training:
            dx[n, c, s] = a[c] * float64(dy[n, c, s]) + b[c] * (float64(x[n, c, s]) - mean[c]) + d[c]
        else:
            dx[n, c, s] = a[c] * float64(dy[n, c, s])


KERNEL_SIGNATURES["_backward_dx"] = float_signatures(
    "{f}[:, :, ::1], {f}[:, :, ::1], float64[::1], float64[::1], float64[::1], float64[::1], "
    "boolean, {f}[:, :, ::1]", half=True)


def backward_from_sums(x, dy, mean, rstd, weight, training, sum_dy, sum_dy_xmu, count):
    """BatchNorm backward given the reductions over `count` values per channel.

    Returns (dx, dweight, dbias), grads float64 (C,) device arrays.
    training: the statistics depended on x, so
        dx = w*rstd * (dy - sum_dy/count - (x - mean)*rstd^2 * sum_dy_xmu/count);
    otherwise they were constants: dx = w*rstd*dy.
    """
    C = rstd.shape[0]
    return _backward(x, dy, mean, rstd, weight, training, sum_dy.reshape(C, 1),
                     sum_dy_xmu.reshape(C, 1), count)


def _backward(x, dy, mean, rstd, weight, training, p_dy, p_dy_xmu, count):
    """backward_from_sums with the sums given as (C, P) partials."""
    N, C, S = x.shape
    t = threads()
    dx = device_array(x.shape, x.dtype)
    dweight, dbias, a, b, d = _coefficients(p_dy, p_dy_xmu, rstd, weight, training, count, x.dtype)
    launch(_backward_dx, grid_1d(N * C * S, t), t)(x, dy, mean, a, b, d, bool(training), dx)
    return dx, dweight, dbias


def backward_coefficients(sum_dy, sum_dy_xmu, rstd, weight, training, count, dtype):
    """-> (dweight, dbias, a, b, d), float64 (C,) device arrays, of dx = a*dy + b*(x - mean) + d
    (see _backward_coeffs); dtype: the data's."""
    C = rstd.shape[0]
    return _coefficients(sum_dy.reshape(C, 1), sum_dy_xmu.reshape(C, 1), rstd, weight, training,
                         count, dtype)


def _coefficients(p_dy, p_dy_xmu, rstd, weight, training, count, dtype):
    C = rstd.shape[0]
    t = threads()
    dweight, dbias, a, b, d = (device_array(C, np.float64) for _ in range(5))
    flags = (TRAINING if training else 0) | (HAS_WEIGHT if weight is not None else 0)
    weight = weight if weight is not None else placeholder(param_dtype(dtype))
    launch(_backward_coeffs, cdiv(C, t), t)(p_dy, p_dy_xmu, rstd, weight, flags, float(count),
                                            dweight, dbias, a, b, d)
    return dweight, dbias, a, b, d


def backward(x, dy, mean, rstd, weight, training):
    """BatchNorm backward on (N, C, S) device arrays -> (dx, dweight, dbias), grads float64 (C,).
    Three launches: the partial sums, the coefficients (merging the partials), dx."""
    N, C, S = x.shape
    p_dy, p_dy_xmu = partial_sums(x, dy, mean, None, 0, 1, 1)
    return _backward(x, dy, mean, rstd, weight, training, p_dy, p_dy_xmu, N * S)
