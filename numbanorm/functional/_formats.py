"""How the norm ops take 16-bit data and channels-last memory (used by functional/norm.py).

float16 x (and dy): float32 or float16 parameters and running statistics (float32, PyTorch's
mixed-precision convention, or float16, all of one dtype; float16 ones are computed with as
float32 copies). The CPU kernels read x/dy and write y/dx in float16 themselves (float32
elementwise math); other backends get float32 copies of x/dy and y/dx are rounded back.
Statistics and parameter gradients are float64 sums, dweight/dbias come back in the parameters'
dtype. bfloat16 x (ml_dtypes, the optional `bfloat16` extra) works the same way, CPU only.

Channels-last x (BatchNorm, GroupNorm, InstanceNorm): an x whose memory is (N, *spatial, C) in
C order (NHWC for 4-D, NDHWC for 5-D, NLC for 3-D, e.g. `a.transpose(0, 3, 1, 2)` of a
C-contiguous NHWC array, as PyTorch's channels_last) is normalized without a layout copy:
BatchNorm as the per-column statistics of its (N*S, C) view (channel_norm), GroupNorm and
InstanceNorm per sample's (S, C) matrix (row_norm_channels_last); y and dx come back in the
same memory order (CPU backend; the GPU copies).
"""
import functools
import inspect

import numpy as np

from .. import _backend
from .. import _validate as check
from .._validate import param_dtype  # noqa: F401  (functional.norm's import)

HALF = check.HALF
FLOAT32 = np.dtype(np.float32)


def accepts_half(*params, running=()):
    """Decorator of a forward op for float16 (or bfloat16, CPU only) x. params / running: the
    names of its parameter and running-statistic arguments. They reach the op as float32 (copies
    of 16-bit ones; running statistics written back after the op succeeded). The op gets x
    itself (the kernels of both backends read 16-bit data)."""
    def decorate(op):
        names = list(inspect.signature(op).parameters)

        @functools.wraps(op)
        def forward(*args, **kwargs):
            x = args[0] if args else kwargs.get("x")
            if getattr(x, "dtype", None) not in check.HALF_DTYPES:
                return op(*args, **kwargs)
            given = dict(zip(names, args))
            if len(args) > len(names) or given.keys() & kwargs.keys():
                return op(*args, **kwargs)  # Python's own TypeError
            given.update(kwargs)
            be, arrays = _backend.select(**{n: given.get(n) for n in ("x", *params, *running)})
            dtype = np.dtype(x.dtype)
            if dtype != HALF and be.name != "cpu":
                raise TypeError(f"x of dtype {dtype} is supported on the CPU backend only "
                                f"(float16 on every backend)")
            param_dtype = check.half_param_dtype(dtype, **{n: arrays[n] for n in (*params, *running)})
            as32 = {n: be.cast(arrays[n], FLOAT32) for n in (*params, *running)
                    if arrays[n] is not None}
            given.update(as32)
            given["x"] = arrays["x"]
            y, saved = op(**given)
            for n in running:
                if n in as32 and as32[n] is not arrays[n]:
                    be.copy_(arrays[n], as32[n])
            saved.dtype, saved.param_dtype = dtype, param_dtype
            return y, saved
        return forward
    return decorate


def is_channels_last(be, x):
    """x (N, C, *spatial) is a dense channels-last array, not also C-contiguous."""
    if be.name == "cpu":
        return (x.ndim >= 3 and not x.flags.c_contiguous
                and be.moveaxis(x, 1, -1).flags.c_contiguous)
    return x.ndim >= 3 and not be.is_contiguous(x) and be.is_contiguous(be.moveaxis(x, 1, -1))


def from_channels_last(be, a, shape):
    """A result in channels-last memory ((N*S, C, 1) or (N, S, C)) as an (N, C, *spatial) array
    of `shape` (a view)."""
    return be.moveaxis(a.reshape((shape[0], *shape[2:], shape[1])), -1, 1)
