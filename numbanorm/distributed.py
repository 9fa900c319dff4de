"""Scale-out over MPI (mpi4py): synchronized BatchNorm and data-parallel training helpers.

    mpiexec -n 2 python train.py        # every rank runs the same script

mpi4py is imported lazily (only when a function here needs a communicator), so `import numbanorm`
works without MPI. `comm=None` means `MPI.COMM_WORLD`; any mpi4py intracommunicator works.

SyncBatchNorm (training) -- communication is one message per layer per forward and one per
backward, of size O(C), never one per channel:
  forward   each rank computes its local (count, mean, M2 = count * biased var) per channel with
            the backend's `channel_norm.stats`; ONE Allgather of a (3, C) float64 buffer; every
            rank merges the P triples with Chan's parallel formula in rank order:
                n = na + nb,  d = mean_b - mean_a,
                mean = mean_a + d * nb / n,  M2 = M2_a + M2_b + d^2 * na * nb / n
            Allgather rather than Allreduce: a sum of (n, n*mean, sum x^2) would reintroduce the
            E[x^2] - E[x]^2 cancellation, and the merge in a fixed order gives every rank bitwise
            the same statistics (and running stats), deterministic from run to run, exact for
            uneven batches and for ranks with an empty batch (na = 0 contributes nothing). The
            extra volume (P * 3C instead of 3C doubles) is negligible at these sizes.
            x is then normalized with the global mean and biased variance; running stats are
            updated with the global mean and the global unbiased variance M2 / (n - 1).
  backward  local (sum(dy), sum(dy * (x - mean))) with `channel_norm.backward_sums`; ONE
            Allreduce (sum) of the (2, C) buffer; dx from `backward_from_sums` with the global
            count. dweight and dbias are this rank's contributions (local sums), as in PyTorch:
            the data-parallel gradient average (allreduce_gradients) combines them like every
            other parameter gradient. Summed over ranks they equal single-process BatchNorm's.
GPU arrays: the kernels run on the device; only the (C,) statistics and sums are copied to the
host for MPI (no CUDA-aware MPI needed).
Eval mode (training=False) is plain BatchNorm with the running stats: no communication.

Every rank must call the same collectives in the same order: every rank calls the forward and
the backward of each SyncBatchNorm layer, also a rank whose batch is empty.

Faults: an exception on one rank leaves the others waiting in a collective forever. Run rank
work under `abort_on_error` (or `run_or_abort`): it prints the rank and traceback to stderr and
calls `comm.Abort(1)`, which makes mpiexec kill every rank and exit non-zero. (A rank that dies
outright -- killed, os._exit -- is detected by mpiexec itself, which then kills the others.)
`python -m mpi4py script.py` gives the same abort-on-uncaught-exception behaviour.
Watchdog: a rank that stays alive but never enters a collective (stuck, or looping) would
still hang the others, and a blocking MPI call cannot be interrupted from Python. So every
collective here is non-blocking (Iallgather, Iallreduce, Ibcast, Ibarrier) and polled with
Test() against a deadline, sleeping briefly between polls (a waiting rank does not burn a core).
Past the timeout -- 300 s by default; `set_timeout(seconds)` or the environment variable
NUMBANORM_MPI_TIMEOUT -- the waiting rank prints which collective, its rank and the time waited
to stderr and calls comm.Abort(1): every rank of the job ends with a non-zero exit.
Checkpoints: `save_on_root` writes on rank 0 only, atomically (temp file + os.replace).
"""
import contextlib
import os
import pickle
import sys
import time
import traceback

from typing import Any, Callable, Iterable

import numpy as np

from . import _backend
from .functional._common import Array, Saved, to_host

Comm = Any  # an mpi4py intracommunicator (None in a signature: MPI.COMM_WORLD)


def _mpi():
    try:
        from mpi4py import MPI
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "numbanorm.distributed needs mpi4py and an MPI library: pip install 'numbanorm[mpi]' "
            "(mpi4py and the mpich wheel), then launch with mpiexec -n <ranks>"
        ) from e
    return MPI


def get_comm(comm: Comm | None = None) -> Comm:
    """comm, or MPI.COMM_WORLD when None (mpi4py is imported here, on first use)."""
    return _mpi().COMM_WORLD if comm is None else comm



# ---------------------------------------------------------------- watchdog

DEFAULT_TIMEOUT = 300.0
_timeout = None  # None: NUMBANORM_MPI_TIMEOUT, else DEFAULT_TIMEOUT


