"""CPU kernels for per-channel normalization (BatchNorm; InstanceNorm with running stats).

Shape legend: x is a C-contiguous (N, C, S) view, S = prod(spatial) (1 for (N, C) input).
Statistics are reduced per channel over N and S.

Determinism: the work is cut into tasks whose size depends only on the shape (never on the
thread count); each task writes its own float64 partial sums and the partials are merged in a
fixed order, so results are bitwise identical on every run and for every thread count.
"""
import numpy as np
from numba import njit, prange

from ._parallel import FASTMATH, TASK_SIZE, serial_when_small


def _grid(N, S):
    """(samples per task, spatial elements per task) for an (N, C, S) reduction."""
    spatial = min(S, TASK_SIZE)
    samples = max(1, TASK_SIZE // spatial)
    return samples, spatial


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def _plane_partials(x, center, dy, samples, spatial, p1, p2):
    """Per-task partial sums over tasks (sample block b, channel c, spatial block k).

    Without dy: p1 = sum(x - center[c]), p2 = sum((x - center[c])**2).
    With dy (dy.shape == x.shape): p1 = sum(dy), p2 = sum(dy * (x - center[c])).
    """
    N, C, S = x.shape
    nb, _, nk = p1.shape
    with_dy = dy.shape[0] == N
    for t in prange(nb * C * nk):
        k = t % nk
        c = (t // nk) % C
        b = t // (nk * C)
        n0 = b * samples
        n1 = min(N, n0 + samples)
        s0 = k * spatial
        s1 = min(S, s0 + spatial)
        m = center[c]
        a1 = 0.0
        a2 = 0.0
        for n in range(n0, n1):
            xv = x[n, c, s0:s1]
            if with_dy:
                gv = dy[n, c, s0:s1]
                for s in range(xv.size):
                    g = np.float64(gv[s])
                    a1 += g
                    a2 += g * (np.float64(xv[s]) - m)
            else:
                for s in range(xv.size):
                    d = np.float64(xv[s]) - m
                    a1 += d
                    a2 += d * d
        p1[b, c, k] = a1
        p2[b, c, k] = a2


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def _column_partials(x, center, dy, samples, p1, p2):
    """The S == 1 case of _plane_partials: tasks are blocks of rows of an (N, C) array,
    so the inner loop runs along contiguous channels."""
    N, C = x.shape
    nb = p1.shape[0]
    with_dy = dy.shape[0] == N
    for b in prange(nb):
        a1 = np.zeros(C)
        a2 = np.zeros(C)
        for n in range(b * samples, min(N, (b + 1) * samples)):
            xv = x[n]
            if with_dy:
                gv = dy[n]
                for c in range(C):
                    g = np.float64(gv[c])
                    a1[c] += g
                    a2[c] += g * (np.float64(xv[c]) - center[c])
            else:
                for c in range(C):
                    d = np.float64(xv[c]) - center[c]
                    a1[c] += d
                    a2[c] += d * d
        for c in range(C):
            p1[b, c, 0] = a1[c]
            p2[b, c, 0] = a2[c]


def _partial_sums(x, center, dy):
    N, C, S = x.shape
    dy_or_empty = dy if dy is not None else np.empty((0, C, S), x.dtype)
    if S == 1:
        samples = max(1, TASK_SIZE // max(C, 1))
        nb = -(-N // samples)
        p1 = np.empty((nb, C, 1))
        p2 = np.empty((nb, C, 1))
        _column_partials(x[:, :, 0], center, dy_or_empty[:, :, 0], samples, p1, p2)
    else:
        samples, spatial = _grid(N, S)
        nb, nk = -(-N // samples), -(-S // spatial)
        p1 = np.empty((nb, C, nk))
        p2 = np.empty((nb, C, nk))
        _plane_partials(x, center, dy_or_empty, samples, spatial, p1, p2)
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


@serial_when_small
def stats(x):
    """Per-channel mean and biased variance (float64, shape (C,)) of an (N, C, S) array.

    One pass over x: sums of (x - x[0, c, 0]) and its square in float64. The shift keeps
    E[d^2] - E[d]^2 free of cancellation for data with a large mean.
    """
    N, C, S = x.shape
    center = x[0, :, 0].astype(np.float64)
    s1, s2 = _partial_sums(x, center, None)
    count = N * S
    d = s1 / count
    var = np.maximum(s2 / count - d * d, 0.0)
    return center + d, var


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def _affine(u, center, scale, offset, out):
    N, C, S = u.shape
    if S == 1:
        for n in prange(N):
            uv = u[n, :, 0]
            ov = out[n, :, 0]
            for c in range(C):
                ov[c] = (np.float64(uv[c]) - center[c]) * scale[c] + offset[c]
    else:
        for t in prange(N * C):
            n = t // C
            c = t % C
            m = center[c]
            a = scale[c]
            b = offset[c]
            uv = u[n, c]
            ov = out[n, c]
            for s in range(S):
                ov[s] = (np.float64(uv[s]) - m) * a + b


def affine(u, center, scale, offset):
    """out[n, c, s] = (u[n, c, s] - center[c]) * scale[c] + offset[c]; float64 (C,) coefficients."""
    out = np.empty_like(u)
    _affine(u, center, scale, offset, out)
    return out


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def _backward_dx(x, dy, mean, a, b, d, dx):
    N, C, S = x.shape
    if S == 1:
        for n in prange(N):
            xv, gv, ov = x[n, :, 0], dy[n, :, 0], dx[n, :, 0]
            for c in range(C):
                ov[c] = a[c] * np.float64(gv[c]) + b[c] * (np.float64(xv[c]) - mean[c]) + d[c]
    else:
        for t in prange(N * C):
            n = t // C
            c = t % C
            ac, bc, dc, mc = a[c], b[c], d[c], mean[c]
            xv, gv, ov = x[n, c], dy[n, c], dx[n, c]
            for s in range(S):
                ov[s] = ac * np.float64(gv[s]) + bc * (np.float64(xv[s]) - mc) + dc


@serial_when_small
def forward(x, weight, bias, eps, training, running_mean, running_var, momentum):
    """BatchNorm forward on an (N, C, S) array.

    training: normalize with the batch statistics and, when running stats are given, update
    them in place (running = (1 - momentum) * running + momentum * batch, unbiased variance).
    Otherwise normalize with running_mean / running_var.
    Returns (y, mean, rstd) with float64 (C,) statistics used for the normalization.
    """
    N, C, S = x.shape
    if training:
        mean, var = stats(x)
        if running_mean is not None:
            count = N * S
            running_mean *= 1.0 - momentum
            running_mean += (momentum * mean).astype(running_mean.dtype)
            running_var *= 1.0 - momentum
            running_var += (momentum * var * (count / (count - 1))).astype(running_var.dtype)
    else:
        mean = running_mean.astype(np.float64)
        var = running_var.astype(np.float64)
    rstd = 1.0 / np.sqrt(var + eps)
    scale = rstd * weight if weight is not None else rstd
    offset = bias.astype(np.float64) if bias is not None else np.zeros(C)
    return affine(x, mean, scale, offset), mean, rstd


@serial_when_small
def backward_sums(x, dy, mean):
    """Per-channel float64 (sum(dy), sum(dy * (x - mean))) of (N, C, S) arrays: the two
    reductions of the backward (SyncBatchNorm allreduces them across ranks)."""
    return _partial_sums(x, mean, dy)


@serial_when_small
def backward_from_sums(x, dy, mean, rstd, weight, training, sum_dy, sum_dy_xmu, count):
    """BatchNorm backward given the reductions over `count` values per channel.

    Returns (dx, dweight, dbias), grads float64 (C,).
    training: the statistics depended on x, so
        dx = w*rstd * (dy - sum_dy/count - (x - mean)*rstd^2 * sum_dy_xmu/count);
    otherwise they were constants: dx = w*rstd*dy.
    """
    C = x.shape[1]
    dweight = sum_dy_xmu * rstd
    dbias = sum_dy
    k = rstd * weight if weight is not None else rstd
    if not training:
        return affine(dy, np.zeros(C), k, np.zeros(C)), dweight, dbias
    dx = np.empty_like(x)
    _backward_dx(x, dy, mean, k, -k * rstd * rstd * sum_dy_xmu / count, -k * sum_dy / count, dx)
    return dx, dweight, dbias


def backward(x, dy, mean, rstd, weight, training):
    """BatchNorm backward on (N, C, S) arrays -> (dx, dweight, dbias), grads float64 (C,)."""
    N, C, S = x.shape
    sum_dy, sum_dy_xmu = backward_sums(x, dy, mean)
    return backward_from_sums(x, dy, mean, rstd, weight, training, sum_dy, sum_dy_xmu, N * S)
