"""CPU kernels for element-wise layers: ReLU and dropout, on flat C-contiguous arrays of any
shape. The per-element math is numbanorm/_pointwise.py (shared with the GPU backend). Also
the fused in-place sum of a layer's two small gradients (add_pair_)."""
import numpy as np
from numba import njit, prange

from .._pointwise import relu_at, relu_backward_at, dropout_at, dropout_backward_at
from . import _memory
from ._parallel import STREAM_SERIAL_BELOW, serial


@njit(parallel=True, cache=True)
def _relu(x, y, serial):
    if serial:
        for i in range(x.size):
            relu_at(i, x, y)
    else:
        for i in prange(x.size):
            relu_at(i, x, y)


@njit(parallel=True, cache=True)
def _relu_backward(dy, y, dx, serial):
    if serial:
        for i in range(dy.size):
            relu_backward_at(i, dy, y, dx)
    else:
        for i in prange(dy.size):
            relu_backward_at(i, dy, y, dx)


def relu_forward(x):
    """y = max(x, 0) (x C-contiguous, any shape)."""
    y = _memory.empty_like(x)
    _relu(x.reshape(-1), y.reshape(-1), serial(x, STREAM_SERIAL_BELOW))
    return y


def relu_backward(dy, y):
    """dx = dy where the forward output y > 0, else 0."""
    dx = _memory.empty_like(dy)
    _relu_backward(dy.reshape(-1), y.reshape(-1), dx.reshape(-1), serial(dy, STREAM_SERIAL_BELOW))
    return dx


@njit(parallel=True, cache=True)
def _dropout(x, p, scale, seed, y, mask, serial):
    if serial:
        for i in range(x.size):
            dropout_at(i, x, p, scale, seed, y, mask)
    else:
        for i in prange(x.size):
            dropout_at(i, x, p, scale, seed, y, mask)


@njit(parallel=True, cache=True)
def _dropout_backward(dy, mask, scale, dx, serial):
    if serial:
        for i in range(dy.size):
            dropout_backward_at(i, dy, mask, scale, dx)
    else:
        for i in prange(dy.size):
            dropout_backward_at(i, dy, mask, scale, dx)


def dropout_forward(x, p, seed):
    """Zero each element with probability p and scale the rest by 1/(1-p).
    Returns (y, mask uint8 of x's shape); seed a uint64 (the same mask on CPU and GPU)."""
    y = _memory.empty_like(x)
    mask = _memory.empty(x.shape, np.uint8)
    _dropout(x.reshape(-1), p, 1.0 / (1.0 - p), np.uint64(seed), y.reshape(-1), mask.reshape(-1),
             serial(x, STREAM_SERIAL_BELOW))
    return y, mask


def dropout_backward(dy, mask, p):
    dx = _memory.empty_like(dy)
    _dropout_backward(dy.reshape(-1), mask.reshape(-1), 1.0 / (1.0 - p), dx.reshape(-1),
                      serial(dy, STREAM_SERIAL_BELOW))
    return dx


@njit(cache=True)
def _add_pair(dst, src, dst2, src2):
    dst += src
    dst2 += src2


_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def add_pair_(dst, src, dst2, src2):
    """dst += src and dst2 += src2 in place (a norm layer's weight and bias gradients): one
    compiled call when all four arrays have one float32/float64 dtype and each pair one shape
    (~0.3 us less per backward than two np.add at the small calls; the same float sums), else
    np.add, with its broadcasting and errors."""
    dtype = dst.dtype
    if (dtype in _FLOATS and src.dtype is dtype and dst2.dtype is dtype and src2.dtype is dtype
            and dst.shape == src.shape and dst2.shape == src2.shape):
        _add_pair(dst, src, dst2, src2)
    else:
        np.add(dst, src, out=dst)
        np.add(dst2, src2, out=dst2)
