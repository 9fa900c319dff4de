"""The S == 1 case of numbanorm.cpu.channel_norm: per-channel sums and elementwise passes over
a C-contiguous (R, C) array, columns being channels: BatchNorm1d's (N, C) input, and the
(N*S, C) view of a channels-last (NLC, NHWC, NDHWC) BatchNorm input.

Each task takes a block of rows (rows_per_task(C) for the elementwise passes,
sum_rows_per_task(R, C) for the sums: both depend on the shape only, never on the thread
count); the column loops are numbanorm.cpu._panels' explicit vector loops (per-column
coefficients and sums held in registers while the rows stream past). Sums: each task writes
float64 (C,) partials, merged in task order, so results are bitwise the same for every thread
count. Data of every kernel dtype (16-bit as bits); the sums run in the work type about a
work-type center over blocks of rows, added into float64 (see numbanorm.cpu._panels).
"""
import numpy as np
from numba import njit, prange

from . import _panels
from ._parallel import FASTMATH, TASK_SIZE
from .half import work_empty


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
    """Task t: rows [t*rows, (t+1)*rows) summed by column into p1[t], p2[t] (see sums);
    center in x's work type."""
    R, C = x.shape
    a1, a2 = p1[t], p2[t]
    for c in range(C):  # a loop, not `[:] = 0`: parallel=True would make that a parfor
        a1[c] = 0.0
        a2[c] = 0.0
    r0, r1 = t * rows, min(R, (t + 1) * rows)
    if with_dy:
        _panels.grad_sums(x[r0:r1], dy[r0:r1], center, a1, a2)
    else:
        _panels.moment_sums(x[r0:r1], center, a1, a2)


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def sums(x, center, dy, with_dy, serial):
    """Per-column float64 (C,) sums of an (R, C) array, center float64 (C,).

    Without dy: (sum(x - center), sum((x - center)**2)).
    With dy: (sum(dy), sum(dy * (x - center))).
    """
    R, C = x.shape
    center_x = work_empty(x, C)  # center rounded to the work type: the sums are taken about it
    for c in range(C):
        center_x[c] = center[c]
    rows = sum_rows_per_task(R, C)
    T = -(-R // rows)
    p1 = np.empty((T, C))
    p2 = np.empty((T, C))
    if serial:
        for t in range(T):
            _sums_task(t, x, center_x, dy, with_dy, rows, p1, p2)
    else:
        for t in prange(T):
            _sums_task(t, x, center_x, dy, with_dy, rows, p1, p2)
    return _merge(p1, p2, center_x, center, with_dy, R)


@njit(cache=True)
def _merge(p1, p2, center_x, center, with_dy, rows):
    """Sum (T, C) task partials in task order -> (C,) sums about center over `rows` rows (the
    partials are about center_x). Not in `sums`: under parallel=True its np.zeros would be a parfor, one more
    wake-up of the thread pool per call (on a busy machine a wait of milliseconds for the
    other core, even on the serial path)."""
    T, C = p1.shape
    s1, s2 = np.zeros(C), np.zeros(C)
    for t in range(T):
        for c in range(C):
            s1[c] += p1[t, c]
            s2[c] += p2[t, c]
    for c in range(C):  # e = center_x - center: 0 for a center that is a value of x
        e = np.float64(center_x[c]) - center[c]
        if with_dy:  # sum(dy * (x - center)) = sum(dy * (x - center_x)) + e * sum(dy)
            s2[c] += e * s1[c]
        else:  # sums of (x - center_x) + e
            s2[c] += e * (2.0 * s1[c] + rows * e)
            s1[c] += rows * e
    return s1, s2


@njit(cache=True, fastmath=FASTMATH, inline="always")
def _affine_task(t, u, center, scale, offset, out, rows):
    R = u.shape[0]
    r0, r1 = t * rows, min(R, (t + 1) * rows)
    _panels.affine(u[r0:r1], out[r0:r1], center, scale, offset)


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def affine(u, center, scale, offset, out, serial):
    """out[r, c] = (u[r, c] - center[c]) * scale[c] + offset[c] on (R, C) arrays; coefficients
    (C,) in u's work type."""
    rows = rows_per_task(u.shape[1])
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
    _panels.input_grad(x[r0:r1], dy[r0:r1], dx[r0:r1], mean, a, b, d)


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def input_grad(x, dy, mean, a, b, d, dx, serial):
    """dx[r, c] = a[c] * dy[r, c] + b[c] * (x[r, c] - mean[c]) + d[c] on (R, C) arrays;
    coefficients (C,) in x's work type."""
    rows = rows_per_task(x.shape[1])
    T = -(-x.shape[0] // rows)
    if serial:
        for t in range(T):
            _input_grad_task(t, x, dy, mean, a, b, d, dx, rows)
    else:
        for t in prange(T):
            _input_grad_task(t, x, dy, mean, a, b, d, dx, rows)
