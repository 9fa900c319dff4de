"""MPI worker: data-parallel SGD on a small model; P ranks must track one rank.

    mpiexec -n P python train.py --global-batch 128 --steps 5 --out final.npz

Model: Linear(8, 16) -> BatchNorm1d(16) [SyncBatchNorm when P > 1] -> ReLU -> Linear(16, 4),
mean squared error over the rank's batch. Every rank draws the same global batch each step
(same seed) and keeps its block (distributed.shard); gradients are averaged with
allreduce_gradients; parameters start from rank 0's (broadcast_parameters: each rank first
initializes with its own seed, so a missing broadcast shows). Rank 0 saves the per-step global
loss, parameters and running stats with save_on_root.
"""
import argparse

import numpy as np
from mpi4py import MPI

from numbanorm import distributed as D
from numbanorm import nn


class Linear(nn.Module):
    """y = x @ W.T + b in NumPy (the library's own Linear may not exist yet)."""

    def __init__(self, fan_in, fan_out, rng, dtype):
        super().__init__()
        bound = 1.0 / np.sqrt(fan_in)
        self.weight = nn.Parameter(rng.uniform(-bound, bound, (fan_out, fan_in)).astype(dtype))
        self.bias = nn.Parameter(rng.uniform(-bound, bound, fan_out).astype(dtype))

    def forward(self, x):
        self._x = x
        return x @ self.weight.data.T + self.bias.data

    def backward(self, dy):
        self._accumulate_grad(self.weight, dy.T @ self._x)
        self._accumulate_grad(self.bias, dy.sum(axis=0))
        return dy @ self.weight.data


class ReLU(nn.Module):
    def forward(self, x):
        self._mask = x > 0
        return x * self._mask

    def backward(self, dy):
        return dy * self._mask


class Net(nn.Module):
    def __init__(self, rng, dtype, sync, comm):
        super().__init__()
        self.fc1 = Linear(8, 16, rng, dtype)
        self.bn = (nn.SyncBatchNorm(16, comm=comm, dtype=dtype) if sync else nn.BatchNorm1d(16, dtype=dtype))
        self.act = ReLU()
        self.fc2 = Linear(16, 4, rng, dtype)
        self.layers = [self.fc1, self.bn, self.act, self.fc2]

    def forward(self, x):
        for m in self.layers:
            x = m(x)
        return x

    def backward(self, dy):
        for m in reversed(self.layers):
            dy = m.backward(dy)
        return dy


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
        model = Net(np.random.default_rng(1000 + rank), dtype, size > 1, comm)
        D.broadcast_parameters(model, comm)
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
            for prm in model.parameters():
                prm.data -= args.lr * prm.grad
            losses.append(comm.allreduce(float(np.sum(diff.astype(np.float64) ** 2))) / (args.global_batch * 4))
        state = dict(model.state_dict())
        state["losses"] = np.array(losses)
        D.save_on_root(args.out, state, comm)
        if D.is_root(comm):
            print("losses", " ".join(f"{v:.6f}" for v in losses))


if __name__ == "__main__":
    main()
