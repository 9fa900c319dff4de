"""GPU backend: numba.cuda kernels on device arrays (the twin of numbanorm.cpu).

Same module-level interface as numbanorm.cpu: one kernel module per kind of op (the same names
and signatures), plus the array helpers below; `config` holds the launch sizes (read at every
launch), `gemm` the tiled gemm that conv and linear share.

Arrays: Numba device arrays are used as they are; any other object exposing
`__cuda_array_interface__` (CuPy arrays, PyTorch CUDA tensors) is wrapped zero-copy with
`cuda.as_cuda_array`. Outputs and gradients are always **Numba device arrays**, on the device
of the input (use `cupy.asarray(y)` / `torch.as_tensor(y, device="cuda")` to get a foreign
array back, zero-copy). Everything is launched on the default stream; no op copies to the host.

Only this package imports numba.cuda, so the CPU path works without numba-cuda.
"""
import numpy as np
from numba import cuda
from numba.cuda import devicearray

from . import config  # noqa: F401  (numbanorm.cuda.config.THREADS = 32 in tests)
from . import (channel_norm, conv, elementwise, linear, loss, masked_channel_norm, optim, pad,
               pool, row_norm)
from ._common import add_ as _add_, copy_cast

# the backend interface: the same names in numbanorm.cpu and numbanorm.cuda (plus to_device)
__all__ = ["name", "channel_norm", "masked_channel_norm", "row_norm", "conv", "linear", "pad", "pool", "elementwise",
           "loss", "optim", "wrap", "contiguous", "is_contiguous", "empty", "full", "cast", "copy_", "add_",
           "from_host", "to_host", "to_device"]
name = "cuda"


def wrap(a):
    """The Numba device array to compute on: device arrays as they are, foreign CUDA arrays
    wrapped zero-copy."""
    if devicearray.is_cuda_ndarray(a):
        return a
    if hasattr(a, "__cuda_array_interface__"):
        return cuda.as_cuda_array(a)
    raise TypeError(f"expected a CUDA array, got {type(a).__module__}.{type(a).__qualname__}")


def contiguous(a):
    """a if it is C-contiguous, else a C-contiguous copy made on the device."""
    if a.is_c_contiguous():
        return a
    out = cuda.device_array(tuple(a.shape), a.dtype)
    try:
        out[:] = a  # numba's strided device-to-device assignment kernel
    except Exception as e:
        raise ValueError(
            f"could not make a contiguous copy of a device array of shape {tuple(a.shape)} and "
            f"strides {tuple(a.strides)}: {e}"
        ) from e
    return out


def is_contiguous(a):
    return a.is_c_contiguous()


def from_host(a):
    """A host (NumPy) array copied to the device."""
    return cuda.to_device(np.ascontiguousarray(a))


def to_host(a):
    """A device array copied to a NumPy array (the one place the GPU backend copies to host)."""
    return a.copy_to_host()


def empty(shape, dtype):
    return cuda.device_array(tuple(shape), np.dtype(dtype))


def full(shape, value, dtype):
    """A device array filled with value (filled on the device)."""
    from ._common import fill

    return fill(cuda.device_array(tuple(shape), np.dtype(dtype)), value)


def cast(a, dtype):
    """a converted to dtype on the device (a itself when it has it already)."""
    dtype = np.dtype(dtype)
    if np.dtype(a.dtype) == dtype:
        return a
    return copy_cast(contiguous(a), cuda.device_array(tuple(a.shape), dtype))


def copy_(dst, src):
    """dst[...] = src converted to dst's dtype, in place on the device (dst C-contiguous)."""
    if tuple(dst.shape) != tuple(src.shape):
        raise ValueError(f"copy_: shapes differ, {tuple(dst.shape)} and {tuple(src.shape)}")
    copy_cast(contiguous(src), dst)


def add_(dst, src):
    """dst += src in place (gradient accumulation), on the device. Same shapes, contiguous."""
    if tuple(dst.shape) != tuple(src.shape):
        raise ValueError(f"add_: shapes differ, {tuple(dst.shape)} and {tuple(src.shape)}")
    _add_(dst, contiguous(src))


def to_device(a):
    """a as a device array: device arrays as they are (foreign ones wrapped), host arrays copied."""
    if devicearray.is_cuda_ndarray(a) or hasattr(a, "__cuda_array_interface__"):
        return wrap(a)
    return cuda.to_device(np.ascontiguousarray(a))
