"""16-bit data in the CPU kernels: Numba has no CPU float16 type, so a float16 array goes to a
kernel as its uint16 bits (`bits(a)`) and the kernel reads and writes it through `load` and
`store`, which convert with LLVM's `half` type (F16C vcvtph2ps / vcvtps2ph on x86: vectorised,
bit-exact with NumPy's astype, round to nearest even, subnormals, infinities and NaN kept).
A bfloat16 array (ml_dtypes, optional) goes as its int16 bits: float32's top 16 bits, read by a
shift and written rounded to nearest even (bit-exact with ml_dtypes' astype).

For float32/float64 arrays `load`/`store` are plain indexing, so one kernel body serves every
dtype; `work(a, v)` / `work_empty(a, n)` give the elementwise work type of a's data (float32 for
float16 and float32 data, float64 for float64). `convert` is the flat float16 <-> float32 copy
(`numbanorm.cpu.cast`): parameters, gradients, and NumPy's own astype is scalar and ~10x slower.

`shifted_sums` / `dy_sums` are the float64 reductions of the statistics and the backward over
one contiguous run of values. For 16-bit data they sum in float32 over fixed blocks of
SUM_BLOCK elements and add each block's sum into float64: in cache, converting each element
to float64 cost more than the float32 data path (0.071 against 0.034 ns/element). The values
are exact in float32 and, shifted by a nearby value, so are their differences and squares (a
float16 or bfloat16 difference has at most 12 significant bits), so a block sum's relative
error is ~SUM_BLOCK * 2**-24, far below float16 rounding. Blocks are fixed by the run, so the
result does not depend on the thread count. float32/float64 data keep plain float64 sums.
"""
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic, overload

from .._validate import BFLOAT16
from . import _memory
from ._parallel import FASTMATH, TASK_SIZE, serial

_FLOAT32, _FLOAT64 = np.dtype(np.float32), np.dtype(np.float64)
BITS = np.dtype(np.uint16)  # how a float16 array reaches a kernel
BF16_BITS = np.dtype(np.int16)  # how a bfloat16 (ml_dtypes) array reaches a kernel
SUM_BLOCK = 256  # elements per float32 partial sum of 16-bit data (shifted_sums, dy_sums)


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


@intrinsic
def _bfloat_to_float(typingctx, b):
    def codegen(context, builder, signature, args):
        i32 = ir.IntType(32)
        high = builder.shl(builder.zext(args[0], i32), ir.Constant(i32, 16))
        return builder.bitcast(high, ir.FloatType())
    return types.float32(types.int16), codegen


def bfloat16_bits(builder, v):
    """LLVM IR: float32 v (a scalar or a vector) -> its bfloat16 bits (i16, or a vector of them):
    round to nearest even on the bits (bfloat16 is float32's top half); NaN stays quiet NaN.
    Shared by _float_to_bfloat and the vector loops of numbanorm.cpu._panels."""
    n = v.type.count if isinstance(v.type, ir.VectorType) else None
    i32 = ir.IntType(32) if n is None else ir.VectorType(ir.IntType(32), n)
    i16 = ir.IntType(16) if n is None else ir.VectorType(ir.IntType(16), n)

    def const(k):
        return ir.Constant(i32, k if n is None else [k] * n)
    u = builder.bitcast(v, i32)
    lsb = builder.and_(builder.lshr(u, const(16)), const(1))
    rounded = builder.add(u, builder.add(lsb, const(0x7FFF)))
    nan = builder.fcmp_unordered("uno", v, v)
    r = builder.select(nan, builder.or_(u, const(0x00400000)), rounded)
    return builder.trunc(builder.lshr(r, const(16)), i16)


@intrinsic
def _float_to_bfloat(typingctx, v):
    """float32 -> bfloat16 bits, rounded to nearest even (bfloat16_bits)."""
    def codegen(context, builder, signature, args):
        return bfloat16_bits(builder, args[0])
    return types.int16(types.float32), codegen


def bits(a):
    """The array a kernel takes for a: the uint16 view of a float16 array, the int16 view of a
    bfloat16 one, else a itself."""
    dtype = a.dtype
    if dtype is _FLOAT32 or dtype is _FLOAT64:  # the common case, without dtype comparisons
        return a
    if dtype == np.float16:
        return a.view(BITS)
    return a.view(BF16_BITS) if BFLOAT16 is not None and a.dtype == BFLOAT16 else a


def load(a, i):
    """a[i] in a's work type: the float32 value of float16 / bfloat16 bits, else a[i] itself."""
    if a.dtype in (BITS, BF16_BITS):
        return np.float32(a[i].view(np.float16 if a.dtype == BITS else BFLOAT16))
    return a[i]


