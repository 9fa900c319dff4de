"""Per-column passes over a C-contiguous (R, C) block of rows: the inner loops of the
channels-last kernels (BatchNorm on the (N*S, C) view, GroupNorm/InstanceNorm on each sample's
(S, C) matrix; columns are channels, rows are positions).

The inner loop runs along a row's contiguous channels (vectorised), and rows are taken several
at a time (four for sums, two for elementwise passes), so each column's accumulators and
coefficients are loaded once per block of rows instead of once per row (one row at a time ran
~1.3-2x slower than the NCHW kernels). The summation order depends on R only, never on the
thread count.
"""
import numpy as np
from numba import njit

from ._parallel import FASTMATH


@njit(cache=True, fastmath=FASTMATH, inline="always")
def add_moments(x, center, a1, a2):
    """a1[c] += sum_r (x[r, c] - center[c]); a2[c] += sum_r (x[r, c] - center[c])**2.

    center, a1, a2: float64 (C,); the differences are taken in float64 (the shift keeps the
    variance free of cancellation for data with a large mean)."""
    R, C = x.shape
    for q in range(R // 4):
        x0, x1, x2, x3 = x[4 * q], x[4 * q + 1], x[4 * q + 2], x[4 * q + 3]
        for c in range(C):
            m = center[c]
            d0 = np.float64(x0[c]) - m
            d1 = np.float64(x1[c]) - m
            d2 = np.float64(x2[c]) - m
            d3 = np.float64(x3[c]) - m
            a1[c] += (d0 + d1) + (d2 + d3)
            a2[c] += (d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3)
    for r in range(R - R % 4, R):
        xv = x[r]
        for c in range(C):
            d = np.float64(xv[c]) - center[c]
            a1[c] += d
            a2[c] += d * d


@njit(cache=True, fastmath=FASTMATH, inline="always")
def add_grad_moments(x, dy, center, sg, sgx):
    """sg[c] += sum_r dy[r, c]; sgx[c] += sum_r dy[r, c] * (x[r, c] - center[c]).

    sg, sgx: float64 (C,). The product is taken in center's dtype: float64 center -> float64
    arithmetic; center in x's dtype (a mean rounded to it) -> x's vector width."""
    R, C = x.shape
    for q in range(R // 4):
        x0, x1, x2, x3 = x[4 * q], x[4 * q + 1], x[4 * q + 2], x[4 * q + 3]
        g0, g1, g2, g3 = dy[4 * q], dy[4 * q + 1], dy[4 * q + 2], dy[4 * q + 3]
        for c in range(C):
            m = center[c]
            sg[c] += (np.float64(g0[c]) + np.float64(g1[c])) + (np.float64(g2[c]) + np.float64(g3[c]))
            sgx[c] += ((np.float64(g0[c] * (x0[c] - m)) + np.float64(g1[c] * (x1[c] - m)))
                       + (np.float64(g2[c] * (x2[c] - m)) + np.float64(g3[c] * (x3[c] - m))))
    for r in range(R - R % 4, R):
        xv, gv = x[r], dy[r]
        for c in range(C):
            sg[c] += np.float64(gv[c])
            sgx[c] += np.float64(gv[c] * (xv[c] - center[c]))


@njit(cache=True, fastmath=FASTMATH, inline="always")
def affine(x, out, center, scale, offset):
    """out[r, c] = (x[r, c] - center[c]) * scale[c] + offset[c]; coefficients (C,) in x's dtype."""
    R, C = x.shape
    for q in range(R // 2):
        # one (2, C) block, not two row views: LLVM then checks 2 pointers for overlap, not 4,
        # and still vectorises (measured 1.6x faster than two rows)
        xb, ob = x[2 * q:2 * q + 2], out[2 * q:2 * q + 2]
        for c in range(C):
            m, a, b = center[c], scale[c], offset[c]
            for j in range(2):
                ob[j, c] = (xb[j, c] - m) * a + b
    if R % 2:
        xv, ov = x[R - 1], out[R - 1]
        for c in range(C):
            ov[c] = (xv[c] - center[c]) * scale[c] + offset[c]


@njit(cache=True, fastmath=FASTMATH, inline="always")
def input_grad(x, dy, out, center, a, b, d):
    """out[r, c] = a[c] * dy[r, c] + b[c] * (x[r, c] - center[c]) + d[c]; coefficients (C,) in
    x's dtype."""
    R, C = x.shape
    for q in range(R // 2):
        xb, gb, ob = x[2 * q:2 * q + 2], dy[2 * q:2 * q + 2], out[2 * q:2 * q + 2]
        for c in range(C):
            m, ac, bc, dc = center[c], a[c], b[c], d[c]
            for j in range(2):
                ob[j, c] = ac * gb[j, c] + bc * (xb[j, c] - m) + dc
    if R % 2:
        xv, gv, ov = x[R - 1], dy[R - 1], out[R - 1]
        for c in range(C):
            ov[c] = a[c] * gv[c] + b[c] * (xv[c] - center[c]) + d[c]
