"""GPU kernels for 2-D max and average pooling with padding and ceil_mode (PyTorch's rules);
see numbanorm/cpu/pool.py for the window arithmetic. One thread per output element forward, one
per input element backward (the sum over the windows containing it: no atomics)."""
import numpy as np
from numba import cuda

from .._shapes import avg_pool_divisor
from ._common import device_array, float_signatures, launch_1d, size, unravel4

KERNEL_SIGNATURES = {}  # kernel name -> argument signatures (see _common)


@cuda.jit
def _max_forward(x, kh, kw, sh, sw, ph, pw, y, idx):
    N, C, H, W = x.shape
    _, _, OH, OW = y.shape
    for e in range(cuda.grid(1), N * C * OH * OW, cuda.gridsize(1)):
        n, c, oh, ow = unravel4(e, C, OH, OW)
        h0 = oh * sh - ph
        w0 = ow * sw - pw
        hs = max(h0, 0)
        ws = max(w0, 0)
        best = x[n, c, hs, ws]
        arg = hs * W + ws
        for h in range(hs, min(h0 + kh, H)):
            for w in range(ws, min(w0 + kw, W)):
                v = x[n, c, h, w]
                if v > best or v != v:  # ties: the first maximum; NaN: the last NaN wins
                    best = v
                    arg = h * W + w
        y[n, c, oh, ow] = best
        idx[n, c, oh, ow] = arg


KERNEL_SIGNATURES["_max_forward"] = float_signatures(
    "{f}[:, :, :, ::1], int64, int64, int64, int64, int64, int64, {f}[:, :, :, ::1], int32[:, :, :, ::1]")


@cuda.jit
def _pool_backward(dy, idx, kh, kw, sh, sw, ph, pw, is_max, count_include_pad, dx):
    """One thread per dx element: the sum over the windows that contain it (max: only those
    whose argmax it is; avg: dy / divisor)."""
    N, C, H, W = dx.shape
    _, _, OH, OW = dy.shape
    for e in range(cuda.grid(1), N * C * H * W, cuda.gridsize(1)):
        n, c, h, w = unravel4(e, C, H, W)
        # windows oh with oh*sh - ph <= h < oh*sh - ph + kh
        oh_lo = max(0, (h + ph - kh) // sh + 1) if h + ph >= kh else 0
        ow_lo = max(0, (w + pw - kw) // sw + 1) if w + pw >= kw else 0
        oh_hi = min(OH - 1, (h + ph) // sh)
        ow_hi = min(OW - 1, (w + pw) // sw)
        acc = 0.0
        for oh in range(oh_lo, oh_hi + 1):
            for ow in range(ow_lo, ow_hi + 1):
                if is_max:
                    if idx[n, c, oh, ow] == h * W + w:
                        acc += dy[n, c, oh, ow]
                else:
                    acc += dy[n, c, oh, ow] / avg_pool_divisor(oh, ow, kh, kw, sh, sw, ph, pw, H, W,
                                                               count_include_pad)
        dx[n, c, h, w] = acc


KERNEL_SIGNATURES["_pool_backward"] = float_signatures(
    "{f}[:, :, :, ::1], int32[:, :, :, ::1], int64, int64, int64, int64, int64, int64, "
    "boolean, boolean, {f}[:, :, :, ::1]")


@cuda.jit
def _avg_forward(x, kh, kw, sh, sw, ph, pw, count_include_pad, y):
    N, C, H, W = x.shape
    _, _, OH, OW = y.shape
    for e in range(cuda.grid(1), N * C * OH * OW, cuda.gridsize(1)):
        n, c, oh, ow = unravel4(e, C, OH, OW)
        h0 = oh * sh - ph
        w0 = ow * sw - pw
        acc = 0.0
        for h in range(max(h0, 0), min(h0 + kh, H)):
            for w in range(max(w0, 0), min(w0 + kw, W)):
                acc += x[n, c, h, w]
        y[n, c, oh, ow] = acc / avg_pool_divisor(oh, ow, kh, kw, sh, sw, ph, pw, H, W, count_include_pad)


KERNEL_SIGNATURES["_avg_forward"] = float_signatures(
    "{f}[:, :, :, ::1], int64, int64, int64, int64, int64, int64, boolean, {f}[:, :, :, ::1]")


_PLACEHOLDER = {}


def _no_idx():
    """A 4-D int32 placeholder for the unused idx argument of the average-pool backward."""
    if "idx" not in _PLACEHOLDER:
        _PLACEHOLDER["idx"] = cuda.device_array((1, 1, 1, 1), np.int32)  # never read: unbound
    return _PLACEHOLDER["idx"]


def max_forward(x, kernel, stride, padding, out_hw):
    shape = tuple(x.shape[:2]) + tuple(out_hw)
    y = device_array(shape, x.dtype)
    idx = device_array(shape, np.int32)
    launch_1d(_max_forward, size(shape), x, kernel[0], kernel[1], stride[0], stride[1], padding[0],
            padding[1], y, idx)
    return y, idx


def max_backward(dy, idx, x_shape, kernel, stride, padding):
    dx = device_array(tuple(x_shape), dy.dtype)
    launch_1d(_pool_backward, size(x_shape), dy, idx, kernel[0], kernel[1], stride[0], stride[1],
            padding[0], padding[1], True, True, dx)
    return dx


def avg_forward(x, kernel, stride, padding, out_hw, count_include_pad):
    shape = tuple(x.shape[:2]) + tuple(out_hw)
    y = device_array(shape, x.dtype)
    launch_1d(_avg_forward, size(shape), x, kernel[0], kernel[1], stride[0], stride[1], padding[0],
            padding[1], count_include_pad, y)
    return y


def avg_backward(dy, x_shape, kernel, stride, padding, count_include_pad):
    dx = device_array(tuple(x_shape), dy.dtype)
    launch_1d(_pool_backward, size(x_shape), dy, _no_idx(), kernel[0], kernel[1], stride[0], stride[1],
            padding[0], padding[1], False, count_include_pad, dx)
    return dx
