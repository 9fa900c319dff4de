"""MPI worker: one rank fails while the others sit in a SyncBatchNorm collective.

    mpiexec -n 2 python fault.py MODE DIR

MODE raise: rank 1 raises inside abort_on_error -> comm.Abort(1) stops rank 0.
MODE die:   rank 1 exits at once with os._exit(3) (no MPI_Finalize, no Python cleanup).
MODE save:  rank 0 fails half-way through save_on_root -> no checkpoint, no temp file, abort.
Without the fault handling, rank 0 would wait forever in the forward's Allgather (or the
barrier of save_on_root); the test gives mpiexec a timeout and expects a non-zero exit.
"""
import os
import sys

import numpy as np
from mpi4py import MPI

from numbanorm import distributed as D
from numbanorm import nn


class Unsaveable:
    """np.asarray of this raises: a failure in the middle of writing the checkpoint."""

    def __array__(self, *args, **kwargs):
        raise RuntimeError("disk full (simulated) while writing the checkpoint")


def main():
    mode, out_dir = sys.argv[1], sys.argv[2]
    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    with D.abort_on_error(comm):
        bn = nn.SyncBatchNorm(3, comm=comm, dtype=np.float64)
        x = np.random.default_rng(rank).standard_normal((4, 3))
        bn(x)  # one good step: every rank is inside MPI
        if mode == "raise" and rank == 1:
            raise RuntimeError("simulated failure on rank 1")
        if mode == "die" and rank == 1:
            sys.stdout.flush()
            os._exit(3)
        if mode == "save":
            state = {"running_mean": bn.running_mean, "weight": bn.weight.data}
            if rank == 0:
                # the first array is written, then the second fails: a partial file without
                # the atomic write
                state["broken"] = Unsaveable()
            D.save_on_root(os.path.join(out_dir, "checkpoint.npz"), state, comm)
        bn(x)  # rank 0 (and others) wait here for the failed rank
        print(f"rank {rank} finished", flush=True)


if __name__ == "__main__":
    main()
