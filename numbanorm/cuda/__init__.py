"""GPU backend: numba.cuda kernels on device arrays (the twin of numbanorm.cpu).

Same module-level interface as numbanorm.cpu: one kernel module per kind of op (the same names
and signatures), plus the array helpers below; `config` holds the launch sizes (read at every
launch), `gemm` the tiled gemm that conv and linear share.

Arrays: Numba device arrays are used as they are; any other object exposing
`__cuda_array_interface__` (CuPy arrays, PyTorch CUDA tensors) is wrapped zero-copy with
`cuda.as_cuda_array`. Outputs and gradients are always **Numba device arrays**, on the device
of the input (use `cupy.asarray(y)` / `torch.as_tensor(y, device="cuda")` to get a foreign
array back, zero-copy).

Streams: an op launches its kernels, allocates and copies on one stream, the caller's:
`with numbanorm.cuda.stream(s):` (s a Numba, PyTorch or CuPy stream, or a handle) for every op
in the block, else the current PyTorch/CuPy stream when the input is a PyTorch/CuPy array, else
the stream a Numba input array is bound to, else Numba's default stream (details in
_common.py). Nothing is synchronised behind the caller's back: no op copies to the host,
except where its docstring says so (cross_entropy's loss value, a BatchNorm mask's count).

Only this package imports numba.cuda, so the CPU path works without numba-cuda.
"""
import numpy as np
from numba import config as numba_config
from numba import cuda
from numba.cuda import devicearray

from . import config  # noqa: F401  (numbanorm.cuda.config.THREADS = 32 in tests)
from . import (channel_norm, conv, elementwise, linear, loss, masked_channel_norm, optim, pad,
               pool, row_norm, row_norm_channels_last)
from ._common import add_ as _add_, begin_op, copy_cast, device_array, op_stream, stream
from ._common import to_host as _to_host

# the backend interface: the same names in numbanorm.cpu and numbanorm.cuda (plus to_device)
__all__ = ["name", "channel_norm", "masked_channel_norm", "row_norm", "row_norm_channels_last",
           "conv", "linear", "pad", "pool", "elementwise", "loss", "optim", "wrap", "contiguous",
           "is_contiguous", "moveaxis", "empty", "full", "cast", "copy_", "add_", "from_host",
           "to_host", "to_device", "stream", "begin"]
name = "cuda"


def wrap(a):
    """The Numba device array to compute on: device arrays as they are, foreign CUDA arrays
    wrapped zero-copy (bound to the op's stream; no host synchronisation on their stream)."""
    if devicearray.is_cuda_ndarray(a):
        return a
    desc = getattr(a, "__cuda_array_interface__", None)
    if desc is None:
        raise TypeError(f"expected a CUDA array, got {type(a).__module__}.{type(a).__qualname__}")
    if "stream" in desc:  # the op's stream orders the work: no sync, no per-call stream wrapper
        desc = {k: v for k, v in desc.items() if k != "stream"}
    arr = cuda.from_cuda_array_interface(desc, owner=a, sync=False)
    arr.stream = op_stream()
    return arr


def begin(arrays):
    """An op's arrays (name -> array or None) wrapped as Numba device arrays, its stream made
    current (numbanorm._backend.select calls this once per op, before any launch)."""
    begin_op(arrays.values())
    return {n: (None if a is None else wrap(a)) for n, a in arrays.items()}


def contiguous(a):
    """a if it is C-contiguous, else a C-contiguous copy made on the device."""
    if a.is_c_contiguous():
        return a
    out = device_array(tuple(a.shape), a.dtype)
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


def moveaxis(a, source, destination):
    """np.moveaxis for a device array: a view with axis `source` moved to `destination` (no
    copy; the same memory, strides permuted, bound to a's stream)."""
    ndim = len(a.shape)
    source, destination = source % ndim, destination % ndim
    axes = [i for i in range(ndim) if i != source]
    axes.insert(destination, source)
    if numba_config.ENABLE_CUDASIM:  # the simulator's arrays wrap a NumPy array, transposed as one
        view = a.transpose(axes)
        view.stream = a.stream
        return view
    return devicearray.DeviceNDArray(shape=tuple(a.shape[i] for i in axes),
                                     strides=tuple(a.strides[i] for i in axes), dtype=a.dtype,
                                     stream=a.stream, gpu_data=a.gpu_data)


def from_host(a):
    """A host (NumPy) array copied to the device."""
    return cuda.to_device(np.ascontiguousarray(a), stream=op_stream())


def to_host(a):
    """A device array copied to a NumPy array on the op's stream (the one place the GPU backend
    copies to host: it waits for that stream's work up to the copy)."""
    return _to_host(a)


def empty(shape, dtype):
    return device_array(tuple(shape), np.dtype(dtype))


def full(shape, value, dtype, shared=False):
    """A device array filled with value (filled on the device, on the op's stream). shared: the
    array is cached and read by ops on any stream, so the fill is waited for here (once)."""
    from ._common import fill

    a = fill(device_array(tuple(shape), np.dtype(dtype)), value)
    if shared:
        cuda.synchronize()
    return a


def cast(a, dtype):
    """a converted to dtype on the device (a itself when it has it already)."""
    dtype = np.dtype(dtype)
    if np.dtype(a.dtype) == dtype:
        return a
    return copy_cast(contiguous(a), device_array(tuple(a.shape), dtype))


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
    return cuda.to_device(np.ascontiguousarray(a), stream=op_stream())
