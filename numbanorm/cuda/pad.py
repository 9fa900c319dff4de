"""GPU kernels for index-map padding (see numbanorm/functional/pad.py): rows of an (R, M) view
gathered through a source map, and the backward sum in the map's source order (no atomics)."""
from numba import cuda

from ._common import device_array, float_signatures, launch_1d

KERNEL_SIGNATURES = {}  # kernel name -> argument signatures (see _common)


@cuda.jit
def _gather(x, source, out):
    Q = source.shape[0]
    for e in range(cuda.grid(1), out.shape[0] * Q, cuda.gridsize(1)):
        r = e // Q
        out[r, e - r * Q] = x[r, source[e - r * Q]]


KERNEL_SIGNATURES["_gather"] = float_signatures(
    "{f}[:, ::1], int64[::1], {f}[:, ::1]")


@cuda.jit
def _scatter_sum(dxp, order, starts, dx):
    M = dx.shape[1]
    for e in range(cuda.grid(1), dx.shape[0] * M, cuda.gridsize(1)):
        r = e // M
        s = e - r * M
        acc = 0.0
        for k in range(starts[s], starts[s + 1]):
            acc += dxp[r, order[k]]
        dx[r, s] = acc


KERNEL_SIGNATURES["_scatter_sum"] = float_signatures(
    "{f}[:, ::1], int64[::1], int64[::1], {f}[:, ::1]")


def gather(x, source):
    out = device_array((x.shape[0], source.shape[0]), x.dtype)
    launch_1d(_gather, int(out.shape[0]) * int(out.shape[1]), x, source, out)
    return out


def scatter_sum(dxp, order, starts, M):
    dx = device_array((dxp.shape[0], M), dxp.dtype)
    launch_1d(_scatter_sum, int(dx.shape[0]) * M, dxp, order, starts, dx)
    return dx
