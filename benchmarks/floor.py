"""The memory floor: streaming kernels that move the same bytes as a normalization, no more.

A normalization cannot beat the traffic it needs (x of B bytes):
  training forward   one read of x (statistics) + one read-write pass (y = x*a + b)   3B
  training backward  one read of (x, dy) (two sums) + a pass reading x, dy, writing dx   5B
  eval forward       one read-write pass (the statistics are constants)                2B
  eval backward      one pass reading x, dy, writing dx = a*dy, summing dy*x            3B

Each floor runs exactly that: the same passes with the arithmetic reduced to one multiply-add,
as `njit(parallel=True, fastmath={"reassoc", "contract"})` loops over flat arrays (float64
accumulators, vectorised thanks to reassoc). Below SERIAL_BELOW elements the serial twin of
each kernel is used instead: on tiny inputs waking the thread pool costs more than the loop,
and a wrapper that picks by size (as NOTES.md recommends) would pay only the loop.
"""
import numpy as np
from numba import njit, prange

FASTMATH = {"reassoc", "contract"}
SERIAL_BELOW = 1 << 16  # elements


def _read_sum(x):
    s = 0.0
    for i in prange(x.size):
        s += x[i]
    return s


def _scale_shift(x, a, b, y):
    for i in prange(x.size):
        y[i] = x[i] * a + b


def _read_dot(x, dy):
    s = 0.0
    for i in prange(x.size):
        s += x[i] * dy[i]
    return s


def _combine(x, dy, a, b, dx):
    for i in prange(x.size):
        dx[i] = dy[i] * a + x[i] * b


def _scale_dot(x, dy, a, dx):
    s = 0.0
    for i in prange(x.size):
        dx[i] = dy[i] * a
        s += x[i] * dy[i]
    return s


def _pair(fn):
    """(parallel, serial) compilations of one kernel."""
    return (njit(parallel=True, fastmath=FASTMATH, cache=True)(fn),
            njit(fastmath=FASTMATH, cache=True)(fn))


_KERNELS = {f.__name__[1:]: _pair(f) for f in (_read_sum, _scale_shift, _read_dot, _combine, _scale_dot)}


def _k(name, n):
    par, ser = _KERNELS[name]
    return ser if n < SERIAL_BELOW else par


def _flat(a):
    return a.reshape(-1)  # a view for the C-contiguous arrays the benchmarks make


def forward(x, y, training=True):
    """Floor of a forward: x -> y (same shape, float32). Returns the (meaningless) sum."""
    x1, y1 = _flat(x), _flat(y)
    n = x1.size
    s = _k("read_sum", n)(x1) if training else 0.0
    _k("scale_shift", n)(x1, np.float32(0.5), np.float32(s * 0.0 + 0.25), y1)
    return s


def backward(x, dy, dx, training=True):
    """Floor of a backward: (x, dy) -> dx. Returns the (meaningless) sum."""
    x1, g1, d1 = _flat(x), _flat(dy), _flat(dx)
    n = x1.size
    if not training:
        return _k("scale_dot", n)(x1, g1, np.float32(0.5), d1)
    s = _k("read_dot", n)(x1, g1)
    _k("combine", n)(x1, g1, np.float32(0.5), np.float32(s * 0.0 + 0.25), d1)
    return s


def floor_bytes(nbytes, direction, training=True):
    """Bytes a normalization of an input of `nbytes` must move (see the module docstring)."""
    if direction == "forward":
        return (3 if training else 2) * nbytes
    return (5 if training else 3) * nbytes
