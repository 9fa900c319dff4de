"""CPU kernels for GroupNorm and InstanceNorm on channels-last memory (NLC, NHWC, NDHWC).

Shape legend: x is a C-contiguous (N, S, C) array, the memory of an (N, C, *spatial) input laid
out channels-last, S = prod(spatial), C = G * Cg. Statistics are row_norm's: per (sample n,
group g) over the S * Cg values x[n, :, g*Cg:(g+1)*Cg], returned as float64 (N*G,) arrays
indexed n * G + g. InstanceNorm is G = C, Cg = 1.

In memory each sample is an (S, C) matrix: per-column float64 sums (numbanorm.cpu._columns)
added up over each group's Cg adjacent columns give the group statistics. One task per sample
makes both passes over it back to back (the second reads it from cache), in a fixed order;
dweight/dbias are per-sample partials summed in sample order: bitwise the same results for
any thread count. As in row_norm, the elementwise passes run in x's dtype on (x - m_x), m_x
the group mean rounded to x's dtype, and the rounding is folded into the offset, so data with a
large mean keeps float64-reference accuracy.
"""
import numpy as np
from numba import njit, prange

from . import _columns, _memory
from ._parallel import FASTMATH, serial


@njit(cache=True, fastmath=FASTMATH, inline="always")
def _forward_sample(n, x, weight, bias, G, Cg, eps, y, mean, rstd, a1, a2, center, m_x, scale,
                    offset):
    """Sample n: statistics of its G groups into mean/rstd[n*G:(n+1)*G], then y[n].
    a1, a2, center (float64) and m_x, scale, offset (x's dtype): (N, C) scratch, row n used."""
    S, C = x.shape[1], x.shape[2]
    xs = x[n]
    s1, s2, ctr = a1[n], a2[n], center[n]
    for c in range(C):  # loops, not `[:] = 0`: parallel=True would make those parfors
        ctr[c] = xs[0, (c // Cg) * Cg]  # the group's first value: the shift of its sums
        s1[c] = 0.0
        s2[c] = 0.0
    _columns.add_moments(xs, ctr, s1, s2)
    count = S * Cg
    mx, sc, off = m_x[n], scale[n], offset[n]
    for g in range(G):
        t1 = 0.0
        t2 = 0.0
        for k in range(Cg):
            t1 += s1[g * Cg + k]
            t2 += s2[g * Cg + k]
        d_mean = t1 / count
        m = ctr[g * Cg] + d_mean
        rs = 1.0 / np.sqrt(max(t2 / count - d_mean * d_mean, 0.0) + eps)
        mean[n * G + g] = m
        rstd[n * G + g] = rs
        for k in range(Cg):
            c = g * Cg + k
            mx[c] = m
            w = np.float64(weight[c])
            # y = ((x - m_x) * rs + (m_x - m) * rs) * w + bias
            sc[c] = rs * w
            off[c] = (np.float64(mx[c]) - m) * rs * w + bias[c]
    _columns.affine(xs, y[n], mx, sc, off)


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def _forward(x, weight, bias, G, Cg, eps, y, serial):
    N, S, C = x.shape
    mean = np.empty(N * G)
    rstd = np.empty(N * G)
    a1, a2, center = np.empty((N, C)), np.empty((N, C)), np.empty((N, C))
    m_x, scale, offset = (np.empty((N, C), x.dtype), np.empty((N, C), x.dtype),
                          np.empty((N, C), x.dtype))
    if serial:
        for n in range(N):
            _forward_sample(n, x, weight, bias, G, Cg, eps, y, mean, rstd, a1, a2, center, m_x,
                            scale, offset)
    else:
        for n in prange(N):
            _forward_sample(n, x, weight, bias, G, Cg, eps, y, mean, rstd, a1, a2, center, m_x,
                            scale, offset)
    return mean, rstd


def forward(x, weight, bias, G, Cg, eps):
    """GroupNorm/InstanceNorm forward on an (N, S, C) channels-last array. weight/bias: (C,)
    arrays of x's dtype (ones/zeros when absent). Returns (y (N, S, C), mean, rstd), the
    statistics float64 of shape (N*G,)."""
    y = _memory.empty_like(x)
    mean, rstd = _forward(x, weight, bias, G, Cg, eps, y, serial(x))
    return y, mean, rstd


@njit(cache=True, fastmath=FASTMATH, inline="always")
def _backward_sample(n, x, dy, mean, rstd, weight, G, Cg, dx, part_dw, part_db, m_x, a, b, d):
    """Sample n: dx[n], and its partial dweight/dbias (float64) in part_dw[n] / part_db[n].
    m_x, a, b, d: (N, C) scratch in x's dtype, row n used."""
    S, C = x.shape[1], x.shape[2]
    xs, gs = x[n], dy[n]
    sg, sgx, mx = part_db[n], part_dw[n], m_x[n]
    for c in range(C):
        mx[c] = mean[n * G + c // Cg]
        sg[c] = 0.0
        sgx[c] = 0.0
    # per column: sum(dy) and sum(dy * (x - m_x))
    _columns.add_grad_moments(xs, gs, mx, sg, sgx)
    count = S * Cg
    ac, bc, dc = a[n], b[n], d[n]
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
        bg = -rs * rs * f2
        dg = -rs * (f1 + cc * f2)
        for k in range(Cg):
            c = g * Cg + k
            ac[c] = rs * weight[c]
            bc[c] = bg
            dc[c] = dg
    _columns.input_grad(xs, gs, dx[n], mx, ac, bc, dc)


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def _backward(x, dy, mean, rstd, weight, G, Cg, dx, serial):
    """dx into dx; returns (dweight, dbias) in weight's dtype, summed in float64 in sample order."""
    N, S, C = x.shape
    part_dw, part_db = np.empty((N, C)), np.empty((N, C))
    m_x, a, b, d = (np.empty((N, C), x.dtype), np.empty((N, C), x.dtype),
                    np.empty((N, C), x.dtype), np.empty((N, C), x.dtype))
    if serial:
        for n in range(N):
            _backward_sample(n, x, dy, mean, rstd, weight, G, Cg, dx, part_dw, part_db, m_x, a, b, d)
    else:
        for n in prange(N):
            _backward_sample(n, x, dy, mean, rstd, weight, G, Cg, dx, part_dw, part_db, m_x, a, b, d)
    dweight = np.empty(C, weight.dtype)
    dbias = np.empty(C, weight.dtype)
    for c in range(C):  # loops, not array expressions: those would be parfors
        sw = 0.0
        sb = 0.0
        for n in range(N):
            sw += part_dw[n, c]
            sb += part_db[n, c]
        dweight[c] = sw
        dbias[c] = sb
    return dweight, dbias


def backward(x, dy, mean, rstd, weight, G, Cg):
    """Backward of forward on (N, S, C) arrays -> (dx (N, S, C), dweight, dbias), the
    gradients of weight's dtype, shape (C,)."""
    dx = _memory.empty_like(x)
    dweight, dbias = _backward(x, dy, mean, rstd, weight, G, Cg, dx, serial(x))
    return dx, dweight, dbias
