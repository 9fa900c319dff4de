"""Batched gemms on Numba's own thread pool: out[n] = a[n] @ b[n] for float32/float64 3-D
operands (a or b may be 2-D, shared by every n), each matrix row-major or a transposed view.

Why: a Python worker thread running half of a batched np.matmul has to share the two cores
with Numba's OpenMP workers, which keep spinning for a while after every parallel kernel (the
training step alternates the two). Calling BLAS from inside a Numba `prange` over the two
halves of the batch gives that work to those same workers: one pool only.

BLAS here is the cblas_?gemm of the OpenBLAS that NumPy loaded (numpy.libs), called through
ctypes with one BLAS thread (the caller scopes that, numbanorm/cpu/_blas.py). Each out[n] is one
single-threaded gemm call with the same arguments NumPy's matmul makes, whatever the thread
count. Where that library or a usable layout is missing, `batched` returns False and the caller
uses NumPy.
"""
import ctypes
import glob
import os

import numpy as np
from numba import njit, prange

_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112
_kernels = {}


def gemm_function(dtype):
    """The ctypes cblas_?gemm for dtype (float32/float64) that `batched` uses, or None: for
    Numba kernels that run a gemm per sample and consume its result while it is in cache.
    Arguments: (101 row-major, transA, transB, M, N, K, alpha, A address, lda, B address, ldb,
    beta, C address, ldc); 111 = no transpose, 112 = transpose."""
    if "kernels" not in _kernels:
        _kernels["kernels"] = _load()
    return _kernels.get("gemm", {}).get(np.dtype(dtype))


def _load():
    """{dtype: njit batched kernel} for NumPy's bundled OpenBLAS (64-bit ints), or {}."""
    libs = glob.glob(os.path.join(os.path.dirname(np.__file__), os.pardir, "numpy.libs",
                                  "libscipy_openblas64_*.so"))
    if not libs:
        return {}
    try:
        lib = ctypes.CDLL(libs[0])
        fns = {np.dtype(np.float32): (lib.scipy_cblas_sgemm64_, ctypes.c_float),
               np.dtype(np.float64): (lib.scipy_cblas_dgemm64_, ctypes.c_double)}
    except (OSError, AttributeError):
        return {}
    kernels = {}
    I32, I64, P = ctypes.c_int, ctypes.c_int64, ctypes.c_size_t  # pointers passed as addresses
    for dtype, (fn, scalar) in fns.items():
        fn.argtypes = [I32, I32, I32, I64, I64, I64, scalar, P, I64, P, I64, scalar, P, I64]
        fn.restype = None
        kernels[dtype] = _make_kernel(fn, dtype.type)
    _kernels["gemm"] = {dtype: fn for dtype, (fn, _) in fns.items()}
    _kernels["rows"] = {dtype: _make_rows_kernel(fn, dtype.type) for dtype, (fn, _) in fns.items()}
    return kernels


def _make_kernel(gemm, scalar):
    @njit(parallel=True)
    def kernel(pa, sa, ta, lda, pb, sb, tb, ldb, pc, sc, ldc, nb, M, N, K):
        half = nb // 2
        for t in prange(2):  # the two halves of the batch: fixed, whatever the thread count
            for n in range(t * half, half if t == 0 else nb):
                gemm(_ROW_MAJOR, ta, tb, M, N, K, scalar(1.0), pa + n * sa, lda, pb + n * sb, ldb,
                     scalar(0.0), pc + n * sc, ldc)
    return kernel


def _make_rows_kernel(gemm, scalar):
    @njit(parallel=True)
    def kernel(pa, ta, lda, row_a, pb, tb, ldb, pc, ldc, row_c, M, N, K):
        half = M // 2
        for t in prange(2):  # rows [0, half) and [half, M): fixed, whatever the thread count
            r0 = 0 if t == 0 else half
            r1 = half if t == 0 else M
            if r1 > r0:
                gemm(_ROW_MAJOR, ta, tb, r1 - r0, N, K, scalar(1.0), pa + r0 * row_a, lda, pb, ldb,
                     scalar(0.0), pc + r0 * row_c, ldc)
    return kernel


def _operand(m, rows, cols):
    """(address, batch stride in bytes, transpose flag, leading dim) of a (rows, cols) matrix
    (or a batch of them) as cblas wants it, or None when BLAS cannot read it in place."""
    item = m.itemsize
    s = m.strides
    batch = 0 if m.ndim == 2 or m.shape[0] == 1 else s[0]
    if s[-1] == item and s[-2] % item == 0 and s[-2] // item >= max(1, cols):
        return m.ctypes.data, batch, _NO_TRANS, s[-2] // item
    if s[-2] == item and s[-1] % item == 0 and s[-1] // item >= max(1, rows):
        return m.ctypes.data, batch, _TRANS, s[-1] // item
    return None


def batched(a, b, out):
    """out[n] = a[n] @ b[n] on Numba's pool if the layout allows (True), else False (nothing done).
    out (N, M, Ncols) C-contiguous; a (M, K) or (N or 1, M, K); b (K, Ncols) or (N or 1, K, Ncols)."""
    if "kernels" not in _kernels:
        _kernels["kernels"] = _load()
    kernel = _kernels["kernels"].get(out.dtype)
    if (kernel is None or out.ndim != 3 or not out.flags.c_contiguous or a.dtype != out.dtype
            or b.dtype != out.dtype or a.ndim not in (2, 3) or b.ndim not in (2, 3)):
        return False
    nb, M, N = out.shape
    K = a.shape[-1]
    if (a.shape[-2:] != (M, K) or b.shape[-2:] != (K, N) or min(nb, M, N, K) == 0
            or (a.ndim == 3 and a.shape[0] not in (1, nb)) or (b.ndim == 3 and b.shape[0] not in (1, nb))):
        return False
    da, db = _operand(a, M, K), _operand(b, K, N)
    if da is None or db is None:
        return False
    kernel(*da, *db, out.ctypes.data, out.strides[0], out.strides[1] // out.itemsize, nb, M, N, K)
    return True


def split_rows(a, b, out):
    """out = a @ b for 2-D operands, the rows of a and out in two fixed halves on Numba's pool
    (True), or False (nothing done) where the layout or the library does not allow it.
    out (M, N) C-contiguous; a (M, K) and b (K, N), each row-major or a transposed view."""
    if "kernels" not in _kernels:
        _kernels["kernels"] = _load()
    kernel = _kernels.get("rows", {}).get(out.dtype)
    if (kernel is None or out.ndim != 2 or a.ndim != 2 or b.ndim != 2 or not out.flags.c_contiguous
            or a.dtype != out.dtype or b.dtype != out.dtype):
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
    row_a = (lda if ta == _NO_TRANS else 1) * item
    kernel(pa, ta, lda, row_a, pb, tb, ldb, out.ctypes.data, N, N * item, M, N, K)
    return True
