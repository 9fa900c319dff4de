"""CPU kernels for BatchNorm with masked statistics (padded batches, variable-size inputs).

Shape legend: x is a C-contiguous (N, C, S) view, S = prod(spatial); mask a (N, S) uint8 array
shared by every channel (1: the position enters the statistics). Statistics come from the K
selected positions of each channel (shifted sums from a selected position, so a large mean is
harmless); every position is normalized with them by numbanorm.cpu.channel_norm. The task grid
and the merge order are fixed by the shape, so results do not depend on the thread count.
float16 x/dy/dx are read and written as uint16 bits through numbanorm.cpu.half's load/store.
"""
import numpy as np
from numba import njit, prange

from . import _memory
from ._parallel import FASTMATH, TASK_SIZE, serial
from .channel_norm import backward_coefficients
from .channel_norm_sums import plane_task_bounds
from .half import bits, load, store


@njit(cache=True, fastmath=FASTMATH, inline="always")
def _masked_plane_task(t, x, mask, center, samples, spatial, p1, p2):
    """Task t = (sample block b, channel c, spatial block k): p1 = sum(x - center[c]),
    p2 = sum((x - center[c])**2) over the selected positions only (unselected values, NaN
    padding included, are never read into the sums)."""
    N, C, S = x.shape
    b, c, k, n0, n1, s0, s1 = plane_task_bounds(t, N, C, S, p1.shape[2], samples, spatial)
    m = center[c]
    a1 = 0.0
    a2 = 0.0
    for n in range(n0, n1):
        xv = x[n, c, s0:s1]
        mv = mask[n, s0:s1]
        for s in range(xv.size):
            if mv[s]:
                d = np.float64(load(xv, s)) - m
                a1 += d
                a2 += d * d
    p1[b, c, k] = a1
    p2[b, c, k] = a2


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def _masked_channel_sums(x, mask, center, samples, spatial, serial):
    N, C, S = x.shape
    nb, nk = -(-N // samples), -(-S // spatial)
    p1 = np.empty((nb, C, nk))
    p2 = np.empty((nb, C, nk))
    if serial:
        for t in range(nb * C * nk):
            _masked_plane_task(t, x, mask, center, samples, spatial, p1, p2)
    else:
        for t in prange(nb * C * nk):
            _masked_plane_task(t, x, mask, center, samples, spatial, p1, p2)
    return p1, p2


def stats(x, mask, n0, s0, count):
    """Per-channel mean and biased variance (float64 (C,)) of an (N, C, S) array over the
    positions where the (N, S) uint8 mask is nonzero.

    (n0, s0): a selected position; x[n0, c, s0] is the shift of channel c's sums (a selected
    value, so padding with a huge or NaN value cannot spoil the variance); count: the number
    of selected positions (known to the caller, who checked it).
    """
    N, C, S = x.shape
    spatial = min(S, TASK_SIZE)
    samples = max(1, TASK_SIZE // spatial)
    center = x[n0, :, s0].astype(np.float64)
    p1, p2 = _masked_channel_sums(bits(x), mask, center, samples, spatial, serial(x))
    count = float(count)
    d = p1.sum(axis=(0, 2)) / count
    return center + d, np.maximum(p2.sum(axis=(0, 2)) / count - d * d, 0.0)


@njit(cache=True, fastmath=FASTMATH, inline="always")
def _masked_dx_task(t, x, dy, mask, mean, a, b, d, dx):
    """Plane t = (n, c): dx = a*dy + [selected] * (b*(x - mean) + d)."""
    N, C, S = x.shape
    n, c = t // C, t % C
    ac, bc, dc, mc = a[c], b[c], d[c], mean[c]
    xv, gv, mv, ov = x[n, c], dy[n, c], mask[n], dx[n, c]
    for s in range(S):
        v = ac * np.float64(load(gv, s))
        if mv[s]:
            v += bc * (np.float64(load(xv, s)) - mc) + dc
        store(ov, s, v)


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def _masked_backward_dx(x, dy, mask, mean, a, b, d, dx, serial):
    N, C, S = x.shape
    if serial:
        for t in range(N * C):
            _masked_dx_task(t, x, dy, mask, mean, a, b, d, dx)
    else:
        for t in prange(N * C):
            _masked_dx_task(t, x, dy, mask, mean, a, b, d, dx)


def backward_from_sums(x, dy, mean, rstd, weight, mask, sum_dy, sum_dy_xmu, count):
    """Backward of training-mode BatchNorm whose statistics came from the `count` selected
    positions of the (N, S) uint8 mask; sum_dy, sum_dy_xmu are backward_sums over ALL positions.

    Every y depends on mean and rstd, so the sums run over all positions; only selected x
    moved the statistics, so only they get the correction (k = w * rstd):
        dx = k*dy + [selected] * (-k*rstd^2*sum_dy_xmu/count * (x - mean) - k*sum_dy/count)
    Returns (dx, dweight, dbias), grads float64 (C,): dweight = sum_dy_xmu * rstd, dbias = sum_dy.
    """
    a, b, d = backward_coefficients(rstd, weight, sum_dy, sum_dy_xmu, count)
    dx = _memory.empty_like(x)
    _masked_backward_dx(bits(x), bits(dy), mask, mean, a, b, d, bits(dx), serial(x))
    return dx, sum_dy_xmu * rstd, sum_dy
