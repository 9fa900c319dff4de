"""CPU kernels for GroupNorm and InstanceNorm on channels-last memory (NLC, NHWC, NDHWC).

Shape legend: x is a C-contiguous (N, S, C) array, the memory of an (N, C, *spatial) input laid
out channels-last, S = prod(spatial), C = G * Cg. Statistics are row_norm's: per (sample n,
group g) over the S * Cg values x[n, :, g*Cg:(g+1)*Cg], returned as float64 (N*G,) arrays
indexed n * G + g. InstanceNorm is G = C, Cg = 1. x, dy, y, dx are float32, float64 or 16-bit
data (uint16/int16 bits through numbanorm.cpu.half's load/store, float32 work type); weight/bias
are float32 for 16-bit data, else x's dtype.

One task per sample makes both passes over its (S, C) matrix back to back, in a fixed order;
dweight/dbias are per-sample partials summed in sample order: bitwise the same results for
any thread count.
  Pass 1 (sums, _column_sums: the forward's and the backward's) takes SUM_ROWS rows at a time:
  each column's block sum is taken in the work type (in registers) of values shifted by a
  value of the column's group (exact in float32), added into a work-type partial per column,
  which goes into a float64 accumulator every FLUSH_ROWS rows, so data with a large mean keeps
  float64-reference accuracy; the summation order depends on the shape only.
  Pass 2 (elementwise) takes 4 rows (forward) or 2 rows (backward; flat tiles of whole rows
  for 16-bit data with few channels, _input_grad_tiles) at a time, each column's
  coefficients loaded once per block; as in row_norm it runs in the work type on (x - m_x),
  m_x the group mean rounded to it, the rounding folded into the offset.
Pass 1 prefetches its blocks' lines in address order (cpu/_prefetch): from memory the row
blocks alone ran 1.3-1.5x slower than NCHW row_norm's sequential rows. Pass 2 reads the sample
back from cache and prefetches only the lines it writes (for writing): prefetching its reads
as well cost more instructions than it saved (cold and warm, 1 thread).
Tried and measured slower (branch rowcl, 2026-11-25, 1 thread, float32, against this kernel):
tasks per (sample, block of whole groups) walking strided row segments: with 16-column
compile-time chunks 2.5-4x slower (one vector per row, but each 4-row block paid tens of
instructions of index arithmetic and spills), with the block's width as the loop length
(64-byte blocks: 1.15-1.6x slower; 256-byte blocks, i.e. whole samples at C = 64, 1.0-1.4x).
Also walking pass 2 from the sample's end (what pass 1 read last) and 4-row dx blocks: no
change beyond the noise (~0.1x).
"""
import numpy as np
from numba import njit, prange

from . import _memory
from ._prefetch import ahead, ahead_write
from ._parallel import FASTMATH, serial
from .half import bits, load, store, work, work_empty

TILE_ELEMENTS = 1024  # elements per flat block of the 16-bit dx pass (see _input_grad_tiles)
TILED_MAX_C = 128  # the tiled dx pass only up to this many channels (at C = 256 it ran 1.07x)
SUM_ROWS = 4  # rows per register block of the column sums (4 ran faster than 8 or 16)
# rows per work-type partial of the column sums, then added into float64: a column loop all in
# float32 ran at twice the vector width of one adding each block into float64 (cold, 1 thread:
# GroupNorm (32, 256, 28, 28) float32 channels-last 1.44x -> 1.11x the NCHW forward, 1.51x ->
# 1.39x the backward); 64 float32 terms sum to ~1e-6 relative, as row_norm's ROW_BLOCK
FLUSH_ROWS = 64


