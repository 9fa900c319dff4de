"""Matrix products for the CPU kernels, run so that only one thread pool works at a time.

A training step alternates Numba's parallel kernels (its OpenMP pool) with BLAS gemms (OpenBLAS's
own pool). Left at their defaults the two pools' idle threads spin on the same cores and starve
each other: measured here, a training step took about twice as long as with one pool at a time.
So every gemm of ours runs with BLAS limited to one thread (the previous limit is restored on
return: the user's BLAS setting is never left changed), and a batched product is split into two
halves over the batch, on Numba's own pool (numbanorm/cpu/_cblas.py: BLAS called from a prange,
so no third set of threads competes with Numba's spinning workers), or where that is not
available, one half on a worker thread and one on the calling thread (NumPy releases the GIL in
matmul). Each output is computed by the same single-threaded gemm whatever the split, so results
do not depend on threads.
"""
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from . import _cblas

_lock = threading.Lock()
_state = {}


def _blas_controllers():
    """threadpoolctl's controllers of the loaded BLAS libraries (found once), or () without it."""
    if "blas" not in _state:
        try:
            from threadpoolctl import ThreadpoolController

            _state["blas"] = tuple(ThreadpoolController().select(user_api="blas").lib_controllers)
        except Exception:  # threadpoolctl missing or unable to inspect: leave BLAS as it is
            _state["blas"] = ()
    return _state["blas"]


def _worker():
    if "pool" not in _state:
        _state["pool"] = ThreadPoolExecutor(max_workers=1, thread_name_prefix="numbanorm-gemm")
    return _state["pool"]


class _OneBlasThread:
    """Context: the loaded BLAS libraries use one thread inside, their own setting again after."""

    def __enter__(self):
        _lock.acquire()
        self.saved = [(lc, lc.num_threads) for lc in _blas_controllers()]
        for lc, n in self.saved:
            if n != 1:
                lc.set_num_threads(1)

    def __exit__(self, *exc):
        for lc, n in self.saved:
            if n != 1:
                lc.set_num_threads(n)
        _lock.release()


def matmul(a, b, out):
    """out[...] = a @ b (NumPy broadcasting over the leading dims), BLAS on one thread; when
    out is 3-D or more and its first dim has 2 or more entries, the two halves of that dim run
    concurrently. a or b may have a leading dim of 1 (broadcast)."""
    with _OneBlasThread():
        n = out.shape[0] if out.ndim >= 3 else 1
        if n < 2:
            np.matmul(a, b, out=out)
            return out
        if _cblas.batched(*_squeeze_groups(a, b, out)):
            return out
        h = n // 2

        def halves(m):  # an operand with fewer dims or a leading 1 broadcasts over the batch
            return (m, m) if m.ndim < out.ndim or m.shape[0] == 1 else (m[:h], m[h:])

        (a0, a1), (b0, b1) = halves(a), halves(b)
        other = _worker().submit(np.matmul, a1, b1, out=out[h:])
        np.matmul(a0, b0, out=out[:h])
        other.result()
    return out


def one_blas_thread():
    """Context for callers running BLAS themselves (e.g. Numba kernels calling _cblas.gemm):
    the loaded BLAS libraries on one thread inside, their own setting again after."""
    return _OneBlasThread()


def _squeeze_groups(a, b, out):
    """(a, b, out) as 3-D batches when out is (N, 1, M, Ncols) (a grouped product with one group)."""
    if out.ndim == 4 and out.shape[1] == 1 and all(m.ndim == 4 and m.shape[1] == 1 for m in (a, b)):
        return a[:, 0], b[:, 0], out[:, 0]
    return a, b, out


# Products with fewer multiply-adds than this run on the calling thread (waking Numba's pool
# costs more than a second core saves).
SPLIT_ABOVE = 1 << 20


def dot(a, b):
    """a @ b for 2-D a and b, BLAS on one thread; a large product has the rows of a in two
    halves on Numba's pool (_cblas.split_rows: fixed halves, the same bits for any thread count)."""
    out = np.empty((a.shape[0], b.shape[1]), np.result_type(a, b))
    with _OneBlasThread():
        if a.shape[0] < 2 or a.shape[0] * a.shape[1] * b.shape[1] < SPLIT_ABOVE or not _cblas.split_rows(a, b, out):
            np.matmul(a, b, out=out)
    return out
