"""Per-channel float64 sums of (N, C, S) arrays: the reductions of numbanorm.cpu.channel_norm
(the batch statistics of the forward, sum(dy) and sum(dy * (x - mean)) of the backward).

Shape legend: x (and dy) are C-contiguous (N, C, S) views, S = prod(spatial); S == 1 runs the
column kernels of numbanorm.cpu.channel_norm_columns. Data is float32, float64 or float16 as
uint16 bits (numbanorm.cpu.half's shifted_sums / dy_sums); every sum is float64, shape (C,).

Determinism: the work is cut into tasks whose size depends only on the shape (task_grid, never
the thread count); each task writes its own float64 partial sums and the partials are merged in
a fixed order, so results are bitwise identical on every run and for every thread count.
"""
import numpy as np
from numba import njit, prange

from . import channel_norm_columns
from ._parallel import FASTMATH, TASK_SIZE, serial
from .half import bits, dy_sums, shifted_sums

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


@njit(cache=True, inline="always")
def plane_task_bounds(t, N, C, S, nk, samples, spatial):
    """Task t of a (sample blocks, C, nk spatial blocks) grid over an (N, C, S) array ->
    (b, c, k, n0, n1, s0, s1): its block indices, samples [n0, n1) and positions [s0, s1)."""
    k = t % nk
    c = (t // nk) % C
    b = t // (nk * C)
    s0 = k * spatial
    return b, c, k, b * samples, min(N, (b + 1) * samples), s0, min(S, s0 + spatial)


@njit(cache=True, fastmath=FASTMATH, inline="always")
def _plane_task(t, x, center, dy, with_dy, samples, spatial, p1, p2):
    """Task t = (sample block b, channel c, spatial block k) of an (N, C, S) reduction.

    Without dy: p1 = sum(x - center[c]), p2 = sum((x - center[c])**2).
    With dy: p1 = sum(dy), p2 = sum(dy * (x - center[c])).
    """
    N, C, S = x.shape
    b, c, k, n0, n1, s0, s1 = plane_task_bounds(t, N, C, S, p1.shape[2], samples, spatial)
    m = center[c]
    a1 = 0.0
    a2 = 0.0
    for n in range(n0, n1):
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
def channel_sums(x, center, dy, with_dy, samples, spatial, serial):
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


def task_grid(N, C, S):
    """(samples, spatial) per task of channel_sums for an (N, C, S) array (S == 1: unused,
    channel_norm_columns has its own tasks); remembered per shape (a dict lookup costs less
    than the arithmetic at the small calls)."""
    grid = _grids.get((N, C, S))
    if grid is None:
        if len(_grids) >= 256:  # bounded: a process seeing many shapes starts over
            _grids.clear()
        grid = _grids[(N, C, S)] = (1, 1) if S == 1 else _grid(N, C, S)
    return grid


_grids = {}


def sums(x, center, dy=None):
    """channel_sums with the task grid for x's shape: without dy, (sum(x - center),
    sum((x - center)**2)); with dy, (sum(dy), sum(dy * (x - center))); float64 (C,) each."""
    samples, spatial = task_grid(*x.shape)
    x = bits(x)
    return channel_sums(x, center, x if dy is None else bits(dy), dy is not None, samples, spatial,
                        serial(x))
