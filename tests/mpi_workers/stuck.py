"""MPI worker: one rank stays alive but never enters a collective; the watchdog ends the job.

    mpiexec -n 2 python stuck.py WHERE TIMEOUT

One rank sleeps 120 s (alive, inside no MPI call) -- rank 0, the root, for broadcast (a
root's small Ibcast completes without the receivers), else rank 1 -- the other enters a collective -- WHERE is
forward (SyncBatchNorm forward), grads (allreduce_gradients),
broadcast (broadcast_parameters) or save (save_on_root's barrier) -- with the watchdog timeout
set to TIMEOUT seconds by set_timeout. The waiting rank must print the error and abort the job, so
neither "finished" nor "woke up" is ever printed.
"""
import sys
import time

import numpy as np
from mpi4py import MPI

from numbanorm import distributed as D
from numbanorm import nn


def main():
    where, timeout = sys.argv[1], float(sys.argv[2])
    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    bn = nn.SyncBatchNorm(3, comm=comm, dtype=np.float64)
    x = np.random.default_rng(rank).standard_normal((4, 3))
    bn(x)  # a good step first: both ranks are up
    bn.backward(np.ones_like(x))
    comm.Barrier()
    D.set_timeout(timeout)
    stuck = 0 if where == "broadcast" else 1
    if rank == stuck:
        time.sleep(120)
        print(f"rank {rank} woke up", flush=True)
    print(f"rank {rank} entering {where} at {time.time():.3f}", flush=True)
    if where == "forward":
        bn(x)
    elif where == "grads":
        D.allreduce_gradients(bn.parameters(), comm)
    elif where == "broadcast":
        D.broadcast_parameters(bn, comm)
    elif where == "save":
        D.save_on_root(sys.argv[3], bn.state_dict(), comm)
    print(f"rank {rank} finished", flush=True)


if __name__ == "__main__":
    main()
