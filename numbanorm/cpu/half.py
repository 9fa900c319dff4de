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
    """Branch-free (selects), so LLVM vectorises it: the bits of a normal half rebiased, then
    subnormals fixed by a float subtraction (2**-14 * (1 + m/1024) - 2**-14 = m * 2**-24)."""
    lo = t * TASK_SIZE
    hv = h[lo:min(h.size, lo + TASK_SIZE)]
    fv = out_f[lo:lo + hv.size]
    uv = out_u[lo:lo + hv.size]
    for i in range(hv.size):
        b = np.uint32(hv[i])
        o = (b & np.uint32(0x7FFF)) << np.uint32(13)
        e = o & np.uint32(0x0F800000)
        o += np.uint32(0x38000000)  # rebias the exponent: (127 - 15) << 23
        o = o + np.uint32(0x38000000) if e == np.uint32(0x0F800000) else o  # inf / NaN
        o = o + np.uint32(0x00800000) if e == 0 else o  # subnormal: 2**-14 * (1 + m/1024)
        uv[i] = np.uint32(o)
    for i in range(hv.size):
        b = hv[i]
        v = fv[i]
        v = v - np.float32(6.103515625e-05) if (b & np.uint16(0x7C00)) == 0 else v
        fv[i] = -v if (b & np.uint16(0x8000)) else v


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
    """Branch-free (every case computed, one selected), so LLVM vectorises it."""
    lo = t * TASK_SIZE
    fv = f[lo:min(f.size, lo + TASK_SIZE)]
    uv = u[lo:lo + fv.size]
    ov = out[lo:lo + fv.size]
    for i in range(fv.size):
        b = uv[i]
        a = b & np.uint32(0x7FFFFFFF)
        # normal half: rebias the exponent, round the 13 dropped bits to nearest even
        o = (a - np.uint32(0x37FFF001) + ((a >> np.uint32(13)) & np.uint32(1))) >> np.uint32(13)
        # below 2**-14: a subnormal (or zero) half, m = |f| * 2**24 rounded to even (exact)
        sub = np.uint32(np.rint(min(abs(fv[i]), np.float32(1.0)) * np.float32(16777216.0)))
        o = sub if a < np.uint32(0x38800000) else o
        # >= 65520 rounds to inf; NaN stays a (quiet) NaN
        big = np.uint32(0x7E00) if a > np.uint32(0x7F800000) else np.uint32(0x7C00)
        o = big if a >= np.uint32(0x477FF000) else o
        ov[i] = np.uint16(o | ((b >> np.uint32(16)) & np.uint32(0x8000)))


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
