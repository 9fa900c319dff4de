"""CPU kernel for the eval-mode BatchNorm backward (numbanorm.cpu.channel_norm.backward with
constant statistics), one pass over (x, dy).

Shape legend: x, dy, dx are C-contiguous (N, C, S > 1) views (float32, float64, or float16 as
uint16 bits read and written through numbanorm.cpu.half's load/store); mean/rstd/weight (C,).
One task per plane (n, c); the per-plane float64 sums are merged in plane order, so results do
not depend on the thread count.
"""
import numpy as np
from numba import njit, prange

from ._parallel import FASTMATH
from .half import load, store, work_empty


@njit(cache=True, fastmath=FASTMATH, inline="always")
def _plane_task(t, x, dy, mean_x, a_x, dx, p1, p2):
    """Plane t = (n, c): dx = a*dy, and the plane's sums of dy and dy * (x - mean_x)."""
    N, C, S = x.shape
    n, c = t // C, t % C
    m, a = mean_x[c], a_x[c]
    xv, gv, ov = x[n, c], dy[n, c], dx[n, c]
    s1 = 0.0
    s2 = 0.0
    for s in range(S):
        g = load(gv, s)
        store(ov, s, a * g)
        s1 += g
        s2 += g * (load(xv, s) - m)
    p1[n, c] = s1
    p2[n, c] = s2


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def backward(x, dy, mean, rstd, weight, dx, dweight, dbias, serial):
    """The eval-mode backward of an (N, C, S > 1) array in one pass over (x, dy): the statistics
    were constants, so dx = w*rstd*dy; the per-plane sums for dweight/dbias are taken in the
    same pass in float64, merged in plane order, and rounded into dweight/dbias ((C,), written)."""
    N, C, S = x.shape
    mean_x = work_empty(x, C)
    a_x = work_empty(x, C)
    for c in range(C):
        mean_x[c] = mean[c]
        a_x[c] = rstd[c] if weight is None else rstd[c] * weight[c]
    p1 = np.empty((N, C))
    p2 = np.empty((N, C))
    if serial:
        for t in range(N * C):
            _plane_task(t, x, dy, mean_x, a_x, dx, p1, p2)
    else:
        for t in prange(N * C):
            _plane_task(t, x, dy, mean_x, a_x, dx, p1, p2)
    for c in range(C):  # loops, not np.zeros / array expressions: those would be parfors
        s1 = 0.0
        s2 = 0.0
        for n in range(N):
            s1 += p1[n, c]
            s2 += p2[n, c]
        # sum(dy * (x - mean)) = sum(dy * (x - mean_x)) + (mean_x - mean) * sum(dy)
        dweight[c] = (s2 + (np.float64(mean_x[c]) - mean[c]) * s1) * rstd[c]
        dbias[c] = s1
