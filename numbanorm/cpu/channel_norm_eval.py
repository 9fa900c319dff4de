"""CPU kernel for the eval-mode BatchNorm backward (numbanorm.cpu.channel_norm.backward with
constant statistics), one pass over (x, dy).

Shape legend: x, dy, dx are C-contiguous (N, C, S > 1) views (float32, float64, or float16 as
uint16 bits read and written through numbanorm.cpu.half's load/store); mean/rstd/weight (C,).
Each task covers about TASK_SIZE contiguous elements (see _grid): whole samples, a run of
planes of one sample, or a spatial block of one plane. Per-(task, channel) float64 sums are
merged in a fixed order, so results do not depend on the thread count.
"""
import numpy as np
from numba import njit, prange

from ._parallel import FASTMATH, TASK_SIZE
from .half import load, store, work_empty


@njit(cache=True)
def _grid(N, C, S):
    """(samples, planes, spatial) per task for an (N, C, S) array: a task covers samples
    [b*samples, ...) x channels [j*planes, ...) x positions [k*spatial, ...), contiguous
    memory of at most TASK_SIZE elements (over half of it, but for a last, shorter block).

    One task per plane (n, c) of (256, 16, 196) took 1.10-1.16x the floor's time (4096 tasks
    of 196 elements: each task's setup and partials), 5 whole samples per task 1.03-1.06x
    (kernel alone, benchmarks/floor.py's eval backward beside it, 2 threads).
    """
    spatial = min(S, TASK_SIZE)
    planes = max(1, min(C, TASK_SIZE // S))
    samples = max(1, TASK_SIZE // (C * S)) if planes == C else 1
    return samples, planes, spatial


@njit(cache=True, fastmath=FASTMATH, inline="always")
def _task(t, x, dy, mean_x, a_x, samples, planes, spatial, dx, p1, p2):
    """Task t = (sample block b, channel block j, spatial block k): dx = a*dy over its
    elements, and p1[b, c, k] = sum(dy), p2[b, c, k] = sum(dy * (x - mean_x[c])) for each of
    its channels c."""
    N, C, S = x.shape
    nk = p1.shape[2]
    nj = -(-C // planes)
    k = t % nk
    j = (t // nk) % nj
    b = t // (nk * nj)
    c0, c1 = j * planes, min(C, (j + 1) * planes)
    s0, s1 = k * spatial, min(S, (k + 1) * spatial)
    for c in range(c0, c1):  # a loop, not `[:] = 0`: parallel=True would make that a parfor
        p1[b, c, k] = 0.0
        p2[b, c, k] = 0.0
    for n in range(b * samples, min(N, (b + 1) * samples)):
        for c in range(c0, c1):
            m, a = mean_x[c], a_x[c]
            xv, gv, ov = x[n, c, s0:s1], dy[n, c, s0:s1], dx[n, c, s0:s1]
            r1 = 0.0
            r2 = 0.0
            for s in range(xv.size):
                g = load(gv, s)
                store(ov, s, a * g)
                r1 += g
                r2 += g * (load(xv, s) - m)
            p1[b, c, k] += r1
            p2[b, c, k] += r2


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def backward(x, dy, mean, rstd, weight, dx, dweight, dbias, serial):
    """The eval-mode backward of an (N, C, S > 1) array in one pass over (x, dy): the statistics
    were constants, so dx = w*rstd*dy; the per-task sums for dweight/dbias are taken in the
    same pass in float64, merged in a fixed order, and rounded into dweight/dbias ((C,), written)."""
    N, C, S = x.shape
    mean_x = work_empty(x, C)
    a_x = work_empty(x, C)
    for c in range(C):
        mean_x[c] = mean[c]
        a_x[c] = rstd[c] if weight is None else rstd[c] * weight[c]
    samples, planes, spatial = _grid(N, C, S)
    nb, nj, nk = -(-N // samples), -(-C // planes), -(-S // spatial)
    p1 = np.empty((nb, C, nk))
    p2 = np.empty((nb, C, nk))
    if serial:
        for t in range(nb * nj * nk):
            _task(t, x, dy, mean_x, a_x, samples, planes, spatial, dx, p1, p2)
    else:
        for t in prange(nb * nj * nk):
            _task(t, x, dy, mean_x, a_x, samples, planes, spatial, dx, p1, p2)
    for c in range(C):  # loops, not np.zeros / array expressions: those would be parfors
        s1 = 0.0
        s2 = 0.0
        for b in range(nb):
            for k in range(nk):
                s1 += p1[b, c, k]
                s2 += p2[b, c, k]
        # sum(dy * (x - mean)) = sum(dy * (x - mean_x)) + (mean_x - mean) * sum(dy)
        dweight[c] = (s2 + (np.float64(mean_x[c]) - mean[c]) * s1) * rstd[c]
        dbias[c] = s1
