"""The S == 1 case of numbanorm.cpu.channel_norm: per-channel sums and elementwise passes over
a C-contiguous (R, C) array, columns being channels: BatchNorm1d's (N, C) input, and the
(N*S, C) view of a channels-last (NLC, NHWC, NDHWC) BatchNorm input.

Each task takes a block of rows (rows_per_task(C) for the elementwise passes,
sum_rows_per_task(R, C) for the sums: both depend on the shape only, never on the thread
count); the column loops are numbanorm.cpu._columns' (blocks of rows at a time, the inner loop
along contiguous channels; one task per row ran the elementwise passes 2.25x slower than
NCHW's). Sums: each task writes float64 (C,) partials, merged in task order, so results are
bitwise the same for every thread count. Data of every kernel dtype: 16-bit as bits through
numbanorm.cpu.half's load/store, its column sums in float32 blocks.
"""
import numpy as np
from numba import njit, prange

from . import _columns
from ._parallel import FASTMATH, TASK_SIZE


@njit(cache=True)
def rows_per_task(C):
    """Rows of an (R, C) array per elementwise task: about TASK_SIZE values."""
    return max(1, TASK_SIZE // C)


# Rows per task of the sums, at least (up to R / SUM_TASKS): each task writes 2*C float64
# partials, merged serially, so short tasks over wide rows spend their time there ((4096, 512)
# float32, 2 threads: 128 tasks of 32 rows ran at 2.6x the floor's sum, 16 of 256 at 1.3x).
SUM_ROWS_AT_LEAST = 256
SUM_TASKS = 16


@njit(cache=True)
def sum_rows_per_task(R, C):
    """Rows of an (R, C) array per task of `sums` (a function of the shape only)."""
    return max(1, TASK_SIZE // C, min(SUM_ROWS_AT_LEAST, R // SUM_TASKS))


@njit(cache=True, fastmath=FASTMATH, inline="always")
def _sums_task(t, x, center, dy, with_dy, rows, p1, p2):
    """Task t: rows [t*rows, (t+1)*rows) summed by column into p1[t], p2[t] (see sums)."""
    R, C = x.shape
    a1, a2 = p1[t], p2[t]
    for c in range(C):  # a loop, not `[:] = 0`: parallel=True would make that a parfor
        a1[c] = 0.0
        a2[c] = 0.0
    r0, r1 = t * rows, min(R, (t + 1) * rows)
    if with_dy:
        _columns.dy_sums(x[r0:r1], dy[r0:r1], center, a1, a2)
    else:
        _columns.shifted_sums(x[r0:r1], center, a1, a2)


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def sums(x, center, dy, with_dy, serial):
    """Per-column float64 (C,) sums of an (R, C) array, center float64 (C,).

    Without dy: (sum(x - center), sum((x - center)**2)).
    With dy: (sum(dy), sum(dy * (x - center))).
    """
    R, C = x.shape
    rows = sum_rows_per_task(R, C)
    T = -(-R // rows)
    p1 = np.empty((T, C))
    p2 = np.empty((T, C))
    if serial:
        for t in range(T):
            _sums_task(t, x, center, dy, with_dy, rows, p1, p2)
    else:
        for t in prange(T):
            _sums_task(t, x, center, dy, with_dy, rows, p1, p2)
    return _merge(p1), _merge(p2)


@njit(cache=True)
def _merge(p):
    """Sum (T, C) task partials in task order -> (C,). Not in `sums`: under parallel=True its
    np.zeros would be a parfor, one more wake-up of the thread pool per call (on a busy
    machine a wait of milliseconds for the other core, even on the serial path)."""
    T, C = p.shape
    out = np.zeros(C)
    for t in range(T):
        for c in range(C):
            out[c] += p[t, c]
    return out


@njit(cache=True, fastmath=FASTMATH, inline="always")
def _affine_task(t, u, center, scale, offset, out, rows):
    R = u.shape[0]
    r0, r1 = t * rows, min(R, (t + 1) * rows)
    _columns.affine_any_dtype(u[r0:r1], out[r0:r1], center, scale, offset)


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def affine(u, center, scale, offset, out, serial):
    """out[r, c] = (u[r, c] - center[c]) * scale[c] + offset[c] on (R, C) arrays; coefficients
    (C,) in u's work type."""
    C = u.shape[1]
    rows = rows_per_task(C)
    if _columns.is_16bit(u):  # flat runs of whole rows (see _columns.flat_rows)
        k = _columns.flat_rows(C)
        center, scale, offset = (_columns.tile(center, k), _columns.tile(scale, k),
                                 _columns.tile(offset, k))
    T = -(-u.shape[0] // rows)
    if serial:
        for t in range(T):
            _affine_task(t, u, center, scale, offset, out, rows)
    else:
        for t in prange(T):
            _affine_task(t, u, center, scale, offset, out, rows)


@njit(cache=True, fastmath=FASTMATH, inline="always")
def _input_grad_task(t, x, dy, mean, a, b, d, dx, rows):
    R = x.shape[0]
    r0, r1 = t * rows, min(R, (t + 1) * rows)
    _columns.input_grad_any_dtype(x[r0:r1], dy[r0:r1], dx[r0:r1], mean, a, b, d)


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def input_grad(x, dy, mean, a, b, d, dx, serial):
    """dx[r, c] = a[c] * dy[r, c] + b[c] * (x[r, c] - mean[c]) + d[c] on (R, C) arrays;
    coefficients (C,) in x's work type."""
    C = x.shape[1]
    rows = rows_per_task(C)
    if _columns.is_16bit(x):  # flat runs of whole rows (see _columns.flat_rows)
        k = _columns.flat_rows(C)
        mean, a, b, d = (_columns.tile(mean, k), _columns.tile(a, k), _columns.tile(b, k),
                         _columns.tile(d, k))
    T = -(-x.shape[0] // rows)
    if serial:
        for t in range(T):
            _input_grad_task(t, x, dy, mean, a, b, d, dx, rows)
    else:
        for t in prange(T):
            _input_grad_task(t, x, dy, mean, a, b, d, dx, rows)
