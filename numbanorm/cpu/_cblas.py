"""BLAS gemms called from Numba code, on Numba's own thread pool: `gemm` (for njit kernels that
consume a product while it is in cache), `batched` (out[n] = a[n] @ b[n]) and `split_rows`
(a 2-D product in two row halves), for float32/float64 operands, each matrix row-major or a
transposed view.

Why: a Python worker thread running half of a batched np.matmul has to share the two cores
with Numba's OpenMP workers, which keep spinning for a while after every parallel kernel (the
training step alternates the two). Calling BLAS from inside a Numba `prange` over two fixed
halves gives that work to those same workers: one pool only.

BLAS here is the cblas_?gemm of the OpenBLAS that NumPy loaded (numpy.libs), declared to Numba
by symbol name once that library is loaded into the process, so the kernels calling it are
cached on disk like any other (no compile per process). It runs with one BLAS thread (the
caller scopes that, numbanorm/cpu/_blas.py); each output block is one single-threaded gemm call
with the same arguments whatever the thread count. Where the library is missing (AVAILABLE is
False), `batched` and `split_rows` return False and callers use NumPy.
"""
import ctypes
import glob
import os

import numpy as np
from numba import njit, prange, types
from numba.extending import overload

_ROW_MAJOR, NO_TRANS, TRANS = 101, 111, 112


def _load():
    """Load NumPy's bundled OpenBLAS (64-bit ints) for Numba's linker; whether it has the gemms."""
    libs = glob.glob(os.path.join(os.path.dirname(np.__file__), os.pardir, "numpy.libs",
                                  "libscipy_openblas64_*.so"))
    if not libs:
        return False
    try:
        lib = ctypes.CDLL(libs[0])
        lib.scipy_cblas_sgemm64_, lib.scipy_cblas_dgemm64_  # noqa: B018 (raises if missing)
        import llvmlite.binding as llvm

        llvm.load_library_permanently(libs[0])
    except (OSError, AttributeError, RuntimeError):
        return False
    return True


AVAILABLE = _load()


def _extern(name, scalar):
    i32, i64, ptr = types.int32, types.int64, types.uintp  # pointers passed as addresses
    return types.ExternalFunction(name, types.void(i32, i32, i32, i64, i64, i64, scalar, ptr, i64,
                                                   ptr, i64, scalar, ptr, i64))


_sgemm = _extern("scipy_cblas_sgemm64_", types.float32)
_dgemm = _extern("scipy_cblas_dgemm64_", types.float64)


def gemm(ta, tb, M, N, K, a, lda, b, ldb, c, ldc, like):
    """In njit code only (AVAILABLE): C = op(A) @ op(B), row-major, one BLAS call; a, b, c are
    addresses (arr.ctypes.data), ta/tb NO_TRANS or TRANS, like an array of the dtype."""
    raise NotImplementedError("gemm is called from njit code")


@overload(gemm)
def _gemm(ta, tb, M, N, K, a, lda, b, ldb, c, ldc, like):
    if like.dtype == types.float32:
        def impl(ta, tb, M, N, K, a, lda, b, ldb, c, ldc, like):
            _sgemm(np.int32(_ROW_MAJOR), np.int32(ta), np.int32(tb), M, N, K, np.float32(1.0), a,
                   lda, b, ldb, np.float32(0.0), c, ldc)
        return impl
    if like.dtype == types.float64:
        def impl(ta, tb, M, N, K, a, lda, b, ldb, c, ldc, like):
            _dgemm(np.int32(_ROW_MAJOR), np.int32(ta), np.int32(tb), M, N, K, 1.0, a, lda, b, ldb,
                   0.0, c, ldc)
        return impl
    return None


@njit(parallel=True, cache=True)
def _batched(pa, sa, ta, lda, pb, sb, tb, ldb, pc, sc, ldc, nb, M, N, K, like):
    half = nb // 2
    for t in prange(2):  # the two halves of the batch: fixed, whatever the thread count
        for n in range(t * half, half if t == 0 else nb):
            gemm(ta, tb, M, N, K, pa + n * sa, lda, pb + n * sb, ldb, pc + n * sc, ldc, like)


@njit(parallel=True, cache=True)
def _rows(pa, ta, lda, row_a, pb, tb, ldb, pc, ldc, row_c, M, N, K, like):
    half = M // 2
    for t in prange(2):  # rows [0, half) and [half, M): fixed, whatever the thread count
        r0 = 0 if t == 0 else half
        r1 = half if t == 0 else M
        if r1 > r0:
            gemm(ta, tb, r1 - r0, N, K, pa + r0 * row_a, lda, pb, ldb, pc + r0 * row_c, ldc, like)


def _operand(m, rows, cols):
    """(address, batch stride in bytes, transpose flag, leading dim) of a (rows, cols) matrix
    (or a batch of them) as cblas wants it, or None when BLAS cannot read it in place."""
    item = m.itemsize
    s = m.strides
    batch = 0 if m.ndim == 2 or m.shape[0] == 1 else s[0]
    if s[-1] == item and s[-2] % item == 0 and s[-2] // item >= max(1, cols):
        return m.ctypes.data, batch, NO_TRANS, s[-2] // item
    if s[-2] == item and s[-1] % item == 0 and s[-1] // item >= max(1, rows):
        return m.ctypes.data, batch, TRANS, s[-1] // item
    return None


def _usable(a, b, out, ndim):
    return (AVAILABLE and out.dtype in (np.float32, np.float64) and out.ndim == ndim
            and out.flags.c_contiguous and a.dtype == out.dtype and b.dtype == out.dtype)


def batched(a, b, out):
    """out[n] = a[n] @ b[n] on Numba's pool if the layout allows (True), else False (nothing done).
    out (N, M, Ncols) C-contiguous; a (M, K) or (N or 1, M, K); b (K, Ncols) or (N or 1, K, Ncols)."""
    if not _usable(a, b, out, 3) or a.ndim not in (2, 3) or b.ndim not in (2, 3):
        return False
    nb, M, N = out.shape
    K = a.shape[-1]
    if (a.shape[-2:] != (M, K) or b.shape[-2:] != (K, N) or min(nb, M, N, K) == 0
            or (a.ndim == 3 and a.shape[0] not in (1, nb)) or (b.ndim == 3 and b.shape[0] not in (1, nb))):
        return False
    da, db = _operand(a, M, K), _operand(b, K, N)
    if da is None or db is None:
        return False
    _batched(*da, *db, out.ctypes.data, out.strides[0], out.strides[1] // out.itemsize, nb, M, N, K,
             np.empty(0, out.dtype))
    return True


def split_rows(a, b, out):
    """out = a @ b for 2-D operands, the rows of a and out in two fixed halves on Numba's pool
    (True), or False (nothing done) where the layout or the library does not allow it.
    out (M, N) C-contiguous; a (M, K) and b (K, N), each row-major or a transposed view."""
    if not _usable(a, b, out, 2) or a.ndim != 2 or b.ndim != 2:
        return False
    (M, N), K = out.shape, a.shape[1]
    if a.shape[0] != M or b.shape != (K, N) or min(M, N, K) == 0:
        return False
    da, db = _operand(a, M, K), _operand(b, K, N)
    if da is None or db is None:
        return False
    pa, _, ta, lda = da
    pb, _, tb, ldb = db
    item = out.itemsize
    row_a = (lda if ta == NO_TRANS else 1) * item
    _rows(pa, ta, lda, row_a, pb, tb, ldb, out.ctypes.data, N, N * item, M, N, K,
          np.empty(0, out.dtype))
    return True
