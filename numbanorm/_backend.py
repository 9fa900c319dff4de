"""The one place that decides where an op runs.

NumPy arrays -> the CPU backend (`numbanorm.cpu`); objects exposing `__cuda_array_interface__`
(Numba device arrays, CuPy arrays, PyTorch CUDA tensors) -> the GPU backend (`numbanorm.cuda`),
wrapped zero-copy as Numba device arrays. Anything else, or a mix of the two, is refused.
"""
import importlib

import numpy as np


def _is_cuda_array(a):
    if hasattr(a, "__cuda_array_interface__"):
        return True
    # Under NUMBA_ENABLE_CUDASIM device arrays have no __cuda_array_interface__; only
    # ask numba.cuda when it is already imported, so the CPU path never pays for it.
    import sys

    if "numba.cuda" in sys.modules:
        from numba.cuda import devicearray

        return devicearray.is_cuda_ndarray(a)
    return False


def device_of(a):
    """'cpu', 'cuda' or None (not an array we accept)."""
    if isinstance(a, np.ndarray):
        return "cpu"
    if _is_cuda_array(a):
        return "cuda"
    return None


def _describe(a):
    return f"{type(a).__module__}.{type(a).__qualname__}"


_cpu_module = None


def _cpu():
    global _cpu_module
    if _cpu_module is None:  # imported on first use: `import numbanorm` stays light
        from . import cpu

        _cpu_module = cpu
    return _cpu_module


def get(device):
    """The backend module for 'cpu' or 'cuda'."""
    if device == "cpu":
        return _cpu_module or _cpu()
    if device == "cuda":
        from . import cuda_support

        cuda_support.require_cuda()
        return importlib.import_module("numbanorm.cuda")
    raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")


def select(**arrays):
    """Pick the backend from the arrays given by keyword (None values are ignored).

    Returns (backend, converted) where converted maps each name to the array the backend
    works on (foreign GPU arrays wrapped as Numba device arrays, zero-copy). On the GPU this
    also picks the stream the op runs on from the arrays (see numbanorm.cuda).
    """
    for a in arrays.values():  # the common case, all NumPy: a plain loop (no generator)
        if a is not None and type(a) is not np.ndarray:
            break
    else:
        return _cpu_module or _cpu(), arrays
    placement = {}
    for name, a in arrays.items():
        if a is None:
            continue
        dev = device_of(a)
        if dev is None:
            raise TypeError(
                f"{name} must be a numpy.ndarray or a CUDA array (an object with "
                f"__cuda_array_interface__), got {_describe(a)}"
            )
        placement[name] = dev
    devices = set(placement.values())
    if len(devices) > 1:
        where = ", ".join(f"{n} on {d}" for n, d in placement.items())
        raise ValueError(f"arrays are on different devices ({where}); put them all on one device")
    backend = get(devices.pop() if devices else "cpu")
    if backend.name == "cuda":  # also makes the op's stream current (numbanorm.cuda._common)
        return backend, backend.begin(arrays)
    return backend, {n: (None if a is None else backend.wrap(a)) for n, a in arrays.items()}


def transfer(a, device):
    """a (NumPy or device array) as an array on `device` ('cpu' -> NumPy, 'cuda' -> device)."""
    if device == "cpu":
        return a if isinstance(a, np.ndarray) else a.copy_to_host()
    return get("cuda").to_device(a)