def store(a, i, v):
    """a[i] = v; for float16 / bfloat16 bits v is rounded to float32, then to the 16-bit type
    (nearest even)."""
    if a.dtype in (BITS, BF16_BITS):
        a[i] = np.float32(v).astype(np.float16 if a.dtype == BITS else BFLOAT16).view(a.dtype)
    else:
        a[i] = v


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
    if a.dtype == types.int16:
        return lambda a, i: _bfloat_to_float(a[i])
    return lambda a, i: a[i]


@overload(store, inline="always")
def _store(a, i, v):
    if a.dtype == types.uint16:
        return lambda a, i, v: _set(a, i, _float_to_half(np.float32(v)))
    if a.dtype == types.int16:
        return lambda a, i, v: _set(a, i, _float_to_bfloat(np.float32(v)))
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


def shifted_sums(v, shift):
    """(sum(v - shift), sum((v - shift)**2)) in float64 over a 1-D contiguous view v of data
    or 16-bit bits; shift a float64 near v's values (exact in float32 for 16-bit data, e.g.
    one of v's values, for the block sums to be exact; any other value is corrected for)."""
    d = np.array([load(v, i) for i in range(v.size)], np.float64) - shift
    return d.sum(), (d * d).sum()


def dy_sums(g, v, center):
    """(sum(g), sum(g * (v - center))) in float64 over 1-D contiguous views g, v of equal size.
    center: float64, or the work type's value; for float32/float64 data the products are
    taken in the promoted type of (g, v - center), as the callers' kernels always did."""
    g = np.array([load(g, i) for i in range(g.size)], np.float64)
    v = np.array([load(v, i) for i in range(v.size)], np.float64)
    return g.sum(), (g * (v - center)).sum()


def _is_16bit(a):
    return a.dtype in (types.uint16, types.int16)


@overload(shifted_sums)  # not inline="always": IR-inlined into parfors it warns (NumbaIRAssumptionWarning)
def _shifted_sums(v, shift):
    if _is_16bit(v):
        return lambda v, shift: _shifted_sums_16(v, shift)
    return lambda v, shift: _shifted_sums_64(v, shift)


@overload(dy_sums)  # (see shifted_sums)
def _dy_sums(g, v, center):
    if _is_16bit(v):
        return lambda g, v, center: _dy_sums_16(g, v, center)
    return lambda g, v, center: _dy_sums_wide(g, v, center)


@njit(fastmath=FASTMATH, inline="always")
def _shifted_sums_64(v, shift):
    a1 = 0.0
    a2 = 0.0
    for i in range(v.size):
        d = np.float64(load(v, i)) - shift
        a1 += d
        a2 += d * d
    return a1, a2


@njit(fastmath=FASTMATH, inline="always")
def _shifted_sums_16(v, shift):
    shift32 = np.float32(shift)
    n = v.size
    a1 = 0.0
    a2 = 0.0
    for b0 in range(0, n, SUM_BLOCK):
        bv = v[b0:min(n, b0 + SUM_BLOCK)]
        s1 = np.float32(0.0)
        s2 = np.float32(0.0)
        for i in range(bv.size):
            d = load(bv, i) - shift32
            s1 += d
            s2 += d * d
        a1 += s1
        a2 += s2
    # sums about shift32 -> about shift (e = 0 when shift is exact in float32)
    e = np.float64(shift32) - shift
    return a1 + n * e, a2 + 2.0 * e * a1 + n * e * e


@njit(fastmath=FASTMATH, inline="always")
def _dy_sums_wide(g, v, center):
    a1 = 0.0
    a2 = 0.0
    for i in range(v.size):
        gi = load(g, i)
        a1 += gi
        a2 += gi * (load(v, i) - center)
    return a1, a2


@njit(fastmath=FASTMATH, inline="always")
def _dy_sums_16(g, v, center):
    c32 = np.float32(center)
    n = v.size
    a1 = 0.0
    a2 = 0.0
    for b0 in range(0, n, SUM_BLOCK):
        gv = g[b0:min(n, b0 + SUM_BLOCK)]
        bv = v[b0:min(n, b0 + SUM_BLOCK)]
        s1 = np.float32(0.0)
        s2 = np.float32(0.0)
        for i in range(bv.size):
            gi = load(gv, i)
            s1 += gi
            s2 += gi * (load(bv, i) - c32)
        a1 += s1
        a2 += s2
    # sum(g * (v - center)) = sum(g * (v - c32)) + (c32 - center) * sum(g)
    return a1, a2 + (np.float64(c32) - center) * a1


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
    pair = {np.dtype(src), np.dtype(dst)}
    return pair == {np.dtype(np.float16), np.dtype(np.float32)} or pair == {BFLOAT16, np.dtype(np.float32)}


def convert(a, dtype):
    """A C-contiguous float16 / bfloat16 array as float32 or a float32 one as float16 /
    bfloat16 (a new C array)."""
    out = _memory.empty(a.shape, dtype)
    _convert(bits(a).reshape(-1), bits(out).reshape(-1), serial(a))
    return out
