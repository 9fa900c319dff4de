"""MPI worker: data-parallel SGD on a small model; P ranks must track one rank.

    mpiexec -n P python train.py --global-batch 128 --steps 5 --out final.npz

Model: nn.Sequential(Linear(8, 16), BatchNorm1d(16) [SyncBatchNorm when P > 1], ReLU,
Linear(16, 4)), mean squared error over the rank's batch, optim.SGD with momentum.
Every rank draws the same global batch each step
(same seed) and keeps its block (distributed.shard); gradients are averaged with
allreduce_gradients; parameters start from rank 0's (broadcast_parameters: each rank first
initializes with its own seed, so a missing broadcast shows). Rank 0 saves the per-step global
loss, parameters and running stats with save_on_root.
"""
import argparse

import numpy as np
from mpi4py import MPI

from numbanorm import distributed as D
from numbanorm import nn, optim


def build(rank, dtype, sync, comm):
    """Linear -> BatchNorm1d or SyncBatchNorm -> ReLU -> Linear with numbanorm.nn layers; the
    weights come from a seed that differs per rank (broadcast_parameters must fix that)."""
    rngs = [np.random.default_rng([1000 + rank, i]) for i in range(2)]
    bn = nn.SyncBatchNorm(16, comm=comm, dtype=dtype) if sync else nn.BatchNorm1d(16, dtype=dtype)
    return nn.Sequential(nn.Linear(8, 16, dtype=dtype, rng=rngs[0]), bn, nn.ReLU(),
                         nn.Linear(16, 4, dtype=dtype, rng=rngs[1]))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--global-batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--dtype", default="float64")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    comm = MPI.COMM_WORLD
    with D.abort_on_error(comm):
        rank, size = comm.Get_rank(), comm.Get_size()
        dtype = np.dtype(args.dtype)
        model = build(rank, dtype, size > 1, comm)
        D.broadcast_parameters(model, comm)
        opt = optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
        data = np.random.default_rng(7)
        true_w = data.standard_normal((4, 8))
        losses = []
        for step in range(args.steps):
            x = (data.standard_normal((args.global_batch, 8)) * 2 + 1).astype(dtype)
            t = (np.tanh(x @ true_w.T) + 0.1 * data.standard_normal((args.global_batch, 4))).astype(dtype)
            xb, tb = D.shard((x, t), comm)
            model.zero_grad()
            out = model(xb)
            diff = out - tb
            # loss = mean over this rank's batch; averaging the gradients over equal shards
            # gives the gradient of the mean over the global batch
            dloss = (2.0 / diff.size) * diff
            model.backward(dloss.astype(dtype))
            calls = D.allreduce_gradients(model.parameters(), comm)
            assert calls == 1, calls  # one bucket: one Allreduce for all six gradients
            opt.step()
            losses.append(comm.allreduce(float(np.sum(diff.astype(np.float64) ** 2))) / (args.global_batch * 4))
        state = dict(model.state_dict())
        state["losses"] = np.array(losses)
        D.save_on_root(args.out, state, comm)
        if D.is_root(comm):
            print("losses", " ".join(f"{v:.6f}" for v in losses))


if __name__ == "__main__":
    main()
