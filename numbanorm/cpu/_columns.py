"""Per-column passes over a C-contiguous (R, C) block of rows: the inner loops of the
channels-last kernels (BatchNorm on the (N*S, C) view, GroupNorm/InstanceNorm on each sample's
(S, C) matrix; columns are channels, rows are positions).

The inner loop runs along a row's contiguous channels (vectorised), and rows are taken in
blocks (SUM_ROWS for sums, two for elementwise passes), so each column's accumulators and
coefficients are loaded once per block instead of once per row (one row at a time ran ~1.3-2x
slower than the NCHW kernels). Block walks that the hardware prefetchers do not follow from
memory ask for their lines ahead (numbanorm.cpu._prefetch). The summation order depends on R
only, never on the thread count.
"""
import numpy as np
from numba import njit
from numba.extending import overload

from ._parallel import FASTMATH
from ._prefetch import ahead
from .half import load, store


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
    xf = x.reshape(R * C)
    for q in range(R // 2):
        # x's lines AHEAD bytes on (see numbanorm.cpu._prefetch): from memory (64, 64, 56, 56)
        # float32 ran at 1.07x the floor's copy with it, 1.4x without (1 thread); (2, C)
        # blocks, not (4, C): those ran 1.3x the floor from memory even with the prefetch
        ahead(xf, 2 * q * C, 2 * (q + 1) * C)
        # one (2, C) block, not two row views: LLVM then checks fewer pointers for overlap
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
    # (2, C) blocks: with three streams, 4 rows ran 1.3x slower than 2 from memory; no
    # prefetch (unlike affine: from memory these ran at 1.1x the floor without it, no faster with)
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


# ---------------------------------------------------------------- any dtype (16-bit as bits)
# The BatchNorm (N*S, C) path (numbanorm.cpu.channel_norm_columns) reads float16/bfloat16 data
# as bits through numbanorm.cpu.half's load/store. Each function below is the function above
# for float32/float64 data and a 16-bit variant for bits; the choice is a compile-time constant
# (is_16bit), so LLVM drops the other branch. Plain inlined functions, not overloads: called
# through an overload's separate function the same loops ran 1.6-1.9x slower.

def is_16bit(a):
    """Whether a kernel array holds 16-bit data as bits (a compile-time constant in kernels)."""
    return a.dtype.itemsize == 2


@overload(is_16bit, inline="always")
def _is_16bit(a):
    value = a.dtype.bitwidth == 16
    return lambda a: value


@njit(cache=True, fastmath=FASTMATH, inline="always")
def shifted_sums(x, center, a1, a2):
    """add_moments for data of any kernel dtype: for 16-bit bits each column's SUM_ROWS-row
    block sum is taken in float32 about float32(center[c]) (exact: see
    numbanorm.cpu.half.shifted_sums), corrected to center and added into float64."""
    R, C = x.shape
    xf = x.reshape(R * C)
    for q in range(R // SUM_ROWS):
        # the block's lines AHEAD bytes on, in address order: the hardware prefetchers do not
        # follow the block's row-by-row walk (see numbanorm.cpu._prefetch)
        ahead(xf, q * SUM_ROWS * C, (q + 1) * SUM_ROWS * C)
        xb = x[q * SUM_ROWS:(q + 1) * SUM_ROWS]
        if is_16bit(x):
            _add_shifted_block(xb, SUM_ROWS, center, a1, a2)
        else:
            add_moments(xb, center, a1, a2)
    if R % SUM_ROWS:
        if is_16bit(x):
            _add_shifted_block(x[R - R % SUM_ROWS:], R % SUM_ROWS, center, a1, a2)
        else:
            add_moments(x[R - R % SUM_ROWS:], center, a1, a2)


@njit(cache=True, fastmath=FASTMATH, inline="always")
def dy_sums(x, dy, center, sg, sgx):
    """add_grad_moments with a float64 center (float64 products) for data of any kernel
    dtype: for 16-bit bits the block sums of dy and dy * (x - float32(center[c])) are float32,
    corrected to center and added into float64."""
    R, C = x.shape
    if is_16bit(x):
        # 4-row blocks: from memory 8 rows ran 1.8x slower, 2 rows 1.3x (two streams); no
        # prefetch (with it these sums ran 1.25x slower)
        for q in range(R // 4):
            _add_dy_block(x[4 * q:4 * q + 4], dy[4 * q:4 * q + 4], 4, center, sg, sgx)
        if R % 4:
            _add_dy_block(x[R - R % 4:], dy[R - R % 4:], R % 4, center, sg, sgx)
    else:
        xf, gf = x.reshape(R * C), dy.reshape(R * C)
        # (2, C) blocks: with two streams, 8-row blocks (add_grad_moments) ran 1.4x slower
        # from memory, 2 rows 1.1x the NCHW plane sums
        for q in range(R // 2):
            ahead(xf, q * 2 * C, (q + 1) * 2 * C)  # as in shifted_sums
            ahead(gf, q * 2 * C, (q + 1) * 2 * C)
            xb, gb = x[2 * q:2 * q + 2], dy[2 * q:2 * q + 2]
            for c in range(C):
                m = center[c]
                t1 = 0.0
                t2 = 0.0
                for j in range(2):
                    g = np.float64(gb[j, c])
                    t1 += g
                    t2 += g * (np.float64(xb[j, c]) - m)
                sg[c] += t1
                sgx[c] += t2
        if R % 2:
            add_grad_moments(x[R - 1:], dy[R - 1:], center, sg, sgx)


# 16-bit elementwise passes: whole rows taken as one flat run of FLAT_ROWS(C) * C values
# against coefficients tiled to that length (`tile`), so the inner loop is long, contiguous
# and at F16C's vector width. Row by row, C = 64 is shorter than LLVM's vector loop and ran
# in its scalar remainder: (25088, 64) float16 affine 1.38x, input_grad 1.54x the NCHW
# kernels' time on one core; flat 1.17x and 1.29x (the cost left: the coefficients' loads).
# (Fixed 16-column panels per row ran 50x slower: scalar conversions; float32 data keeps the
# (2, C) blocks above, where flat runs measured no faster for affine, 1.25x slower for
# input_grad.)
FLAT_VALUES = 1024  # values per flat run, at least C (whole rows)


@njit(cache=True)
def flat_rows(C):
    """Rows per flat run of the 16-bit elementwise passes (a function of C only)."""
    return max(1, FLAT_VALUES // C)


@njit(cache=True)
def tile(v, rows):
    """v (C,) repeated `rows` times: (rows * C,), the coefficients of a flat run."""
    C = v.size
    out = np.empty(rows * C, v.dtype)
    for j in range(rows):
        for c in range(C):
            out[j * C + c] = v[c]
    return out


@njit(cache=True, fastmath=FASTMATH, inline="always")
def affine_any_dtype(x, out, center, scale, offset):
    """affine for data of any kernel dtype, coefficients in x's work type: (C,) for
    float32/float64 data, for 16-bit bits tiled over flat_rows(C) rows (tile)."""
    if is_16bit(x):
        R, C = x.shape
        k = center.size // C
        xf, of = x.reshape(R * C), out.reshape(R * C)
        for r0 in range(0, R, k):
            lo, hi = r0 * C, min(R, r0 + k) * C
            xv, ov = xf[lo:hi], of[lo:hi]
            for i in range(hi - lo):
                store(ov, i, (load(xv, i) - center[i]) * scale[i] + offset[i])
    else:
        affine(x, out, center, scale, offset)


@njit(cache=True, fastmath=FASTMATH, inline="always")
def input_grad_any_dtype(x, dy, out, center, a, b, d):
    """input_grad for data of any kernel dtype, coefficients as affine_any_dtype's."""
    if is_16bit(x):
        R, C = x.shape
        k = center.size // C
        xf, gf, of = x.reshape(R * C), dy.reshape(R * C), out.reshape(R * C)
        for r0 in range(0, R, k):
            lo, hi = r0 * C, min(R, r0 + k) * C
            xv, gv, ov = xf[lo:hi], gf[lo:hi], of[lo:hi]
            for i in range(hi - lo):
                store(ov, i, a[i] * load(gv, i) + b[i] * (load(xv, i) - center[i]) + d[i])
    else:
        input_grad(x, dy, out, center, a, b, d)


@njit(cache=True, fastmath=FASTMATH, inline="always")
def _add_shifted_block(xb, R, center, a1, a2):
    """One block of R rows xb of 16-bit bits into float64 a1, a2 (see shifted_sums); R a
    constant for full blocks, so the row loop unrolls and the column loop vectorises."""
    C = xb.shape[1]
    for c in range(C):
        m = np.float32(center[c])
        t1 = np.float32(0.0)
        t2 = np.float32(0.0)
        for j in range(R):
            d = load(xb, (j, c)) - m
            t1 += d
            t2 += d * d
        # sums about m -> about center: (d + e) with e = m - center (0 when center is exact)
        e = np.float64(m) - center[c]
        a1[c] += t1 + R * e
        a2[c] += t2 + 2.0 * e * t1 + R * e * e


@njit(cache=True, fastmath=FASTMATH, inline="always")
def _add_dy_block(xb, gb, R, center, sg, sgx):
    """One block of R rows (xb, gb) of 16-bit bits into float64 sg, sgx (see dy_sums)."""
    C = xb.shape[1]
    for c in range(C):
        m = np.float32(center[c])
        t1 = np.float32(0.0)
        t2 = np.float32(0.0)
        for j in range(R):
            g = load(gb, (j, c))
            t1 += g
            t2 += g * (load(xb, (j, c)) - m)
        # sum(g * (x - center)) = sum(g * (x - m)) + (m - center) * sum(g)
        sg[c] += t1
        sgx[c] += t2 + (np.float64(m) - center[c]) * t1
