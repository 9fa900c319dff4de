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
"""
import numpy as np
from numba import njit, prange

from .._shapes import conv_dims
from . import _blas, _cblas, _memory

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


_dx_kernels = {}


def _dx_kernel(dtype):
    """For G == 1: an njit kernel doing, per sample, dcols = weight.T @ dy[n] (one BLAS gemm into
    a (K, P) buffer of the thread) then its col2im into dx[n], the batch in two fixed halves on
    Numba's pool; or None without _cblas's BLAS. Same bits as the batched gemm + _col2im, without
    writing and re-reading the (N, K, P) dcols."""
    if dtype not in _dx_kernels:
        gemm = _cblas.gemm_function(dtype)
        _dx_kernels[dtype] = None if gemm is None else _make_dx_kernel(gemm, np.dtype(dtype).type)
    return _dx_kernels[dtype]


def _make_dx_kernel(gemm, scalar):
    @njit(parallel=True)
    def kernel(w2, dy3, KH, KW, sh, sw, ph, pw, dh, dw, OH, OW, dx):
        O, K = w2.shape
        N, _, P = dy3.shape
        half = N // 2
        for t in prange(2):
            dcols = np.empty((K, P), w2.dtype)
            for n in range(t * half, half if t == 0 else N):
                gemm(101, 112, 111, K, P, O, scalar(1.0), w2.ctypes.data, K, dy3[n].ctypes.data, P,
                     scalar(0.0), dcols.ctypes.data, P)
                for c in range(dx.shape[1]):
                    _col2im_plane(dcols, c, KH, KW, sh, sw, ph, pw, dh, dw, OH, OW, dx[n, c])
    return kernel


def forward(x, weight, bias, stride, padding, dilation, groups, out_hw):
    """-> (y (N, O, OH, OW), cols (N, K [+1], P) for the backward)."""
    N = x.shape[0]
    O, KH, KW, K, P, Og, Kg = conv_dims(weight.shape, out_hw, groups)
    OH, OW = out_hw
    G = groups
    fused_bias = bias is not None and G == 1
    cols = _memory.empty((N, K + fused_bias, P), x.dtype)
    _im2col(x, KH, KW, stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1],
            OH, OW, cols)
    y = _memory.empty((N, O, OH, OW), x.dtype)
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


def backward(dy, cols, weight, x_shape, stride, padding, dilation, groups, has_bias, need_dx,
             need_params):
    """dy (N, O, OH, OW) -> (dx (N, C, H, W) or None, dweight or None, dbias or None)."""
    N, OH, OW = dy.shape[0], dy.shape[2], dy.shape[3]
    O, KH, KW, K, P, Og, Kg = conv_dims(weight.shape, (OH, OW), groups)
    G = groups
    dy3 = dy.reshape(N, O, P)
    dweight = dbias = dx = None
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
    geometry = (KH, KW, stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1],
                OH, OW)
    fused_dx = _dx_kernel(dy.dtype) if need_dx and G == 1 and N >= 2 else None
    if fused_dx is not None:
        dx = _memory.empty(x_shape, dy.dtype)
        with _blas.one_blas_thread():
            fused_dx(np.ascontiguousarray(weight.reshape(O, K)), dy3, *geometry, dx)
    elif need_dx:
        dcols = _memory.empty((N, K, P), dy.dtype)
        _blas.matmul(weight.reshape(1, G, Og, Kg).transpose(0, 1, 3, 2), dy3.reshape(N, G, Og, P),
                     dcols.reshape(N, G, Kg, P))
        dx = _memory.empty(x_shape, dy.dtype)
        _col2im(dcols, *geometry, dx)
    return dx, dweight, dbias
