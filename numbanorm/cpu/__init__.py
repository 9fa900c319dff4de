"""CPU backend: numba.njit(parallel=True) kernels on NumPy arrays.

Every backend package exposes the same names: `channel_norm` and `row_norm` modules with
`forward`/`backward` (and `row_norm.instance_running_update`), plus the array helpers below.
"""
import numpy as np

from . import channel_norm, row_norm

# the backend interface: the same names in numbanorm.cpu and numbanorm.cuda
__all__ = ["name", "channel_norm", "row_norm", "wrap", "contiguous", "empty", "full", "cast", "add_"]
name = "cpu"


def contiguous(a):
    """a as a C-contiguous array (a copy only when a is not one already)."""
    return np.ascontiguousarray(a)


def empty(shape, dtype):
    return np.empty(shape, dtype)


def full(shape, value, dtype):
    return np.full(shape, value, dtype)


def cast(a, dtype):
    """a (float64 statistics or gradients) converted to dtype."""
    return a.astype(dtype, copy=False)


def wrap(a):
    """The array this backend computes on (NumPy arrays are used as they are)."""
    return a


def add_(dst, src):
    """dst += src in place (gradient accumulation)."""
    np.add(dst, src, out=dst)