def _check_timeout(name, value):
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a positive number of seconds, got {value!r}") from None
    if not seconds > 0:  # rejects NaN too; math.inf means no timeout
        raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
    return seconds


def set_timeout(seconds: float | None) -> None:
    """How long a rank waits in one collective before it aborts the job (seconds > 0;
    math.inf: forever; None: back to NUMBANORM_MPI_TIMEOUT or the default, 300 s)."""
    global _timeout
    _timeout = None if seconds is None else _check_timeout("seconds", seconds)


def get_timeout() -> float:
    """The collective timeout in seconds now in force (see set_timeout)."""
    if _timeout is not None:
        return _timeout
    env = os.environ.get("NUMBANORM_MPI_TIMEOUT")
    return DEFAULT_TIMEOUT if env in (None, "") else _check_timeout("NUMBANORM_MPI_TIMEOUT", env)


def _wait(request, comm, what):
    """Complete a non-blocking collective, or abort the job once get_timeout() has passed."""
    if request.Test():
        return
    timeout = get_timeout()
    start = time.monotonic()
    pause = 1e-5
    while not request.Test():
        waited = time.monotonic() - start
        if waited > timeout:
            rank, size = comm.Get_rank(), comm.Get_size()
            sys.stderr.write(
                f"numbanorm.distributed: rank {rank} of {size} waited {waited:.1f} s in {what} "
                f"(timeout {timeout:g} s, set by numbanorm.distributed.set_timeout or "
                f"NUMBANORM_MPI_TIMEOUT): another rank never entered it; aborting all ranks\n")
            sys.stderr.flush()
            sys.stdout.flush()
            time.sleep(0.2)  # let mpiexec forward the message before Abort tears the job down
            comm.Abort(1)
        time.sleep(pause)
        pause = min(2 * pause, 1e-3)  # fast for quick collectives, at most 1 ms late otherwise


def _allgather(comm, send, recv, what):
    _wait(comm.Iallgather(send, recv), comm, f"Allgather ({what})")


def _allreduce(comm, send, recv, what):
    _wait(comm.Iallreduce(send, recv), comm, f"Allreduce ({what})")


def _barrier(comm, what):
    _wait(comm.Ibarrier(), comm, f"Barrier ({what})")


def _bcast_object(obj, comm, root, what):
    """comm.bcast(obj, root) with the watchdog: the pickled size, then the bytes, by Ibcast."""
    payload = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL) if comm.Get_rank() == root else b""
    size = np.array([len(payload)], np.int64)
    _wait(comm.Ibcast(size, root=root), comm, f"Bcast ({what}, size)")
    buf = np.frombuffer(payload, np.uint8).copy() if comm.Get_rank() == root else np.empty(int(size[0]), np.uint8)
    _wait(comm.Ibcast(buf, root=root), comm, f"Bcast ({what})")
    return obj if comm.Get_rank() == root else pickle.loads(buf.tobytes())


def allreduce_sum(values: np.ndarray, comm: Comm | None = None, what: str = "values") -> np.ndarray:
    """The element-wise sum of a float64 host array over the ranks (a collective, under the
    watchdog: see set_timeout)."""
    comm = get_comm(comm)
    send = np.ascontiguousarray(values, dtype=np.float64)
    total = np.empty_like(send)
    _allreduce(comm, send, total, what)
    return total


_host = to_host  # a float64 NumPy copy of a (C,) statistic from either backend


def _on_backend(be, a):
    """A float64 (C,) host array as the backend wants its statistics (device array on cuda)."""
    return a if be.name == "cpu" else be.to_device(np.ascontiguousarray(a))


# ---------------------------------------------------------------- statistics

