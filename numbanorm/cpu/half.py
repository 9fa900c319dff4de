"""float16 data in the CPU kernels: Numba has no CPU float16 type, so a float16 array goes to a
kernel as its uint16 bits (`bits(a)`) and the kernel reads and writes it through `load` and
`store`, which convert with LLVM's `half` type (F16C vcvtph2ps / vcvtps2ph on x86: vectorised,
bit-exact with NumPy's astype, round to nearest even, subnormals, infinities and NaN kept).

For float32/float64 arrays `load`/`store` are plain indexing, so one kernel body serves every
dtype; `work(a, v)` / `work_empty(a, n)` give the elementwise work type of a's data (float32 for
float16 and float32 data, float64 for float64). `convert` is the flat float16 <-> float32 copy
(`numbanorm.cpu.cast`): parameters, gradients, and NumPy's own astype is scalar and ~10x slower.
"""
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic, overload

from . import _memory
from ._parallel import TASK_SIZE, serial

BITS = np.dtype(np.uint16)  # how a float16 array reaches a kernel


@intrinsic
def _half_to_float(typingctx, b):
    def codegen(context, builder, signature, args):
        return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())
    return types.float32(types.uint16), codegen


@intrinsic
def _float_to_half(typingctx, v):
    def codegen(context, builder, signature, args):
        return builder.bitcast(builder.fptrunc(args[0], ir.HalfType()), ir.IntType(16))
    return types.uint16(types.float32), codegen


def bits(a):
    """The array a kernel takes for a: the uint16 view of a float16 array, else a itself."""
    return a.view(BITS) if a.dtype == np.float16 else a


def load(a, i):
    """a[i] in a's work type: the float32 value of float16 bits, else a[i] itself."""
    return np.float32(a[i].view(np.float16)) if a.dtype == BITS else a[i]


def store(a, i, v):
    """a[i] = v; for float16 bits v is rounded to float32, then to float16 (nearest even)."""
    a[i] = np.float16(np.float32(v)).view(BITS) if a.dtype == BITS else v


def work(a, v):
    """v as a scalar of a's work type (float64 for float64 data, else float32)."""
    return np.float64(v) if a.dtype == np.float64 else np.float32(v)


def work_empty(a, n):
    """An uninitialised (n,) array of a's work type."""
    return np.empty(n, np.float64 if a.dtype == np.float64 else np.float32)


@overload(load, inline="always")
def _load(a, i):
    if a.dtype == types.uint16:
        return lambda a, i: _half_to_float(a[i])
    return lambda a, i: a[i]


@overload(store, inline="always")
def _store(a, i, v):
    if a.dtype == types.uint16:
        return lambda a, i, v: _set(a, i, _float_to_half(np.float32(v)))
    return lambda a, i, v: _set(a, i, v)


@njit(inline="always")
def _set(a, i, v):
    a[i] = v


@overload(work, inline="always")
def _work(a, v):
    if a.dtype == types.float64:
        return lambda a, v: np.float64(v)
    return lambda a, v: np.float32(v)


@overload(work_empty, inline="always")
def _work_empty(a, n):
    if a.dtype == types.float64:
        return lambda a, n: np.empty(n, np.float64)
    return lambda a, n: np.empty(n, np.float32)


@njit(parallel=True, cache=True)
def _convert(src, out, serial):
    T = -(-src.size // TASK_SIZE)
    if serial:
        for t in range(T):
            _convert_task(t, src, out)
    else:
        for t in prange(T):
            _convert_task(t, src, out)


@njit(cache=True, inline="always")
def _convert_task(t, src, out):
    lo = t * TASK_SIZE
    sv = src[lo:min(src.size, lo + TASK_SIZE)]
    ov = out[lo:lo + sv.size]
    for i in range(sv.size):
        store(ov, i, load(sv, i))


def converts(src, dst):
    """Whether this module converts dtype src to dtype dst."""
    return {np.dtype(src), np.dtype(dst)} == {np.dtype(np.float16), np.dtype(np.float32)}


def convert(a, dtype):
    """A C-contiguous float16 array as float32 or a float32 one as float16 (a new C array)."""
    out = _memory.empty(a.shape, dtype)
    _convert(bits(a).reshape(-1), bits(out).reshape(-1), serial(a))
    return out
