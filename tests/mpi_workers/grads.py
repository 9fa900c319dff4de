"""MPI worker: allreduce_gradients averages every grad with one Allreduce per bucket.

    mpiexec -n P python grads.py

Parameters of mixed shapes and dtypes; rank r's grad is (r + 1) * base (None for one parameter
on rank 0, which counts as zeros). Checks the averaged values and the number of Allreduce
calls for a large bucket (one per dtype) and a small one (split), and broadcast_parameters.
Prints OK on rank 0; any failed check aborts every rank.
"""
import numpy as np
from mpi4py import MPI

from numbanorm import distributed as D
from numbanorm import nn


def main():
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    with D.abort_on_error(comm):
        shapes = [((4, 3), np.float32), ((5,), np.float64), ((2, 2, 2), np.float32),
                  ((7,), np.float32), ((3, 3), np.float64)]
        base = [np.random.default_rng(i).standard_normal(s).astype(d) for i, (s, d) in enumerate(shapes)]
        for bucket_bytes, want_calls in ((1 << 20, 2), (40, 5)):
            params = [nn.Parameter(np.zeros(s, d)) for s, d in shapes]
            for p, b in zip(params, base):
                p.grad = ((rank + 1) * b).astype(b.dtype)
            if rank == 0:
                params[3].grad = None
            calls = D.allreduce_gradients(params, comm, bucket_bytes=bucket_bytes)
            assert calls == want_calls, (bucket_bytes, calls, want_calls)
            ranks_sum = size * (size + 1) / 2
            for i, (p, b) in enumerate(zip(params, base)):
                factor = ranks_sum - (1 if i == 3 else 0)
                want = b.astype(np.float64) * factor / size
                assert p.grad.dtype == b.dtype and p.grad.shape == b.shape
                tol = 1e-6 if b.dtype == np.float32 else 1e-14
                assert np.allclose(p.grad, want, rtol=tol, atol=tol), (i, p.grad, want)
        # broadcast_parameters: every rank ends with rank 0's parameters and buffers
        bn = nn.BatchNorm1d(3, dtype=np.float64)
        bn.weight.data[:] = rank + 1.0
        bn.running_var[:] = rank + 5.0
        D.broadcast_parameters(bn, comm)
        assert np.all(bn.weight.data == 1.0) and np.all(bn.running_var == 5.0)
        if rank == 0:
            print("OK", flush=True)


if __name__ == "__main__":
    main()
