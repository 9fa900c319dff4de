"""CPU kernels for 2-D convolution (cross-correlation, as PyTorch) with stride, zero padding,
dilation and groups: im2col + float32 BLAS gemms.

Shape legend: x (N, C, H, W), weight (O, C/G, KH, KW) for G groups, y (N, O, OH, OW),
P = OH * OW, K = C * KH * KW (Kg = K / G per group, Og = O / G).
  cols (N, K [+1], P): cols[n, (c*KH + i)*KW + j, oh*OW + ow] =
      x[n, c, oh*sh - ph + i*dh, ow*sw - pw + j*dw]   (0 in the padding)
  Rows of group g are [g*Kg, (g+1)*Kg). With G == 1 and a bias, row K is all ones, so one gemm
  y[n] = [weight | bias] @ cols[n] also adds the bias.
Backward: dweight[g] = sum_n dy[n, g] @ cols[n, g].T (float64 sum over n in ascending order);
  dcols = weight[g].T @ dy[n, g]; col2im adds dcols back into dx, one task per (n, c) plane.
G == 1 with stride 1 (the usual CNN layer) takes fused kernels instead (_fused_forward, _fused_backward): per
sample, its columns are built in cache in a "wide" layout and fed straight to BLAS, so the
(N, K, P) cols are never written to memory and the forward keeps x, not cols, for the backward.
"""
import numpy as np
from numba import njit, prange

from .._shapes import conv_dims
from . import _blas, _cblas, _memory
from ._cblas import NO_TRANS, TRANS, gemm
from ._parallel import FASTMATH

_SUM_CHUNK = 2048  # columns summed at a time by _batch_sum (a 16 KiB float64 accumulator)


