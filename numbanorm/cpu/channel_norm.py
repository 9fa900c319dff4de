"""CPU kernels for per-channel normalization (BatchNorm; InstanceNorm with running stats).

Shape legend: x is a C-contiguous (N, C, S) view, S = prod(spatial) (1 for (N, C) input).
S == 1 ((N, C) input, and channels-last input as its (N*S, C) view) runs the column kernels of
numbanorm.cpu.channel_norm_columns.
Statistics are reduced per channel over N and S. x, dy, y and dx are float32, float64 or
float16 (passed to the kernels as uint16 bits, read and written through numbanorm.cpu.half's
load/store; elementwise math in float32); statistics and parameter gradients are float64 sums
(for 16-bit data of float32 block sums: numbanorm.cpu.half.shifted_sums / dy_sums).
The eval-mode backward's one-pass kernel is in numbanorm.cpu.channel_norm_eval.

Determinism: the work is cut into tasks whose size depends only on the shape (never on the
thread count); each task writes its own float64 partial sums and the partials are merged in a
fixed order, so results are bitwise identical on every run and for every thread count.
"""
import warnings

import numpy as np
from numba import njit, prange
from numba.core.errors import NumbaPerformanceWarning

from . import _memory, channel_norm_columns, channel_norm_eval
from ._parallel import FASTMATH, TASK_SIZE, serial
from .half import bits, dy_sums, load, shifted_sums, store, work_empty


# Rows x[n, c] at least this long are one task each (or several, above TASK_SIZE): consecutive
# tasks then read consecutive memory. Grouping several samples' rows of one channel in a task
# reads them from places C*S apart, which streamed ~2x slower from DRAM here ((64, 64, 3136)
# float32 sums: 2.8 ms with 5 rows per task, 1.4 ms with 1). Shorter rows are grouped.
LONG_ROW = 128
WHOLE_SAMPLES_UP_TO = TASK_SIZE // 2  # elements per sample (C * S); see _grid


