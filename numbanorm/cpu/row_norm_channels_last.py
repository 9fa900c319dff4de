"""CPU kernels for GroupNorm and InstanceNorm on channels-last memory (NLC, NHWC, NDHWC).

Shape legend: x is a C-contiguous (N, S, C) array, the memory of an (N, C, *spatial) input laid
out channels-last, S = prod(spatial), C = G * Cg. Statistics are row_norm's: per (sample n,
group g) over the S * Cg values x[n, :, g*Cg:(g+1)*Cg], returned as float64 (N*G,) arrays
indexed n * G + g. InstanceNorm is G = C, Cg = 1. x, dy, y, dx are float32, float64 or 16-bit
data (uint16/int16 bits, converted as numbanorm.cpu.half does, float32 work type); weight/bias
are float32 for 16-bit data, else x's dtype.

One task per sample makes both passes over its (S, C) matrix back to back, in a fixed order;
dweight/dbias are per-sample partials summed in sample order: bitwise the same results for
any thread count. Both passes are numbanorm.cpu._panels' explicit vector loops (per-column
coefficients and sums held in registers while the rows stream past):
  Pass 1 (sums: the forward's moments, the backward's dy sums) shifts each value by a value of
  its column's group (exact in float32), sums in the work type over blocks of rows and adds
  each block into float64, so data with a large mean keeps float64-reference accuracy.
  Pass 2 (elementwise) runs, as in row_norm, in the work type on (x - m_x), m_x the group mean
  rounded to it, the rounding folded into the offset; it reads the sample back from L2.
Against the Numba loops they replace ((4, C) row blocks, prefetched), 1 thread, float32,
GroupNorm G = 32 (benchmarks/layout_dtype_ratios): (32, 64, 28, 28) forward 0.28 -> 0.21 ms,
backward 0.51 -> 0.33 ms (NCHW: 0.18 / 0.27); (64, 64, 56, 56) 4.0 -> 3.55 / 5.95 -> 4.95 ms
(NCHW: 3.0 / 4.9). Tried before and measured slower: tasks per (sample, block of whole groups)
walking strided row segments (branch rowcl, 2026-11-25: 1.15-4x slower).
"""
import numpy as np
from numba import njit, prange

from . import _memory, _panels
from ._parallel import FASTMATH, serial
from .half import bits, load, work, work_empty


@njit(cache=True, fastmath=FASTMATH, inline="always")
def _forward_sample(n, x, weight, bias, G, Cg, eps, y, mean, rstd, a1, a2, coef):
    """Sample n: statistics of its G groups into mean/rstd[n*G:(n+1)*G], then y[n].
    a1, a2: (N, C) float64 scratch; coef: (N*4*C,) scratch of the work type."""
    S, C = x.shape[1], x.shape[2]
    xs = x[n]
    k0 = 4 * C * n
    s1, s2, ctr = a1[n], a2[n], coef[k0:k0 + C]
    mx, sc, off = coef[k0 + C:k0 + 2 * C], coef[k0 + 2 * C:k0 + 3 * C], coef[k0 + 3 * C:k0 + 4 * C]
    for c in range(C):
        ctr[c] = load(xs, (0, (c // Cg) * Cg))  # the group's first value: the shift of its sums
        s1[c] = 0.0
        s2[c] = 0.0
    _panels.moment_sums(xs, ctr, s1, s2)
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
    _panels.affine(xs, y[n], mx, sc, off)


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def _forward(x, weight, bias, G, Cg, eps, y, mean, rstd, serial):
    N, S, C = x.shape
    a1, a2 = np.empty((N, C)), np.empty((N, C))
    coef = work_empty(x, N * 4 * C)
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
def _backward_sample(n, x, dy, mean, rstd, weight, G, Cg, dx, part_dw, part_db, coef):
    """Sample n: dx[n], and its partial dweight/dbias (float64) in part_dw[n] / part_db[n].
    coef: (N*4*C,) scratch of the work type."""
    S, C = x.shape[1], x.shape[2]
    xs, gs = x[n], dy[n]
    sg, sgx = part_db[n], part_dw[n]
    k0 = 4 * C * n
    mx, ac, bc, dc = (coef[k0:k0 + C], coef[k0 + C:k0 + 2 * C], coef[k0 + 2 * C:k0 + 3 * C],
                      coef[k0 + 3 * C:k0 + 4 * C])
    for c in range(C):
        mx[c] = work(xs, mean[n * G + c // Cg])
        sg[c] = 0.0
        sgx[c] = 0.0
    # per column: sum(dy) and sum(dy * (x - m_x))
    _panels.grad_sums(xs, gs, mx, sg, sgx)
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
    _panels.input_grad(xs, gs, dx[n], mx, ac, bc, dc)


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def _backward(x, dy, mean, rstd, weight, G, Cg, dx, dweight, dbias, serial):
    """dx into dx; dweight/dbias (weight's dtype) summed in float64 in sample order."""
    N, S, C = x.shape
    part_dw, part_db = np.empty((N, C)), np.empty((N, C))
    coef = work_empty(x, N * 4 * C)
    if serial:
        for n in range(N):
            _backward_sample(n, x, dy, mean, rstd, weight, G, Cg, dx, part_dw, part_db, coef)
    else:
        for n in prange(N):
            _backward_sample(n, x, dy, mean, rstd, weight, G, Cg, dx, part_dw, part_db, coef)
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