def merge_stats(parts: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Chan's parallel merge of per-rank (count, mean, M2) in the order given.

    parts: (P, 3, C) float64 -> (count, mean, M2), count a float, mean and M2 (C,) float64.
    """
    P, _, C = parts.shape
    n = 0.0
    mean = np.zeros(C)
    m2 = np.zeros(C)
    for r in range(P):
        nb = float(parts[r, 0, 0])
        if nb == 0.0:
            continue
        mb, m2b = parts[r, 1], parts[r, 2]
        tot = n + nb
        delta = mb - mean
        mean = mean + delta * (nb / tot)
        m2 = m2 + m2b + delta * delta * (n * nb / tot)
        n = tot
    return n, mean, m2


def _global_stats(be, x3, comm, mask_host=None, mask_kernel=None):
    """Allgather the local (count, mean, M2) of an (N, C, S) array (over the positions selected
    by the (N, S) mask when given); merge -> (count, mean, M2)."""
    N, C, S = x3.shape
    local = np.zeros((3, C))
    count = N * S if mask_host is None else int(mask_host.sum())
    if count > 0 and mask_host is not None:
        first = int(np.argmax(mask_host.reshape(-1)))
        mean, var = be.masked_channel_norm.stats(x3, mask_kernel, first // S, first % S, count)
    elif count > 0:
        mean, var = be.channel_norm.stats(x3)
    if count > 0:
        local[0] = count
        local[1] = _host(mean)
        local[2] = _host(var) * count
    parts = np.empty((comm.Get_size(), 3, C))
    _allgather(comm, local, parts, "SyncBatchNorm forward statistics")
    n, mean, m2 = merge_stats(parts)
    return n, mean, m2


# ---------------------------------------------------------------- functional

def sync_batch_norm(x: Array, weight: Array | None = None, bias: Array | None = None,
                    running_mean: Array | None = None, running_var: Array | None = None,
                    training: bool = True, momentum: float = 0.1, eps: float = 1e-5,
                    comm: Comm | None = None, mask: Array | None = None) -> tuple[Array, Saved]:
    """BatchNorm whose training statistics are taken over the batches of all ranks of `comm`.

    Same arguments, checks and result as functional.batch_norm (x of shape (N, C, *spatial),
    (C,) parameters of x's dtype); N may differ between ranks and may be 0 on some. Every rank
    of comm must call it (a collective). training=False is plain batch_norm (no communication).
    Returns (y, saved) for sync_batch_norm_backward. saved.count is the global number of values
    per channel. mask (bool (N,) or (N, *spatial), this rank's): the statistics come from the
    selected positions of all ranks, as batch_norm's mask; fewer than 2 in all is a ValueError.
    """
    from . import functional as F
    from .functional.norm import mask_input

    if not training:
        return F.batch_norm(x, weight, bias, running_mean, running_var, False, momentum, eps, mask=mask)
    (be, x, weight, bias, running_mean, running_var, dtype, N, C, S, eps,
     momentum) = F.channel_inputs(x, weight, bias, running_mean, running_var, eps, momentum, 2)
    comm = get_comm(comm)
    mask_host = mask_kernel = None
    if mask is not None:
        mask_host, mask_kernel = mask_input(be, mask, x.shape)

    x3 = be.contiguous(x).reshape(N, C, S)
    count, mean, m2 = _global_stats(be, x3, comm, mask_host, mask_kernel)  # the collective
    if count == 1 or (mask is not None and count < 2):  # the count is global: every rank raises
        raise ValueError(
            f"Expected more than 1 {'selected ' if mask is not None else ''}value per channel when "
            f"training, got {int(count)} over all {comm.Get_size()} ranks (this rank's x has shape "
            f"{tuple(x.shape)})"
        )
    fields = dict(op="sync_batch_norm", backend=be, shape=tuple(x.shape), dtype=dtype, weight=weight,
                  has_weight=weight is not None, has_bias=bias is not None, count=int(count),
                  comm=comm, training=True, mask=mask_kernel)
    var = m2 / count if count > 0 else np.zeros(C)
    if count > 0 and running_mean is not None:
        _update_running(be, running_mean, running_var, mean, m2 / (count - 1), momentum)
    if N * S == 0:  # empty local batch: took part in the collective, nothing to normalize
        return be.empty(tuple(x.shape), dtype), F.Saved(**fields)
    # normalize with the global statistics: the eval-mode kernel with them as "running" stats
    y3, mean_b, rstd_b = be.channel_norm.forward(x3, weight, bias, eps, False,
                                                 _on_backend(be, mean), _on_backend(be, var), 0.0)
    saved = F.Saved(x=x3, mean=mean_b, rstd=rstd_b, **fields)
    return y3.reshape(tuple(x.shape)), saved


def _update_running(be, running_mean, running_var, mean, unbiased_var, momentum):
    """running = (1 - momentum) * running + momentum * global statistic, in place."""
    if be.name == "cpu":
        running_mean *= 1.0 - momentum
        running_mean += (momentum * mean).astype(running_mean.dtype)
        running_var *= 1.0 - momentum
        running_var += (momentum * unbiased_var).astype(running_var.dtype)
        return
    for buf, stat in ((running_mean, mean), (running_var, unbiased_var)):
        host = buf.copy_to_host()
        host *= 1.0 - momentum
        host += (momentum * stat).astype(host.dtype)
        buf.copy_to_device(host)


def sync_batch_norm_backward(dy: Array, saved: Saved) -> tuple[Array, Array | None, Array | None]:
    """Gradients of sync_batch_norm: (dx, dweight, dbias); a collective like the forward.

    Takes dy (the forward output's shape, dtype and device) and the forward's `saved`; checks
    both before communicating or computing (a rejected dy on one rank leaves the others to the
    watchdog). Consumes nothing: saved stays valid.

    dx is the gradient of the loss summed over all ranks with respect to this rank's x;
    dweight and dbias are this rank's contributions (see the module docstring).
    """
    from . import functional as F
    from .functional._common import check_saved, grad_output

    if isinstance(saved, F.Saved) and saved.op == "channel":  # training=False: plain batch_norm
        return F.batch_norm_backward(dy, saved)
    check_saved(saved, "sync_batch_norm")
    be = saved.backend
    dy = grad_output(dy, saved)
    C = saved.shape[1]
    local = np.zeros((2, C))
    if saved.x is not None:
        dy3 = be.contiguous(dy).reshape(saved.x.shape)
        sum_dy, sum_dy_xmu = be.channel_norm.backward_sums(saved.x, dy3, saved.mean)
        local[0], local[1] = _host(sum_dy), _host(sum_dy_xmu)
    total = np.empty_like(local)
    _allreduce(saved.comm, local, total, "SyncBatchNorm backward sums")  # the one message
    if saved.x is None:
        dx = be.empty(saved.shape, saved.dtype)
        dw = be.full((C,), 0.0, saved.dtype) if saved.has_weight else None
        db = be.full((C,), 0.0, saved.dtype) if saved.has_bias else None
        return dx, dw, db
    sums = _on_backend(be, total[0]), _on_backend(be, total[1])
    if saved.mask is not None:
        dx, _, _ = be.masked_channel_norm.backward_from_sums(
            saved.x, dy3, saved.mean, saved.rstd, saved.weight, saved.mask, *sums, saved.count)
    else:
        dx, _, _ = be.channel_norm.backward_from_sums(
            saved.x, dy3, saved.mean, saved.rstd, saved.weight, True, *sums, saved.count)
    rstd = _host(saved.rstd)
    dw = _to(be, (local[1] * rstd).astype(saved.dtype)) if saved.has_weight else None
    db = _to(be, local[0].astype(saved.dtype)) if saved.has_bias else None
    return dx.reshape(saved.shape), dw, db


def _to(be, host):
    return host if be.name == "cpu" else be.to_device(host)


# ---------------------------------------------------------------- data parallel

def _grad_to_host(g):
    return _backend.transfer(g, "cpu")


def allreduce_gradients(params: Iterable, comm: Comm | None = None, average: bool = True,
                        bucket_bytes: int = 16 << 20) -> int:
    """Sum (average=True: average) every parameter's .grad across the ranks of comm, in place.

    params: an iterable of Parameters (module.parameters()), in the same order on every rank.
    Gradients are flattened into contiguous buckets (one per dtype, split at bucket_bytes) and
    each bucket is reduced with ONE Allreduce, not one per tensor. A grad that is None counts as
    zeros (so every rank sends the same layout) and is set to the reduced result. Device grads
    are staged through the host. Returns the number of Allreduce calls made.
    """
    comm = get_comm(comm)
    params = [p for p in params]
    size = comm.Get_size()
    by_dtype = {}
    for p in params:
        by_dtype.setdefault(np.dtype(p.data.dtype), []).append(p)
    calls = 0
    for dtype, group in by_dtype.items():
        limit = max(1, bucket_bytes // dtype.itemsize)
        bucket, n = [], 0
        for p in group + [None]:
            if p is not None:
                k = int(np.prod(p.data.shape))
                if not bucket or n + k <= limit:
                    bucket.append(p)
                    n += k
                    continue
            if bucket:
                _reduce_bucket(bucket, n, dtype, comm, size if average else 1)
                calls += 1
            bucket, n = ([p], int(np.prod(p.data.shape))) if p is not None else ([], 0)
    return calls


def _reduce_bucket(bucket, n, dtype, comm, divisor):
    flat = np.zeros(n, dtype)
    offsets = []
    o = 0
    for p in bucket:
        k = int(np.prod(p.data.shape))
        if p.grad is not None:
            flat[o:o + k] = _grad_to_host(p.grad).reshape(-1)
        offsets.append((o, k))
        o += k
    _allreduce(comm, _mpi().IN_PLACE, flat, "allreduce_gradients")
    if divisor != 1:
        flat /= divisor
    for p, (o, k) in zip(bucket, offsets):
        value = flat[o:o + k].reshape(p.data.shape)
        if isinstance(p.data, np.ndarray):
            if p.grad is None or not isinstance(p.grad, np.ndarray) or not p.grad.flags.writeable:
                p.grad = value.copy()
            else:
                p.grad[...] = value
        elif p.grad is None:
            p.grad = _backend.transfer(np.ascontiguousarray(value), "cuda")
        else:
            p.grad.copy_to_device(np.ascontiguousarray(value))


def broadcast_parameters(module, comm: Comm | None = None, root: int = 0):
    """Copy the parameters and buffers (state_dict) of `module` on rank `root` to every rank."""
    comm = get_comm(comm)
    state = module.state_dict() if comm.Get_rank() == root else None
    state = _bcast_object(state, comm, root, "broadcast_parameters")
    module.load_state_dict(state)
    return module


def shard_range(n: int, comm: Comm | None = None, rank: int | None = None,
                size: int | None = None) -> tuple[int, int]:
    """(start, stop) of this rank's contiguous block of n items (sizes differ by at most 1;
    the first n % size ranks get one more). Concatenating the blocks in rank order gives 0..n."""
    if rank is None or size is None:
        comm = get_comm(comm)
        rank, size = comm.Get_rank(), comm.Get_size()
    base, extra = divmod(int(n), int(size))
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def shard(data, comm: Comm | None = None, rank: int | None = None, size: int | None = None):
    """This rank's block along axis 0 of an array (or of each array of a tuple/list).

    Used on a whole dataset it splits the data across ranks; used on a global batch drawn with
    the same seed on every rank it makes P ranks compute exactly what one process does with the
    whole batch (with SyncBatchNorm and allreduce_gradients).
    """
    if isinstance(data, (tuple, list)):
        n = len(data[0])
        start, stop = shard_range(n, comm, rank, size)
        return type(data)(d[start:stop] for d in data)
    start, stop = shard_range(len(data), comm, rank, size)
    return data[start:stop]


# ---------------------------------------------------------------- faults and checkpoints

@contextlib.contextmanager
def abort_on_error(comm: Comm | None = None):
    """Run a block on every rank; an exception in it prints the rank and traceback to stderr and
    calls comm.Abort(1), so mpiexec stops every rank (exit status non-zero) instead of leaving
    the other ranks waiting forever in their next collective. SystemExit(0) passes through."""
    comm = get_comm(comm)
    try:
        yield comm
    except SystemExit as e:
        if e.code in (None, 0):
            raise
        _abort(comm, e)
    except BaseException as e:  # KeyboardInterrupt included: the other ranks must stop too
        _abort(comm, e)


def _abort(comm, exc):
    rank, size = comm.Get_rank(), comm.Get_size()
    msg = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    sys.stderr.write(f"numbanorm.distributed: rank {rank} of {size} failed, aborting all ranks:\n{msg}")
    sys.stderr.flush()
    sys.stdout.flush()
    time.sleep(0.5)  # let mpiexec forward the message before Abort tears the job down
    comm.Abort(1)


def run_or_abort(fn: Callable, *args, comm: Comm | None = None, **kwargs):
    """fn(*args, **kwargs) under abort_on_error(comm); returns its result."""
    with abort_on_error(comm):
        return fn(*args, **kwargs)


def save_on_root(path: str | os.PathLike, state: dict, comm: Comm | None = None,
                 root: int = 0) -> None:
    """Rank `root` writes `state` (a dict of arrays, saved with np.savez) to path atomically:
    a temp file beside path, fsync, os.replace -- a crash never leaves a partial file. The other
    ranks write nothing; all ranks wait at a barrier so nobody reads the file before it exists.
    """
    from ._fileio import atomic_open

    comm = get_comm(comm)
    if comm.Get_rank() == root:
        with atomic_open(path, "wb") as f:
            # np.savez converts each value as it writes it (device arrays copy to the host)
            np.savez(f, **{k: _backend.transfer(v, "cpu") if hasattr(v, "copy_to_host") else v
                           for k, v in state.items()})
    _barrier(comm, "save_on_root")


def is_root(comm: Comm | None = None, root: int = 0) -> bool:
    """True on rank `root` (the rank that prints and saves)."""
    return get_comm(comm).Get_rank() == root
