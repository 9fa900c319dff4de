"""GPU kernels for element-wise layers: ReLU and dropout on flat device arrays of any shape.
The per-element math is numbanorm/_pointwise.py (shared with the CPU backend)."""
import warnings

import numpy as np
from numba import cuda

from .._pointwise import dropout_at, dropout_backward_at, relu_at, relu_backward_at
from ._common import device_array, flat, float_signatures, launch_1d, size

KERNEL_SIGNATURES = {}  # kernel name -> argument signatures (see _common)


@cuda.jit
def _relu(x, y):
    for i in range(cuda.grid(1), x.shape[0], cuda.gridsize(1)):
        relu_at(i, x, y)


KERNEL_SIGNATURES["_relu"] = float_signatures(
    "{f}[::1], {f}[::1]")


@cuda.jit
def _relu_backward(dy, y, dx):
    for i in range(cuda.grid(1), dy.shape[0], cuda.gridsize(1)):
        relu_backward_at(i, dy, y, dx)


KERNEL_SIGNATURES["_relu_backward"] = float_signatures(
    "{f}[::1], {f}[::1], {f}[::1]")


@cuda.jit
def _dropout(x, p, scale, seed, y, mask):
    for i in range(cuda.grid(1), x.shape[0], cuda.gridsize(1)):
        dropout_at(i, x, p, scale, seed, y, mask)


KERNEL_SIGNATURES["_dropout"] = float_signatures(
    "{f}[::1], float64, float64, uint64, {f}[::1], uint8[::1]")


@cuda.jit
def _dropout_backward(dy, mask, scale, dx):
    for i in range(cuda.grid(1), dy.shape[0], cuda.gridsize(1)):
        dropout_backward_at(i, dy, mask, scale, dx)


KERNEL_SIGNATURES["_dropout_backward"] = float_signatures(
    "{f}[::1], uint8[::1], float64, {f}[::1]")


def _launch(kernel, n, *args):
    with warnings.catch_warnings():  # the simulator runs the hash's uint64 math as NumPy
        warnings.filterwarnings("ignore", "overflow encountered", RuntimeWarning)
        launch_1d(kernel, n, *args)


def relu_forward(x):
    y = device_array(tuple(x.shape), x.dtype)
    _launch(_relu, size(x.shape), flat(x), flat(y))
    return y


def relu_backward(dy, y):
    dx = device_array(tuple(dy.shape), dy.dtype)
    _launch(_relu_backward, size(dy.shape), flat(dy), flat(y), flat(dx))
    return dx


def dropout_forward(x, p, seed):
    """The same mask as the CPU kernel for the same seed (the same counter-based hash)."""
    y = device_array(tuple(x.shape), x.dtype)
    mask = device_array(tuple(x.shape), np.uint8)
    _launch(_dropout, size(x.shape), flat(x), p, 1.0 / (1.0 - p), np.uint64(seed), flat(y), flat(mask))
    return y, mask


def dropout_backward(dy, mask, p):
    dx = device_array(tuple(dy.shape), dy.dtype)
    _launch(_dropout_backward, size(dy.shape), flat(dy), flat(mask), 1.0 / (1.0 - p), flat(dx))
    return dx
