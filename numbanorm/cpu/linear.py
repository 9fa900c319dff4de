"""CPU kernels for the fully-connected layer: x (M, F_in), weight (F_out, F_in), bias (F_out,),
y (M, F_out) = x @ weight.T + bias, with BLAS gemms (numbanorm/cpu/_blas.py dot: one BLAS thread,
so Numba's pool and BLAS's never compete; a large product in two row halves on Numba's pool)."""
import numpy as np

from . import _blas


def forward(x, weight, bias):
    y = _blas.dot(x, weight.T)
    if bias is not None:
        y += bias
    return y


def backward(dy, x, weight, need_dx, need_params):
    """-> (dx or None, dweight = dy.T @ x or None, dbias = column sums of dy (float64-accumulated))."""
    dweight = _blas.dot(dy.T, x) if need_params else None
    dbias = dy.sum(axis=0, dtype=np.float64).astype(dy.dtype) if need_params else None
    dx = _blas.dot(dy, weight) if need_dx else None
    return dx, dweight, dbias
