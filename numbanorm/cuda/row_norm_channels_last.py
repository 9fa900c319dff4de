"""GroupNorm and InstanceNorm on channels-last memory (NLC, NHWC, NDHWC) on the GPU: the twin of
numbanorm.cpu.row_norm_channels_last (same names and signatures), run by row_norm's kernels
with their channels-last index mapping (no kernels of its own, no layout copy).

Shape legend: x, dy, y, dx are C-contiguous (N, S, C) device arrays, the memory of an
(N, C, *spatial) input laid out channels-last, S = prod(spatial), C = G * Cg. Statistics are
row_norm's: per (sample n, group g) over the S * Cg values x[n, :, g*Cg:(g+1)*Cg], float64
(N*G,) arrays indexed n * G + g. InstanceNorm is G = C, Cg = 1.
"""
from . import row_norm


def forward(x, weight, bias, G, Cg, eps):
    """-> (y (N, S, C), mean, rstd); weight/bias (C,) of x's dtype, float32 for float16 x."""
    N, S, C = x.shape
    y, mean, rstd = row_norm.forward(x.reshape(N, S * C), weight, bias, G, Cg, S, eps,
                                     channels_last=True)
    return y.reshape(N, S, C), mean, rstd


def backward(x, dy, mean, rstd, weight, G, Cg):
    """-> (dx (N, S, C), dweight, dbias), dweight/dbias float64 (C,) device arrays."""
    N, S, C = x.shape
    dx, dweight, dbias = row_norm.backward(x.reshape(N, S * C), dy.reshape(N, S * C), mean, rstd,
                                           weight, G, Cg, S, channels_last=True)
    return dx.reshape(N, S, C), dweight, dbias
