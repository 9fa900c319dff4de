"""float16 <-> float32 conversion on the CPU, in parallel, for the float16 norm ops.

Numba has no float16 type on the CPU, so float16 data is read and written as its uint16 bits
and converted with integer arithmetic (IEEE 754 binary16, round to nearest even, subnormals,
infinities and NaN kept). Arrays are flat and C-contiguous; NumPy's own astype between float16
and float32 is scalar code and was ~10x slower than the norm op it feeds on this machine.
"""
import numpy as np
from numba import njit, prange

from . import _memory
from ._parallel import TASK_SIZE, serial


@njit(cache=True, inline="always")
def _from_half_task(t, h, out_f, out_u):
    for i in range(t * TASK_SIZE, min(h.size, (t + 1) * TASK_SIZE)):
        b = np.uint32(h[i])
        sign = (b & np.uint32(0x8000)) << np.uint32(16)
        e = (b >> np.uint32(10)) & np.uint32(0x1F)
        m = b & np.uint32(0x3FF)
        if e == 0:  # zero or subnormal: m * 2**-24, exact in float32
            v = np.float32(m) * np.float32(5.960464477539063e-08)
            out_f[i] = -v if sign else v
        elif e == 31:  # inf or NaN
            out_u[i] = sign | np.uint32(0x7F800000) | (m << np.uint32(13))
        else:
            out_u[i] = sign | ((e + np.uint32(112)) << np.uint32(23)) | (m << np.uint32(13))


@njit(parallel=True, cache=True)
def _from_half(h, out_f, out_u, serial):
    T = -(-h.size // TASK_SIZE)
    if serial:
        for t in range(T):
            _from_half_task(t, h, out_f, out_u)
    else:
        for t in prange(T):
            _from_half_task(t, h, out_f, out_u)


@njit(cache=True, inline="always")
def _to_half_task(t, f, u, out):
    for i in range(t * TASK_SIZE, min(f.size, (t + 1) * TASK_SIZE)):
        b = u[i]
        sign = (b >> np.uint32(16)) & np.uint32(0x8000)
        a = b & np.uint32(0x7FFFFFFF)
        if a >= np.uint32(0x47800000):  # >= 65536 (rounds to inf), inf or NaN
            o = np.uint32(0x7E00) if a > np.uint32(0x7F800000) else np.uint32(0x7C00)
        elif a < np.uint32(0x38800000):  # below 2**-14: a subnormal (or zero) half
            o = np.uint32(np.rint(abs(f[i]) * np.float32(16777216.0)))  # exact, ties to even
        else:  # rebias the exponent, round the 13 dropped bits to nearest even
            o = (a - np.uint32(0x37FFF001) + ((a >> np.uint32(13)) & np.uint32(1))) >> np.uint32(13)
        out[i] = np.uint16(o | sign)


@njit(parallel=True, cache=True)
def _to_half(f, u, out, serial):
    T = -(-f.size // TASK_SIZE)
    if serial:
        for t in range(T):
            _to_half_task(t, f, u, out)
    else:
        for t in prange(T):
            _to_half_task(t, f, u, out)


def converts(src, dst):
    """Whether this module converts dtype src to dtype dst."""
    return {np.dtype(src), np.dtype(dst)} == {np.dtype(np.float16), np.dtype(np.float32)}


def convert(a, dtype):
    """A C-contiguous float16 array as float32 or a float32 one as float16 (a new C array)."""
    out = _memory.empty(a.shape, dtype)
    flat_a, flat_out = a.reshape(-1), out.reshape(-1)
    if a.dtype == np.float16:
        _from_half(flat_a.view(np.uint16), flat_out, flat_out.view(np.uint32), serial(a))
    else:
        _to_half(flat_a, flat_a.view(np.uint32), flat_out.view(np.uint16), serial(a))
    return out