@njit(cache=True)
def _valid_range(O, stride, pad, offset, size):
    """[lo, hi): the output positions o with 0 <= o * stride - pad + offset < size."""
    lo = 0
    if pad - offset > 0:
        lo = min(O, (pad - offset + stride - 1) // stride)
    top = size - 1 + pad - offset
    hi = 0 if top < 0 else min(O, top // stride + 1)
    return lo, max(lo, hi)


@njit(cache=True)
def _copy_row(src, lo, hi, sw, off, out):
    """out[k] = src[(lo + k) * sw + off] for k < hi - lo (a contiguous copy when sw == 1)."""
    if sw == 1:
        s = src[lo + off:hi + off]
        for k in range(out.size):
            out[k] = s[k]
    else:
        for k in range(out.size):
            out[k] = src[(lo + k) * sw + off]


@njit(cache=True)
def _add_row(src, lo, sw, off, dst):
    """dst[(lo + k) * sw + off] += src[k] (contiguous when sw == 1): _copy_row's adjoint."""
    if sw == 1:
        d = dst[lo + off:lo + off + src.size]
        for k in range(src.size):
            d[k] += src[k]
    else:
        for k in range(src.size):
            dst[(lo + k) * sw + off] += src[k]


@njit(cache=True)
def _batch_sum(parts, out):
    """out[j] = sum over n of parts[n, j], accumulated in float64 in ascending n; parts (N, M),
    out (M,). Serial on purpose: it sits between two gemms, and waking Numba's pool here leaves
    its worker spinning on the core the next gemm's second thread needs (conv2 backward under
    the bench lock, min of 40: 31.7 ms with a parallel sum, 28.7 ms serial)."""
    for j0 in range(0, parts.shape[1], _SUM_CHUNK):
        j1 = min(parts.shape[1], j0 + _SUM_CHUNK)
        acc = np.zeros(j1 - j0, np.float64)
        for n in range(parts.shape[0]):
            p = parts[n, j0:j1]
            for j in range(acc.size):
                acc[j] += p[j]
        o = out[j0:j1]
        for j in range(acc.size):
            o[j] = acc[j]


def _sum_over_batch(parts):
    """parts (N, ...) -> their float64 sum over N, rounded to parts' dtype, shape parts.shape[1:]."""
    flat = parts.reshape(parts.shape[0], -1)
    out = np.empty(flat.shape[1], parts.dtype)
    _batch_sum(flat, out)
    return out.reshape(parts.shape[1:])


@njit(parallel=True, cache=True)
def _im2col(x, KH, KW, sh, sw, ph, pw, dh, dw, OH, OW, cols):
    """Fill cols (see the module docstring); a row K, when cols has one, is all ones."""
    N, C, H, W = x.shape
    K = C * KH * KW
    for t in prange(N * C):
        n = t // C
        c = t % C
        if c == 0 and cols.shape[1] > K:
            cols[n, K, :] = 1.0
        for i in range(KH):
            for j in range(KW):
                row = cols[n, (c * KH + i) * KW + j]
                lo, hi = _valid_range(OW, sw, pw, j * dw, W)
                off = j * dw - pw
                for oh in range(OH):
                    ih = oh * sh - ph + i * dh
                    out = row[oh * OW:(oh + 1) * OW]
                    if ih < 0 or ih >= H:
                        out[:] = 0.0
                        continue
                    src = x[n, c, ih]
                    out[:lo] = 0.0
                    _copy_row(src, lo, hi, sw, off, out[lo:hi])
                    out[hi:] = 0.0


@njit(cache=True)
def _col2im_plane(dcols, c, KH, KW, sh, sw, ph, pw, dh, dw, OH, OW, plane):
    """plane (H, W) = the sum of the dcols (K, P) entries im2col read from channel c."""
    H, W = plane.shape
    plane[:, :] = 0.0
    for i in range(KH):
        for j in range(KW):
            row = dcols[(c * KH + i) * KW + j]
            lo, hi = _valid_range(OW, sw, pw, j * dw, W)
            off = j * dw - pw
            for oh in range(OH):
                ih = oh * sh - ph + i * dh
                if ih < 0 or ih >= H:
                    continue
                _add_row(row[oh * OW + lo:oh * OW + hi], lo, sw, off, plane[ih])


@njit(parallel=True, cache=True)
def _col2im(dcols, KH, KW, sh, sw, ph, pw, dh, dw, OH, OW, dx):
    """dx[n, c] = the sum of the dcols entries im2col read from it; one task per (n, c) plane."""
    N, C, H, W = dx.shape
    for t in prange(N * C):
        _col2im_plane(dcols[t // C], t % C, KH, KW, sh, sw, ph, pw, dh, dw, OH, OW, dx[t // C, t % C])


# ---------------------------------------------------------------- stride 1: the "wide" layout
# For stride 1 the sample's columns are taken from a zero-padded copy xp (C, Hp, Wp) of x[n]
# (Hp = H + 2*ph, Wp = W + 2*pw) in a wide layout with Q = OH * Wp columns: column
# q = oh*Wp + ow, where ow < OW is an output position and the other Wp - OW columns of each row
# are spare. Row (c, i, j) is then ONE contiguous run of xp, flat[c*Hp*Wp + i*dh*Wp + j*dw + q],
# instead of OH short runs, and col2im adds one contiguous run back. The gemm does Q/P - 1
# (here 2/14) more work on the spare columns; the forward drops them, the backward gives them
# a zero dy (so they add nothing to dweight, and exactly 0 to dx).
# Per sample, the columns are built in cache into a (K, Q) buffer of the thread and fed straight
# to BLAS (numbanorm/cpu/_cblas.py gemm), so the batch's cols are never written to memory (the
# backward rebuilds them from x); the batch runs in two fixed halves on Numba's pool.


@njit(cache=True)
def _pad_sample(xn, ph, pw, xp):
    """The interior of the zero-bordered flat xp (C*Hp*Wp + spare) = xn (C, H, W)."""
    C, H, W = xn.shape
    Wp = W + 2 * pw
    HWp = (H + 2 * ph) * Wp
    for c in range(C):
        for h in range(H):
            d = xp[c * HWp + (h + ph) * Wp + pw:c * HWp + (h + ph) * Wp + pw + W]
            s = xn[c, h]
            for w in range(W):
                d[w] = s[w]


@njit(cache=True)
def _wide_cols(xp, C, HWp, Wp, KH, KW, dh, dw, cols):
    """cols (K, Q): row (c*KH + i)*KW + j = xp[c*HWp + i*dh*Wp + j*dw:][:Q]."""
    Q = cols.shape[1]
    for c in range(C):
        for i in range(KH):
            for j in range(KW):
                s = xp[c * HWp + i * dh * Wp + j * dw:c * HWp + i * dh * Wp + j * dw + Q]
                d = cols[(c * KH + i) * KW + j]
                for q in range(Q):
                    d[q] = s[q]


@njit(cache=True)
def _wide_col2im(dcols, C, HWp, Wp, KH, KW, dh, dw, dxp):
    """_wide_cols' adjoint: dxp = 0, then each row of dcols (K, Q) added back to its run of dxp."""
    Q = dcols.shape[1]
    dxp[:] = 0.0
    for c in range(C):
        for i in range(KH):
            for j in range(KW):
                d = dxp[c * HWp + i * dh * Wp + j * dw:c * HWp + i * dh * Wp + j * dw + Q]
                s = dcols[(c * KH + i) * KW + j]
                for q in range(Q):
                    d[q] += s[q]


@njit(parallel=True, cache=True)
def _fused_forward(x, w2, bias, KH, KW, ph, pw, dh, dw, OH, OW, y):
    """y[n] = w2 @ cols(x[n]) (+ bias[o] on row o when bias.size)."""
    N, C, H, W = x.shape
    O, K = w2.shape
    Wp = W + 2 * pw
    HWp = (H + 2 * ph) * Wp
    Q = OH * Wp
    half = N // 2
    for t in prange(2):  # fixed halves: the same bits whatever the thread count
        xp = np.zeros(C * HWp + Wp + KW * dw, w2.dtype)  # zero border, spare tail
        cols = np.empty((K, Q), w2.dtype)
        yw = np.empty((O, Q), w2.dtype)
        for n in range(t * half, half if t == 0 else N):
            _pad_sample(x[n], ph, pw, xp)
            _wide_cols(xp, C, HWp, Wp, KH, KW, dh, dw, cols)
            gemm(NO_TRANS, NO_TRANS, O, Q, K, w2.ctypes.data, K, cols.ctypes.data, Q, yw.ctypes.data,
                 Q, w2)
            for o in range(O):
                b = bias[o] if bias.size else w2.dtype.type(0.0)
                for oh in range(OH):
                    s = yw[o, oh * Wp:oh * Wp + OW]
                    d = y[n, o, oh]
                    for ow in range(OW):
                        d[ow] = s[ow] + b

@njit(parallel=True, cache=True, fastmath=FASTMATH)
def _fused_backward(x, w2, dy, KH, KW, ph, pw, dh, dw, need_dx, need_params, dx, dw_acc, db_acc):
    """dx[n] = col2im(w2.T @ dy[n]) when need_dx; when need_params, dw_acc[t] (O, K) and
    db_acc[t] (O,) = float64 sums over half t of the batch, in ascending n, of
    dy[n] @ cols(x[n]).T and of dy[n]'s rows (db_acc of size 0: no bias)."""
    N, C, H, W = x.shape
    O, K = w2.shape
    OH, OW = dy.shape[2], dy.shape[3]
    Wp = W + 2 * pw
    HWp = (H + 2 * ph) * Wp
    Q = OH * Wp
    half = N // 2
    for t in prange(2):
        xp = np.zeros(C * HWp + Wp + KW * dw, w2.dtype)
        dxp = np.empty_like(xp)  # the padded dx of a sample
        cols = np.empty((K, Q), w2.dtype)  # columns, then dcols
        dyw = np.zeros((O, Q), w2.dtype)  # its spare columns stay 0
        part = np.empty((O, K), w2.dtype)
        acc = dw_acc[t]
        bacc = db_acc[t]
        acc[:, :] = 0.0
        bacc[:] = 0.0
        for n in range(t * half, half if t == 0 else N):
            for o in range(O):
                total = 0.0
                for oh in range(OH):
                    src = dy[n, o, oh]
                    d = dyw[o, oh * Wp:oh * Wp + OW]
                    for ow in range(OW):
                        d[ow] = src[ow]
                    if bacc.size:  # a float64 sum LLVM vectorises (FASTMATH reassoc)
                        for ow in range(OW):
                            total += src[ow]
                if bacc.size:
                    bacc[o] += total
            if need_params:
                _pad_sample(x[n], ph, pw, xp)
                _wide_cols(xp, C, HWp, Wp, KH, KW, dh, dw, cols)
                gemm(NO_TRANS, TRANS, O, K, Q, dyw.ctypes.data, Q, cols.ctypes.data, Q,
                     part.ctypes.data, K, w2)
                for o in range(O):
                    ar = acc[o]
                    pr = part[o]
                    for k in range(K):
                        ar[k] += pr[k]
            if need_dx:
                gemm(TRANS, NO_TRANS, K, Q, O, w2.ctypes.data, K, dyw.ctypes.data, Q,
                     cols.ctypes.data, Q, w2)
                _wide_col2im(cols, C, HWp, Wp, KH, KW, dh, dw, dxp)
                for c in range(C):
                    for h in range(H):
                        s = dxp[c * HWp + (h + ph) * Wp + pw:c * HWp + (h + ph) * Wp + pw + W]
                        d = dx[n, c, h]
                        for w in range(W):
                            d[w] = s[w]


def forward(x, weight, bias, stride, padding, dilation, groups, out_hw):
    """-> (y (N, O, OH, OW), kept): kept is what backward needs, x itself on the fused path
    (G == 1 and stride 1 with _cblas.AVAILABLE: _fused_forward), else the cols (N, K [+1], P)."""
    N = x.shape[0]
    O, KH, KW, K, P, Og, Kg = conv_dims(weight.shape, out_hw, groups)
    OH, OW = out_hw
    G = groups
    geometry = (KH, KW, stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1],
                OH, OW)
    y = _memory.empty((N, O, OH, OW), x.dtype)
    if G == 1 and stride == (1, 1) and _cblas.AVAILABLE:
        b = np.empty(0, x.dtype) if bias is None else np.ascontiguousarray(bias)
        with _blas.one_blas_thread():
            _fused_forward(x, np.ascontiguousarray(weight.reshape(O, K)), b, KH, KW, padding[0],
                       padding[1], dilation[0], dilation[1], OH, OW, y)
        return y, x
    fused_bias = bias is not None and G == 1
    cols = _memory.empty((N, K + fused_bias, P), x.dtype)
    _im2col(x, *geometry, cols)
    if G == 1:
        w2 = weight.reshape(O, K)
        if fused_bias:
            w2 = np.concatenate((w2, bias.reshape(O, 1)), axis=1)
        _blas.matmul(w2, cols, y.reshape(N, O, P))
    else:
        _blas.matmul(weight.reshape(1, G, Og, Kg), cols.reshape(N, G, Kg, P), y.reshape(N, G, Og, P))
        if bias is not None:
            y.reshape(N, O, P)[...] += bias.reshape(1, O, 1)
    return y, cols


def backward(dy, kept, weight, x_shape, stride, padding, dilation, groups, has_bias, need_dx,
             need_params):
    """dy (N, O, OH, OW), kept from forward -> (dx (N, C, H, W) or None, dweight or None,
    dbias or None)."""
    N, OH, OW = dy.shape[0], dy.shape[2], dy.shape[3]
    O, KH, KW, K, P, Og, Kg = conv_dims(weight.shape, (OH, OW), groups)
    G = groups
    dy3 = dy.reshape(N, O, P)
    geometry = (KH, KW, stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1],
                OH, OW)
    dweight = dbias = dx = None
    if kept.ndim == 4:  # the fused path kept x
        dx = _memory.empty(x_shape, dy.dtype) if need_dx else np.empty((0, 0, 0, 0), dy.dtype)
        dw_acc = np.empty((2, O, K), np.float64)
        db_acc = np.empty((2, O if has_bias and need_params else 0), np.float64)
        with _blas.one_blas_thread():
            _fused_backward(kept, np.ascontiguousarray(weight.reshape(O, K)), dy, KH, KW, padding[0],
                            padding[1], dilation[0], dilation[1], need_dx, need_params, dx, dw_acc,
                            db_acc)
        if need_params:
            dweight = (dw_acc[0] + dw_acc[1]).astype(dy.dtype).reshape(weight.shape)
            dbias = (db_acc[0] + db_acc[1]).astype(dy.dtype) if has_bias else None
        return (dx if need_dx else None), dweight, dbias
    cols = kept
    if need_params:
        if G == 1:
            # per sample cols[n] @ dy[n].T (this operand order runs faster in OpenBLAS), then a
            # float64 sum over the batch in ascending n (_batch_sum)
            parts = _blas.matmul(cols, dy3.transpose(0, 2, 1), _memory.empty((N, cols.shape[1], O), dy.dtype))
            dwT = _sum_over_batch(parts)
            dweight = np.ascontiguousarray(dwT[:K].T).reshape(weight.shape)
            if has_bias:
                dbias = np.ascontiguousarray(dwT[K]) if cols.shape[1] > K else \
                    dy3.sum(axis=(0, 2), dtype=np.float64).astype(dy.dtype)
        else:
            parts = _blas.matmul(dy3.reshape(N, G, Og, P), cols.reshape(N, G, Kg, P).transpose(0, 1, 3, 2),
                                 np.empty((N, G, Og, Kg), dy.dtype))
            dweight = _sum_over_batch(parts).reshape(weight.shape)
            if has_bias:
                dbias = dy3.sum(axis=(0, 2), dtype=np.float64).astype(dy.dtype)
    if need_dx:
        dcols = _memory.empty((N, K, P), dy.dtype)
        _blas.matmul(weight.reshape(1, G, Og, Kg).transpose(0, 1, 3, 2), dy3.reshape(N, G, Og, P),
                     dcols.reshape(N, G, Kg, P))
        dx = _memory.empty(x_shape, dy.dtype)
        _col2im(dcols, *geometry, dx)
    return dx, dweight, dbias
