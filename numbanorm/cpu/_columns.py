"""Per-column passes over a C-contiguous (R, C) block of rows: the inner loops of the
channels-last kernels (BatchNorm on the (N*S, C) view, GroupNorm/InstanceNorm on each sample's
(S, C) matrix; columns are channels, rows are positions).

The inner loop runs along a row's contiguous channels (vectorised), and rows are taken in
blocks (SUM_ROWS for sums, four or two for elementwise passes), so each column's accumulators and
coefficients are loaded once per block instead of once per row (one row at a time ran ~1.3-2x
slower than the NCHW kernels). The summation order depends on R only, never on the thread
count.
"""
import numpy as np
from numba import njit

from ._parallel import FASTMATH


# rows per block of the sums: each column's block sum is taken in registers, then added to
# its float64 accumulator (streaming from memory, 8 rows ran 2.2x faster than 4 row views)
SUM_ROWS = 8


@njit(cache=True, fastmath=FASTMATH, inline="always")
def add_moments(x, center, a1, a2):
    """a1[c] += sum_r (x[r, c] - center[c]); a2[c] += sum_r (x[r, c] - center[c])**2.

    center, a1, a2: float64 (C,); the differences are taken in float64 (the shift keeps the
    variance free of cancellation for data with a large mean)."""
    R, C = x.shape
    for q in range(R // SUM_ROWS):
        # one (SUM_ROWS, C) block, not row views: LLVM then checks one pointer for overlap
        xb = x[q * SUM_ROWS:(q + 1) * SUM_ROWS]
        for c in range(C):
            m = center[c]
            t1 = 0.0
            t2 = 0.0
            for j in range(SUM_ROWS):
                d = np.float64(xb[j, c]) - m
                t1 += d
                t2 += d * d
            a1[c] += t1
            a2[c] += t2
    for r in range(R - R % SUM_ROWS, R):
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
    for q in range(R // SUM_ROWS):
        xb, gb = x[q * SUM_ROWS:(q + 1) * SUM_ROWS], dy[q * SUM_ROWS:(q + 1) * SUM_ROWS]
        for c in range(C):
            m = center[c]
            t1 = 0.0
            t2 = 0.0
            for j in range(SUM_ROWS):
                g = gb[j, c]
                t1 += np.float64(g)
                t2 += np.float64(g * (xb[j, c] - m))
            sg[c] += t1
            sgx[c] += t2
    for r in range(R - R % SUM_ROWS, R):
        xv, gv = x[r], dy[r]
        for c in range(C):
            sg[c] += np.float64(gv[c])
            sgx[c] += np.float64(gv[c] * (xv[c] - center[c]))


@njit(cache=True, fastmath=FASTMATH, inline="always")
def affine(x, out, center, scale, offset):
    """out[r, c] = (x[r, c] - center[c]) * scale[c] + offset[c]; coefficients (C,) in x's dtype."""
    R, C = x.shape
    for q in range(R // 4):
        # one (4, C) block, not four row views: LLVM then checks 2 pointers for overlap, not
        # 8, and vectorises (four row views did not; 4 rows ran faster than 2 or 8 here)
        xb, ob = x[4 * q:4 * q + 4], out[4 * q:4 * q + 4]
        for c in range(C):
            m, a, b = center[c], scale[c], offset[c]
            for j in range(4):
                ob[j, c] = (xb[j, c] - m) * a + b
    for r in range(R - R % 4, R):
        xv, ov = x[r], out[r]
        for c in range(C):
            ov[c] = (xv[c] - center[c]) * scale[c] + offset[c]


@njit(cache=True, fastmath=FASTMATH, inline="always")
def input_grad(x, dy, out, center, a, b, d):
    """out[r, c] = a[c] * dy[r, c] + b[c] * (x[r, c] - center[c]) + d[c]; coefficients (C,) in
    x's dtype."""
    R, C = x.shape
    # (2, C) blocks: with three streams, 4 rows ran 1.3x slower than 2 from memory
    for q in range(R // 2):
        xb, gb, ob = x[2 * q:2 * q + 2], dy[2 * q:2 * q + 2], out[2 * q:2 * q + 2]
        for c in range(C):
            m, ac, bc, dc = center[c], a[c], b[c], d[c]
            for j in range(2):
                ob[j, c] = ac * gb[j, c] + bc * (xb[j, c] - m) + dc
    for r in range(R - R % 2, R):
        xv, gv, ov = x[r], dy[r], out[r]
        for c in range(C):
            ov[c] = a[c] * gv[c] + b[c] * (xv[c] - center[c]) + d[c]
