"""What every functional op shares: the one saved-state type and the checks a backward makes.

A forward returns (y, saved); saved is a `Saved` naming the op that made it (`saved.op`) and
holding what the matching backward needs. A backward validates dy against saved before it
computes anything, and never changes saved: a rejected call can be corrected and retried.

Saved state keeps references to the forward's arrays (x, weight, ...), not copies: changing
them in place between a forward and its backward changes the gradient. Debug mode
(`numbanorm.set_debug(True)` or the environment variable NUMBANORM_DEBUG=1) catches that:
every `Saved` fingerprints its arrays (CRC-32 of the bytes, device arrays copied to the host)
when it is made, and `check_saved`, which every backward calls first, raises RuntimeError
naming the array that changed. With debug off this costs one flag check per call.
"""
import math
import os
import zlib
from typing import Any, TypeAlias

import numpy as np


from .. import _backend
from .. import _validate as check

Array: TypeAlias = Any
"""Type hint for an op's arrays: a numpy.ndarray (CPU backend) or a CUDA array, i.e. any
object with __cuda_array_interface__ (GPU backend)."""

_debug = os.environ.get("NUMBANORM_DEBUG", "").strip() not in ("", "0")


def set_debug(flag: bool) -> None:
    """Turn debug mode on or off (see the module docstring); it starts as NUMBANORM_DEBUG says.
    Only forwards run while it is on are checked by their backward."""
    global _debug
    _debug = bool(flag)


def debug_enabled() -> bool:
    """True while debug mode is on."""
    return _debug


def fingerprint(a):
    """(shape, dtype, CRC-32 of the bytes) of a NumPy or device array: cheap, and different
    after practically any in-place change."""
    host = a if isinstance(a, np.ndarray) else a.copy_to_host()
    return tuple(host.shape), host.dtype.str, zlib.crc32(np.ascontiguousarray(host).view(np.uint8))


class Saved:
    """What a backward needs from its forward: `op` (the forward's name), `backend`, the output
    `shape` and `dtype`, plus op-specific fields given by keyword (arrays stay on the backend).

    The norm ops' fields are slots (set in __init__, cheap for the small calls); any other
    keyword becomes an ordinary attribute (conv, pool, loss, ... keep what they need). The norm
    ops pass the slot fields positionally, in __init__'s order: binding 17 keywords cost them
    ~0.3 us per call.
    """

    __slots__ = ("op", "backend", "family", "shape", "dtype", "x", "mean", "rstd", "weight",
                 "has_weight", "has_bias", "training", "param_shape", "groups",
                 "channels_per_group", "spatial", "channels_last", "mask", "count", "param_dtype",
                 "fingerprints", "__dict__")

    def __init__(self, op, backend=None, shape=None, dtype=None, family=None, x=None,
                 mean=None, rstd=None, weight=None, has_weight=False, has_bias=False,
                 training=False, param_shape=None, groups=None, channels_per_group=None,
                 spatial=None, channels_last=False, mask=None, count=None, **fields):
        self.op, self.backend, self.shape, self.dtype, self.family = op, backend, shape, dtype, family
        self.x, self.mean, self.rstd, self.weight = x, mean, rstd, weight
        self.has_weight, self.has_bias, self.training = has_weight, has_bias, training
        self.param_shape = param_shape
        # row_norm: x viewed as (N*groups, channels_per_group*spatial)
        self.groups, self.channels_per_group, self.spatial = groups, channels_per_group, spatial
        self.channels_last = channels_last  # x was channels-last (self.x its (N*S, C, 1) view)
        self.mask, self.count = mask, count  # masked BatchNorm: the selection and its size
        self.param_dtype = None  # dweight/dbias dtype when it differs from dtype (float16 x)
        self.fingerprints = None  # debug mode: {field name: fingerprint} of the arrays held
        if fields:
            self.__dict__.update(fields)
        if _debug:
            named = {"x": x, "mean": mean, "rstd": rstd, "weight": weight, "mask": mask, **fields}
            self.fingerprints = {name: fingerprint(v) for name, v in named.items()
                                 if _backend.device_of(v) is not None}


def prod(dims):
    """The product of a shape's dims as a Python int (1 for an empty shape)."""
    p = math.prod(dims)
    return p if type(p) is int else math.prod(int(d) for d in dims)


def check_saved(saved, *ops):
    """saved must come from one of the forwards named by ops; in debug mode, its arrays must
    be unchanged since that forward (RuntimeError naming the one that changed)."""
    if not isinstance(saved, Saved) or saved.op not in ops:
        made_by = saved.op if isinstance(saved, Saved) else type(saved).__name__
        raise TypeError(f"saved must be the second value returned by {' or '.join(ops)}, "
                        f"got one from {made_by}")
    if saved.fingerprints is not None:
        for name, before in saved.fingerprints.items():
            if fingerprint(getattr(saved, name)) != before:
                raise RuntimeError(
                    f"{name} saved by the {saved.op} forward was modified in place before its "
                    f"backward (numbanorm debug mode): the gradient would be wrong. Do not change "
                    f"an op's inputs or parameters between its forward and backward, or pass a copy."
                )


def grad_output(dy, saved):
    """dy as the forward's backend computes on it, checked against the forward's output."""
    if type(dy) is np.ndarray and saved.backend.name == "cpu":  # the common case, without select
        check.grad_output(dy, saved.shape, saved.dtype)
        return dy
    be_dy, a = _backend.select(dy=dy)
    if be_dy is not saved.backend:
        raise ValueError(f"dy is on {be_dy.name} but the forward ran on {saved.backend.name}")
    check.grad_output(a["dy"], saved.shape, saved.dtype)
    return a["dy"]


def to_host(a):
    """A float64 NumPy copy of a small (C,) array from either backend (statistics, parameters)."""
    return np.array(_backend.transfer(a, "cpu"), dtype=np.float64)


def on_backend(be, host, dtype=np.float64):
    """A (C,) host array as an array of `dtype` on backend be (a device copy on cuda)."""
    host = np.ascontiguousarray(host, dtype=dtype)
    return host if be.name == "cpu" else be.to_device(host)


def update_running(be, running_mean, running_var, mean, unbiased_var, momentum):
    """running = (1 - momentum) * running + momentum * statistic, in place, computed in float64
    and rounded once to the buffers' dtype (the arithmetic of batch_norm's kernels).
    mean, unbiased_var: float64 (C,) host arrays."""
    for buf, stat in ((running_mean, mean), (running_var, unbiased_var)):
        new = (to_host(buf) * (1.0 - momentum) + momentum * stat).astype(buf.dtype)
        if be.name == "cpu":
            buf[...] = new
        else:
            buf.copy_to_device(new)