@njit(cache=True, fastmath=FASTMATH, inline="always")
def _column_sums(xs, gs, center, grad, p1, p2, a1, a2):
    """Per column c of the (R, C) blocks xs (and gs), with d = xs[r, c] - center[c]:
        grad False: a1[c] += sum_r d,          a2[c] += sum_r d * d
        grad True:  a1[c] += sum_r gs[r, c],   a2[c] += sum_r gs[r, c] * d
    a1, a2 float64; each SUM_ROWS-row block sum is taken in registers and added into p1, p2
    ((C,) scratch of the work type), which are added into a1, a2 every FLUSH_ROWS rows: a
    column loop all in float32 for float32 data runs at twice the vector width of one that
    converts to float64 (LLVM sizes vectors by the widest type). grad: a compile-time constant."""
    R, C = xs.shape
    xf, gf = xs.reshape(R * C), gs.reshape(R * C)
    for r0 in range(0, R, FLUSH_ROWS):
        n = min(R, r0 + FLUSH_ROWS) - r0
        for c in range(C):
            p1[c] = 0.0
            p2[c] = 0.0
        for q in range(n // SUM_ROWS):
            lo = (r0 + q * SUM_ROWS) * C
            ahead(xf, lo, lo + SUM_ROWS * C)
            if grad:
                ahead(gf, lo, lo + SUM_ROWS * C)
            # one (SUM_ROWS, C) block, not row views: LLVM then checks one pointer for overlap
            xb = xs[r0 + q * SUM_ROWS:r0 + (q + 1) * SUM_ROWS]
            gb = gs[r0 + q * SUM_ROWS:r0 + (q + 1) * SUM_ROWS]
            for c in range(C):
                m = center[c]
                t1 = work(xs, 0.0)
                t2 = work(xs, 0.0)
                for j in range(SUM_ROWS):
                    d = load(xb, (j, c)) - m
                    if grad:
                        g = load(gb, (j, c))
                        t1 += g
                        t2 += g * d
                    else:
                        t1 += d
                        t2 += d * d
                p1[c] += t1
                p2[c] += t2
        for r in range(r0 + n - n % SUM_ROWS, r0 + n):
            xv, gv = xs[r], gs[r]
            for c in range(C):
                d = load(xv, c) - center[c]
                if grad:
                    g = load(gv, c)
                    p1[c] += g
                    p2[c] += g * d
                else:
                    p1[c] += d
                    p2[c] += d * d
        for c in range(C):
            a1[c] += p1[c]
            a2[c] += p2[c]


@njit(cache=True, fastmath=FASTMATH, inline="always")
def _affine(xs, ys, center, scale, offset):
    """ys[r, c] = (xs[r, c] - center[c]) * scale[c] + offset[c]; coefficients (C,), work type."""
    S, C = xs.shape
    yf = ys.reshape(S * C)
    for q in range(S // 4):
        ahead_write(yf, 4 * q * C, 4 * (q + 1) * C)
        # one (4, C) block, not four row views: LLVM then checks 2 pointers for overlap and
        # vectorises, and each column's coefficients are loaded once per block
        xb, yb = xs[4 * q:4 * q + 4], ys[4 * q:4 * q + 4]
        for c in range(C):
            m, a, b = center[c], scale[c], offset[c]
            for j in range(4):
                store(yb, (j, c), (load(xb, (j, c)) - m) * a + b)
    for r in range(S - S % 4, S):
        xv, yv = xs[r], ys[r]
        for c in range(C):
            store(yv, c, (load(xv, c) - center[c]) * scale[c] + offset[c])


@njit(cache=True, inline="always")
def _tiled(itemsize, C):
    """Whether the backward's dx pass takes _input_grad_tiles (16-bit data, C <= TILED_MAX_C)."""
    return itemsize == 2 and C <= TILED_MAX_C


@njit(cache=True, fastmath=FASTMATH, inline="always")
def _input_grad_tiles(xs, gs, dxs, tiles):
    """dxs[r, c] = a[c] * gs[r, c] + b[c] * (xs[r, c] - m[c]) + d[c]; tiles: (4, T) work-type
    rows m, a, b, d, each the (C,) coefficients repeated T // C times. The sample is walked
    flat, T elements (T // C rows) at a time: LLVM's runtime overlap check of the 7 arrays then
    runs once per T elements, not once per row block. Used for 16-bit data, where it ran
    0.76x (warm) to 0.91x (cold cache) the time of the backward with _input_grad_rows."""
    T = tiles.shape[1]
    xf, gf, df = xs.reshape(xs.size), gs.reshape(gs.size), dxs.reshape(dxs.size)
    m, a, b, d = tiles[0], tiles[1], tiles[2], tiles[3]
    for lo in range(0, xf.size, T):
        ahead_write(df, lo, lo + T)
        xb, gb, db = xf[lo:lo + T], gf[lo:lo + T], df[lo:lo + T]
        for i in range(xb.size):
            store(db, i, a[i] * load(gb, i) + b[i] * (load(xb, i) - m[i]) + d[i])


@njit(cache=True, fastmath=FASTMATH, inline="always")
def _input_grad_rows(xs, gs, dxs, center, a, b, d):
    """dxs[r, c] = a[c] * gs[r, c] + b[c] * (xs[r, c] - center[c]) + d[c]; coefficients (C,),
    work type. 2-row blocks: for float32/float64 data, from a cold cache, ran up to 1.13x faster
    than _input_grad_tiles."""
    S, C = xs.shape
    df = dxs.reshape(S * C)
    for q in range(S // 2):  # (2, C) blocks: with three streams 4 rows ran 1.3x slower
        ahead_write(df, 2 * q * C, 2 * (q + 1) * C)
        xb, gb, db = xs[2 * q:2 * q + 2], gs[2 * q:2 * q + 2], dxs[2 * q:2 * q + 2]
        for c in range(C):
            m, ac, bc, dc = center[c], a[c], b[c], d[c]
            for j in range(2):
                store(db, (j, c), ac * load(gb, (j, c)) + bc * (load(xb, (j, c)) - m) + dc)
    for r in range(S - S % 2, S):
        xv, gv, dv = xs[r], gs[r], dxs[r]
        for c in range(C):
            store(dv, c, a[c] * load(gv, c) + b[c] * (load(xv, c) - center[c]) + d[c])


@njit(cache=True, fastmath=FASTMATH, inline="always")
def _forward_sample(n, x, weight, bias, G, Cg, eps, y, mean, rstd, a1, a2, coef):
    """Sample n: statistics of its G groups into mean/rstd[n*G:(n+1)*G], then y[n].
    a1, a2: (N, C) float64 scratch; coef: (N*6*C,) scratch of the work type."""
    S, C = x.shape[1], x.shape[2]
    xs = x[n]
    k0 = 6 * C * n
    s1, s2, ctr = a1[n], a2[n], coef[k0:k0 + C]
    mx, sc, off = coef[k0 + C:k0 + 2 * C], coef[k0 + 2 * C:k0 + 3 * C], coef[k0 + 3 * C:k0 + 4 * C]
    p1, p2 = coef[k0 + 4 * C:k0 + 5 * C], coef[k0 + 5 * C:k0 + 6 * C]
    for c in range(C):
        ctr[c] = load(xs, (0, (c // Cg) * Cg))  # the group's first value: the shift of its sums
        s1[c] = 0.0
        s2[c] = 0.0
    _column_sums(xs, xs, ctr, False, p1, p2, s1, s2)
    count = S * Cg
    for g in range(G):
        t1 = 0.0
        t2 = 0.0
        for k in range(Cg):
            t1 += s1[g * Cg + k]
            t2 += s2[g * Cg + k]
        d_mean = t1 / count
        m = np.float64(ctr[g * Cg]) + d_mean
        rs = 1.0 / np.sqrt(max(t2 / count - d_mean * d_mean, 0.0) + eps)
        mean[n * G + g] = m
        rstd[n * G + g] = rs
        m_x = work(xs, m)
        cc = (np.float64(m_x) - m) * rs  # xhat = (x - m_x) * rs + cc
        for k in range(Cg):
            c = g * Cg + k
            w = np.float64(weight[c])
            mx[c] = m_x
            sc[c] = work(xs, rs * w)
            off[c] = work(xs, cc * w + bias[c])
    _affine(xs, y[n], mx, sc, off)


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def _forward(x, weight, bias, G, Cg, eps, y, mean, rstd, serial):
    N, S, C = x.shape
    a1, a2 = np.empty((N, C)), np.empty((N, C))
    coef = work_empty(x, N * 6 * C)
    if serial:
        for n in range(N):
            _forward_sample(n, x, weight, bias, G, Cg, eps, y, mean, rstd, a1, a2, coef)
    else:
        for n in prange(N):
            _forward_sample(n, x, weight, bias, G, Cg, eps, y, mean, rstd, a1, a2, coef)


def forward(x, weight, bias, G, Cg, eps):
    """GroupNorm/InstanceNorm forward on an (N, S, C) channels-last array. weight/bias: (C,)
    arrays (ones/zeros when absent), float32 for 16-bit x, else x's dtype. Returns (y (N, S, C),
    mean, rstd), the statistics float64 of shape (N*G,)."""
    y = _memory.empty_like(x)
    N = x.shape[0]
    mean = np.empty(N * G)  # allocated here: cheaper than returning arrays made in compiled code
    rstd = np.empty(N * G)
    _forward(bits(x), weight, bias, G, Cg, eps, bits(y), mean, rstd, serial(x))
    return y, mean, rstd


@njit(cache=True, fastmath=FASTMATH, inline="always")
def _backward_sample(n, x, dy, mean, rstd, weight, G, Cg, dx, part_dw, part_db, coef, tiles):
    """Sample n: dx[n], and its partial dweight/dbias (float64) in part_dw[n] / part_db[n].
    coef: (N*6*C,) and tiles: (N, 4, T) scratch of the work type (see _input_grad_tiles)."""
    S, C = x.shape[1], x.shape[2]
    xs, gs = x[n], dy[n]
    sg, sgx = part_db[n], part_dw[n]
    k0 = 6 * C * n
    mx, ac, bc, dc = (coef[k0:k0 + C], coef[k0 + C:k0 + 2 * C], coef[k0 + 2 * C:k0 + 3 * C],
                      coef[k0 + 3 * C:k0 + 4 * C])
    p1, p2 = coef[k0 + 4 * C:k0 + 5 * C], coef[k0 + 5 * C:k0 + 6 * C]
    for c in range(C):
        mx[c] = work(xs, mean[n * G + c // Cg])
        sg[c] = 0.0
        sgx[c] = 0.0
    # per column: sum(dy) and sum(dy * (x - m_x))
    _column_sums(xs, gs, mx, True, p1, p2, sg, sgx)
    count = S * Cg
    for g in range(G):
        m = mean[n * G + g]
        rs = rstd[n * G + g]
        cc = (np.float64(mx[g * Cg]) - m) * rs  # xhat = (x - m_x) * rs + cc
        s1 = 0.0
        s2 = 0.0
        for k in range(Cg):
            c = g * Cg + k
            sgx[c] = sgx[c] * rs + cc * sg[c]  # sum(dy * xhat): this sample's dweight
            w = np.float64(weight[c])
            s1 += w * sg[c]
            s2 += w * sgx[c]
        # dx = rstd * (w*dy - (s1 + xhat*s2) / count) = (rstd*w) * dy + bg * (x - m_x) + dg
        f1 = s1 / count
        f2 = s2 / count
        bg = work(xs, -rs * rs * f2)
        dg = work(xs, -rs * (f1 + cc * f2))
        for k in range(Cg):
            c = g * Cg + k
            ac[c] = work(xs, rs * weight[c])
            bc[c] = bg
            dc[c] = dg
    if not _tiled(xs.itemsize, C):
        _input_grad_rows(xs, gs, dx[n], mx, ac, bc, dc)
    else:
        ts = tiles[n]
        for r in range(ts.shape[1] // C):
            for c in range(C):
                ts[0, r * C + c] = mx[c]
                ts[1, r * C + c] = ac[c]
                ts[2, r * C + c] = bc[c]
                ts[3, r * C + c] = dc[c]
        _input_grad_tiles(xs, gs, dx[n], ts)


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def _backward(x, dy, mean, rstd, weight, G, Cg, dx, dweight, dbias, serial):
    """dx into dx; dweight/dbias (weight's dtype) summed in float64 in sample order."""
    N, S, C = x.shape
    part_dw, part_db = np.empty((N, C)), np.empty((N, C))
    coef = work_empty(x, N * 6 * C)
    T = max(1, min(S, TILE_ELEMENTS // C)) * C if _tiled(x.itemsize, C) else 1
    tiles = work_empty(x, N * 4 * T).reshape(N, 4, T)
    if serial:
        for n in range(N):
            _backward_sample(n, x, dy, mean, rstd, weight, G, Cg, dx, part_dw, part_db, coef,
                             tiles)
    else:
        for n in prange(N):
            _backward_sample(n, x, dy, mean, rstd, weight, G, Cg, dx, part_dw, part_db, coef,
                             tiles)
    for c in range(C):  # loops, not array expressions: those would be parfors
        sw = 0.0
        sb = 0.0
        for n in range(N):
            sw += part_dw[n, c]
            sb += part_db[n, c]
        dweight[c] = sw
        dbias[c] = sb


def backward(x, dy, mean, rstd, weight, G, Cg):
    """Backward of forward on (N, S, C) arrays -> (dx (N, S, C), dweight, dbias), the
    gradients of weight's dtype, shape (C,)."""
    dx = _memory.empty_like(x)
    C = x.shape[2]
    dweight = np.empty(C, weight.dtype)  # allocated here: cheaper than returned arrays
    dbias = np.empty(C, weight.dtype)
    _backward(bits(x), bits(dy), mean, rstd, weight, G, Cg, bits(dx), dweight,
              dbias, serial(x))
    return dx, dweight, dbias
