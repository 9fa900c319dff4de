"""GPU kernels for the fully-connected layer: x (M, F_in), weight (F_out, F_in), bias (F_out,),
y (M, F_out) = x @ weight.T + bias, with the tiled gemm of cuda/gemm.py."""
from numba import cuda

from ._common import device_array, float_signatures, launch_1d
from .gemm import gemm

KERNEL_SIGNATURES = {}  # kernel name -> argument signatures (see _common)


@cuda.jit
def _column_sum(a, out):
    """out[f] = sum over rows of a[:, f]; one thread per column, fixed order."""
    M, F = a.shape
    for f in range(cuda.grid(1), F, cuda.gridsize(1)):
        acc = 0.0
        for r in range(M):
            acc += a[r, f]
        out[f] = acc


KERNEL_SIGNATURES["_column_sum"] = float_signatures(
    "{f}[:, ::1], {f}[::1]")


def forward(x, weight, bias):
    M = x.shape[0]
    Fo, Fi = weight.shape
    y = device_array((M, Fo), x.dtype)
    gemm(x.reshape((1, M, Fi)), weight.reshape((1, Fo, Fi)), y.reshape((1, M, Fo)), tb=True,
         bias=bias, bias_mode=0 if bias is None else 2)
    return y


def backward(dy, x, weight, need_dx, need_params):
    M, Fo = dy.shape
    Fi = weight.shape[1]
    dweight = dbias = dx = None
    if need_params:
        dweight = device_array((Fo, Fi), dy.dtype)
        gemm(dy.reshape((1, M, Fo)), x.reshape((1, M, Fi)), dweight.reshape((1, Fo, Fi)), ta=True)
        dbias = device_array(Fo, dy.dtype)
        launch_1d(_column_sum, Fo, dy, dbias)
    if need_dx:
        dx = device_array((M, Fi), dy.dtype)
        gemm(dy.reshape((1, M, Fo)), weight.reshape((1, Fo, Fi)), dx.reshape((1, M, Fi)))
    return dx, dweight, dbias
