"""CPU kernels for index-map padding: rows of a (R, M) view gathered through a source map, and
the matching backward sum (see numbanorm/functional/pad.py)."""
from numba import njit, prange

from . import _memory


@njit(parallel=True, cache=True)
def _gather(x, source, out):
    for r in prange(x.shape[0]):
        for q in range(source.size):
            out[r, q] = x[r, source[q]]


@njit(parallel=True, cache=True)
def _scatter_sum(dxp, order, starts, dx):
    for r in prange(dxp.shape[0]):
        for s in range(dx.shape[1]):
            acc = 0.0
            for k in range(starts[s], starts[s + 1]):
                acc += dxp[r, order[k]]
            dx[r, s] = acc


def gather(x, source):
    """x (R, M) -> out (R, source.size), out[r, q] = x[r, source[q]]."""
    out = _memory.empty((x.shape[0], source.size), x.dtype)
    _gather(x, source, out)
    return out


def scatter_sum(dxp, order, starts, M):
    """dx (R, M): dx[r, s] = sum of dxp[r, q] over the q with source[q] == s, in order."""
    dx = _memory.empty((dxp.shape[0], M), dxp.dtype)
    _scatter_sum(dxp, order, starts, dx)
    return dx