def _grid(N, C, S):
    """(samples per task, spatial elements per task) for an (N, C, S) reduction.

    A sample of at most TASK_SIZE / 2 elements goes whole into a task with the next ones
    (contiguous memory, _samples_task): one task per row of (256, 16, 196) cost 1.6x the
    floor in the training forward, the index arithmetic and partials of 4096 tiny tasks.
    """
    if C * S <= WHOLE_SAMPLES_UP_TO:
        return TASK_SIZE // (C * S), S
    spatial = min(S, TASK_SIZE)
    samples = 1 if S >= LONG_ROW else max(1, TASK_SIZE // spatial)
    return samples, spatial


# ---------------------------------------------------------------- reductions

@njit(cache=True, fastmath=FASTMATH, inline="always")
def _plane_task(t, x, center, dy, with_dy, samples, spatial, p1, p2):
    """Task t = (sample block b, channel c, spatial block k) of an (N, C, S) reduction.

    Without dy: p1 = sum(x - center[c]), p2 = sum((x - center[c])**2).
    With dy: p1 = sum(dy), p2 = sum(dy * (x - center[c])).
    """
    N, C, S = x.shape
    nk = p1.shape[2]
    k = t % nk
    c = (t // nk) % C
    b = t // (nk * C)
    s0 = k * spatial
    s1 = min(S, s0 + spatial)
    m = center[c]
    a1 = 0.0
    a2 = 0.0
    for n in range(b * samples, min(N, (b + 1) * samples)):
        xv = x[n, c, s0:s1]
        if with_dy:
            r1, r2 = dy_sums(dy[n, c, s0:s1], xv, m)
        else:
            r1, r2 = shifted_sums(xv, m)
        a1 += r1
        a2 += r2
    p1[b, c, k] = a1
    p2[b, c, k] = a2


@njit(cache=True, fastmath=FASTMATH, inline="always")
def _samples_task(b, x, center, dy, with_dy, samples, p1, p2):
    """Task b sums whole samples [b*samples, (b+1)*samples) of an (N, C, S) array, channel by
    channel in memory order, into p1[b, c], p2[b, c] (sums as _plane_task's)."""
    N, C, S = x.shape
    a1 = p1[b].reshape(C)
    a2 = p2[b].reshape(C)
    for c in range(C):  # a loop, not `[:] = 0`: parallel=True would make that a parfor
        a1[c] = 0.0
        a2[c] = 0.0
    for n in range(b * samples, min(N, (b + 1) * samples)):
        for c in range(C):
            if with_dy:
                r1, r2 = dy_sums(dy[n, c], x[n, c], center[c])
            else:
                r1, r2 = shifted_sums(x[n, c], center[c])
            a1[c] += r1
            a2[c] += r2


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def _channel_sums(x, center, dy, with_dy, samples, spatial, serial):
    """Per-channel float64 (p1, p2) sums of the tasks above over the whole (N, C, S) array,
    partials merged in a fixed order."""
    N, C, S = x.shape
    if S == 1:
        return channel_norm_columns.sums(x.reshape(N, C), center, dy.reshape(N, C), with_dy,
                                         serial)
    nb, nk = -(-N // samples), -(-S // spatial)
    p1 = np.empty((nb, C, nk))
    p2 = np.empty((nb, C, nk))
    if C * S <= WHOLE_SAMPLES_UP_TO:
        if serial:  # whole samples per task (see _grid)
            for b in range(nb):
                _samples_task(b, x, center, dy, with_dy, samples, p1, p2)
        else:
            for b in prange(nb):
                _samples_task(b, x, center, dy, with_dy, samples, p1, p2)
    elif serial:
        for t in range(nb * C * nk):
            _plane_task(t, x, center, dy, with_dy, samples, spatial, p1, p2)
    else:
        for t in prange(nb * C * nk):
            _plane_task(t, x, center, dy, with_dy, samples, spatial, p1, p2)
    return _merge(p1), _merge(p2)


@njit(cache=True)
def _merge(p):
    """Sum (nb, C, nk) partials over nb and nk in a fixed order -> (C,)."""
    nb, C, nk = p.shape
    out = np.zeros(C)
    for b in range(nb):
        for c in range(C):
            for k in range(nk):
                out[c] += p[b, c, k]
    return out


def _task_grid(N, C, S):
    """(samples, spatial) per task of _channel_sums for an (N, C, S) array (S == 1: unused,
    channel_norm_columns has its own tasks); remembered per shape (a dict lookup costs less
    than the arithmetic at the small calls)."""
    grid = _grids.get((N, C, S))
    if grid is None:
        if len(_grids) >= 256:  # bounded: a process seeing many shapes starts over
            _grids.clear()
        grid = _grids[(N, C, S)] = (1, 1) if S == 1 else _grid(N, C, S)
    return grid


_grids = {}


def _partial_sums(x, center, dy):
    """_channel_sums with the task grid for x's shape; dy=None sums x's shifted moments."""
    samples, spatial = _task_grid(*x.shape)
    x = bits(x)
    return _channel_sums(x, center, x if dy is None else bits(dy), dy is not None, samples, spatial,
                         serial(x))


def stats(x):
    """Per-channel mean and biased variance (float64, shape (C,)) of an (N, C, S) array.

    One pass over x: sums of (x - x[0, c, 0]) and its square in float64. The shift keeps
    E[d^2] - E[d]^2 free of cancellation for data with a large mean.
    """
    N, C, S = x.shape
    center = x[0, :, 0].astype(np.float64)
    s1, s2 = _partial_sums(x, center, None)
    return _mean_var(center, s1, s2, N * S)


@njit(cache=True)
def _mean_var(center, s1, s2, count):
    d = s1 / count
    return center + d, np.maximum(s2 / count - d * d, 0.0)


# ---------------------------------------------------------------- elementwise passes

@njit(cache=True)
def _in_dtype_of(u, center, coefficient, constant):
    """Per-channel (center_u, coefficient_u, constant_u) in u's work type (float32 for float16)
    such that coefficient * (u - center) + constant == coefficient_u * (u - center_u) + constant_u.

    The elementwise passes then run at u's vector width: u - center_u is exact for data near
    the center (large means included), and center's rounding is folded into the constant.
    """
    C = center.size
    center_u = work_empty(u, C)
    coefficient_u = work_empty(u, C)
    constant_u = work_empty(u, C)
    for c in range(C):
        center_u[c] = center[c]
        coefficient_u[c] = coefficient[c]
        constant_u[c] = constant[c] + coefficient[c] * (np.float64(center_u[c]) - center[c])
    return center_u, coefficient_u, constant_u


@njit(cache=True, fastmath=FASTMATH, inline="always")
def _affine_task(t, u, center, scale, offset, out):
    """Plane t = (n, c): out = (u - center[c]) * scale[c] + offset[c]. Coefficients in u's
    dtype (see _in_dtype_of)."""
    N, C, S = u.shape
    n, c = t // C, t % C
    m, a, b = center[c], scale[c], offset[c]
    uv, ov = u[n, c], out[n, c]
    for s in range(S):
        store(ov, s, (load(uv, s) - m) * a + b)


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def _affine(u, center, scale, offset, out, serial):
    N, C, S = u.shape
    center, scale, offset = _in_dtype_of(u, center, scale, offset)
    if S == 1:
        channel_norm_columns.affine(u.reshape(N, C), center, scale, offset, out.reshape(N, C),
                                    serial)
    elif serial:
        for t in range(N * C):
            _affine_task(t, u, center, scale, offset, out)
    else:
        for t in prange(N * C):
            _affine_task(t, u, center, scale, offset, out)


def affine(u, center, scale, offset):
    """out[n, c, s] = (u[n, c, s] - center[c]) * scale[c] + offset[c]; float64 (C,) coefficients."""
    out = _memory.empty_like(u)
    _affine(bits(u), center, scale, offset, bits(out), serial(u))
    return out


@njit(cache=True, fastmath=FASTMATH, inline="always")
def _dx_task(t, x, dy, mean, a, b, d, dx):
    """Plane t = (n, c): dx = a*dy + b*(x - mean) + d, per-channel a, b, d in x's work type."""
    N, C, S = x.shape
    n, c = t // C, t % C
    ac, bc, dc, mc = a[c], b[c], d[c], mean[c]
    xv, gv, ov = x[n, c], dy[n, c], dx[n, c]
    for s in range(S):
        store(ov, s, ac * load(gv, s) + bc * (load(xv, s) - mc) + dc)


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def _backward_dx(x, dy, mean, a, b, d, dx, serial):
    N, C, S = x.shape
    mean, b, d = _in_dtype_of(x, mean, b, d)
    a_x = work_empty(x, C)
    for c in range(C):
        a_x[c] = a[c]
    if S == 1:
        channel_norm_columns.input_grad(x.reshape(N, C), dy.reshape(N, C), mean, a_x, b, d,
                                        dx.reshape(N, C), serial)
    elif serial:
        for t in range(N * C):
            _dx_task(t, x, dy, mean, a_x, b, d, dx)
    else:
        for t in prange(N * C):
            _dx_task(t, x, dy, mean, a_x, b, d, dx)


# ---------------------------------------------------------------- per-channel math

@njit(cache=True)
def _forward_coefficients(center, s1, s2, count, eps, weight, bias, running_mean, running_var,
                          momentum, mean, rstd):
    """(scale, offset) so that y = (x - mean) * scale + offset; mean and rstd written in place.

    count > 0: s1, s2 are a batch's per-channel sums of (x - center) and its square over count
    values; running_mean / running_var, unless None, get the update (unbiased variance).
    count == 0: s1, s2 are the mean and variance to normalize with (eval mode).
    """
    C = s1.size
    scale = np.empty(C)
    offset = np.zeros(C)
    for c in range(C):
        if count > 0:
            d = s1[c] / count
            m, var = center[c] + d, max(s2[c] / count - d * d, 0.0)
        else:
            m, var = s1[c], s2[c]
        if running_mean is not None:
            running_mean[c] = (1.0 - momentum) * running_mean[c] + momentum * m
            running_var[c] = (1.0 - momentum) * running_var[c] + momentum * var * (count / (count - 1))
        mean[c] = m
        rstd[c] = 1.0 / np.sqrt(var + eps)
        scale[c] = rstd[c] if weight is None else rstd[c] * weight[c]
        if bias is not None:
            offset[c] = bias[c]
    return scale, offset


def forward(x, weight, bias, eps, training, running_mean, running_var, momentum):
    """BatchNorm forward on an (N, C, S) array.

    training: normalize with the batch statistics and, when running stats are given, update
    them in place (running = (1 - momentum) * running + momentum * batch, unbiased variance).
    Otherwise normalize with running_mean / running_var.
    Returns (y, mean, rstd) with float64 (C,) statistics used for the normalization.
    """
    C = x.shape[1]
    y = _memory.empty_like(x)
    mean = np.empty(C)  # outputs allocated here: cheaper than returning arrays made in compiled code
    rstd = np.empty(C)
    if training:
        _train_forward(bits(x), weight, bias, eps, running_mean, running_var, momentum,
                       *_task_grid(*x.shape), bits(y), mean, rstd, serial(x))
    else:
        _eval_forward(bits(x), weight, bias, eps, running_mean, running_var, bits(y), mean, rstd,
                      serial(x))
    return y, mean, rstd


# parallel=True although it has no prange of its own: a cached non-parallel function calling
# parallel ones segfaults when loaded from the cache (numba issue #8578). Numba then warns that
# nothing was parallelised; that warning, for these functions only, is expected.
warnings.filterwarnings("ignore", r"(?s).*def _(train|eval)_(forward|backward)\(",
                        NumbaPerformanceWarning)


@njit(parallel=True, cache=True)
def _eval_forward(x, weight, bias, eps, running_mean, running_var, y, mean, rstd, serial):
    """The eval forward in one compiled call: y = (x - running_mean) * scale + offset;
    mean, rstd (float64 (C,)) written."""
    C = x.shape[1]
    var = np.empty(C)
    for c in range(C):
        mean[c] = running_mean[c]
        var[c] = running_var[c]
    scale, offset = _forward_coefficients(mean, mean, var, 0, eps, weight, bias, None, None, 0.0,
                                          mean, rstd)
    _affine(x, mean, scale, offset, y, serial)


@njit(parallel=True, cache=True)
def _train_forward(x, weight, bias, eps, running_mean, running_var, momentum, samples, spatial, y,
                   mean, rstd, serial):
    """The training forward in one compiled call: sums, coefficients (running stats updated),
    y = (x - mean) * scale + offset; mean, rstd (float64 (C,)) written."""
    N, C, S = x.shape
    center = np.empty(C)
    for c in range(C):
        center[c] = load(x, (0, c, 0))
    s1, s2 = _channel_sums(x, center, x, False, samples, spatial, serial)
    scale, offset = _forward_coefficients(center, s1, s2, N * S, eps, weight, bias,
                                          running_mean, running_var, momentum, mean, rstd)
    _affine(x, mean, scale, offset, y, serial)


def backward_sums(x, dy, mean):
    """Per-channel float64 (sum(dy), sum(dy * (x - mean))) of (N, C, S) arrays: the two
    reductions of the backward (SyncBatchNorm allreduces them across ranks)."""
    return _partial_sums(x, mean, dy)


@njit(cache=True)
def backward_coefficients(rstd, weight, sum_dy, sum_dy_xmu, count):
    """(a, b, d) of dx = a*dy + b*(x - mean) + d for a training-mode backward."""
    C = rstd.size
    a = np.empty(C)
    b = np.empty(C)
    d = np.empty(C)
    for c in range(C):
        a[c] = rstd[c] if weight is None else rstd[c] * weight[c]
        b[c] = -a[c] * rstd[c] * rstd[c] * sum_dy_xmu[c] / count
        d[c] = -a[c] * sum_dy[c] / count
    return a, b, d


def backward_from_sums(x, dy, mean, rstd, weight, training, sum_dy, sum_dy_xmu, count):
    """BatchNorm backward given the reductions over `count` values per channel.

    Returns (dx, dweight, dbias), grads float64 (C,).
    training: the statistics depended on x, so
        dx = w*rstd * (dy - sum_dy/count - (x - mean)*rstd^2 * sum_dy_xmu/count);
    otherwise they were constants: dx = w*rstd*dy.
    """
    a, b, d = backward_coefficients(rstd, weight, sum_dy, sum_dy_xmu, count)
    dweight = sum_dy_xmu * rstd
    if not training:
        zeros = np.zeros(x.shape[1])
        return affine(dy, zeros, a, zeros), dweight, sum_dy
    dx = _memory.empty_like(x)
    _backward_dx(bits(x), bits(dy), mean, a, b, d, bits(dx), serial(x))
    return dx, dweight, sum_dy


def backward(x, dy, mean, rstd, weight, training):
    """BatchNorm backward on (N, C, S) arrays -> (dx, dweight, dbias), grads (C,) of weight's
    dtype (x's when weight is None; float64 for float16 x), as row_norm.backward: summed in
    float64, rounded once."""
    N, C, S = x.shape
    grad_dtype = weight.dtype if weight is not None else np.float64 if bits(x) is not x else x.dtype
    if training or S > 1:
        dx = _memory.empty_like(x)
        dweight = np.empty(C, grad_dtype)  # allocated here: cheaper than returned arrays
        dbias = np.empty(C, grad_dtype)
        if training:
            _train_backward(bits(x), bits(dy), mean, rstd, weight, *_task_grid(N, C, S), bits(dx),
                            dweight, dbias, serial(x))
        else:
            channel_norm_eval.backward(bits(x), bits(dy), mean, rstd, weight, bits(dx), dweight,
                                       dbias, serial(x))
        return dx, dweight, dbias
    sum_dy, sum_dy_xmu = backward_sums(x, dy, mean)
    dx, dweight, dbias = backward_from_sums(x, dy, mean, rstd, weight, training, sum_dy,
                                            sum_dy_xmu, N * S)
    return dx, dweight.astype(grad_dtype), dbias.astype(grad_dtype)


@njit(parallel=True, cache=True)  # parallel=True: see _train_forward
def _train_backward(x, dy, mean, rstd, weight, samples, spatial, dx, dweight, dbias, serial):
    """The training backward in one compiled call: dx, dweight, dbias written (the float64
    sums rounded to their dtype)."""
    N, C, S = x.shape
    sum_dy, sum_dy_xmu = _channel_sums(x, mean, dy, True, samples, spatial, serial)
    a, b, d = backward_coefficients(rstd, weight, sum_dy, sum_dy_xmu, N * S)
    _backward_dx(x, dy, mean, a, b, d, dx, serial)
    for c in range(C):
        dweight[c] = sum_dy_xmu[c] * rstd[c]
        dbias[c] = sum_dy[c]
