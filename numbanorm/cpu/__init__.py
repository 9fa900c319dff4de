"""CPU backend: numba.njit(parallel=True) kernels on NumPy arrays.

Every backend package exposes the same names: one kernel module per kind of op, called by the
numbanorm.functional module of the same name (channel_norm and row_norm by functional.norm),
plus the array helpers below.
"""
import numpy as np

from . import (channel_norm, conv, elementwise, half, linear, loss, masked_channel_norm, optim,
               pad, pool, row_norm, row_norm_channels_last)

# the backend interface: the same names in numbanorm.cpu and numbanorm.cuda
__all__ = ["name", "channel_norm", "masked_channel_norm", "row_norm", "conv", "linear", "pad", "pool", "elementwise",
           "loss", "optim", "wrap", "contiguous", "is_contiguous", "empty", "full", "cast", "copy_", "add_",
           "from_host", "to_host", "row_norm_channels_last", "moveaxis"]
# CPU only: a norm layer's two gradients accumulated in one call (nn.Module._accumulate_grads)
__all__.append("add_pair_")
name = "cpu"
_HALF = np.dtype(np.float16)


def contiguous(a):
    """a as a C-contiguous array (a copy only when a is not one already)."""
    return np.ascontiguousarray(a)


def empty(shape, dtype):
    return np.empty(shape, dtype)


def full(shape, value, dtype, shared=False):
    """An array filled with value (shared: cached across calls; no difference on the CPU)."""
    return np.full(shape, value, dtype)


def is_contiguous(a):
    return a.flags.c_contiguous


_MOVES = {}  # (ndim, source, destination) -> the axes of the transpose


def moveaxis(a, source, destination):
    """np.moveaxis(a, source, destination), a view (channels-last memory as (N, *spatial, C)),
    with the axes order cached: np.moveaxis's own argument checks took ~3 us a call, most of
    the Python time of a small channels-last call."""
    key = (a.ndim, source, destination)
    axes = _MOVES.get(key)
    if axes is None:
        src, dst = source % a.ndim, destination % a.ndim
        order = [n for n in range(a.ndim) if n != src]
        order.insert(dst, src)
        axes = _MOVES[key] = tuple(order)
    return a.transpose(axes)


def cast(a, dtype):
    """a converted to dtype (no copy when it has it already; a new array keeps a's memory
    order when that is C or channels-last)."""
    if a.dtype == dtype:
        return a
    dtype = np.dtype(dtype)
    if (a.dtype != _HALF and dtype != _HALF) or not half.converts(a.dtype, dtype):
        return a.astype(dtype, copy=False)
    if a.flags.c_contiguous:
        return half.convert(a, dtype)
    if a.ndim >= 3 and moveaxis(a, 1, -1).flags.c_contiguous:  # channels-last
        return moveaxis(half.convert(moveaxis(a, 1, -1), dtype), -1, 1)
    return a.astype(dtype)


def copy_(dst, src):
    """dst[...] = src converted to dst's dtype, in place (a float32 running statistic written
    back into a float16 buffer)."""
    np.copyto(dst, src, casting="unsafe")


def from_host(a):
    """A host (NumPy) array as this backend's array: itself."""
    return a


def to_host(a):
    """This backend's array as a NumPy array: itself."""
    return a


def wrap(a):
    """The array this backend computes on (NumPy arrays are used as they are)."""
    return a


def add_(dst, src):
    """dst += src in place (gradient accumulation)."""
    np.add(dst, src, out=dst)


add_pair_ = elementwise.add_pair_
