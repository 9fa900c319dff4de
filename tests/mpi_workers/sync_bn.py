"""MPI worker: SyncBatchNorm on P ranks vs single-process BatchNorm on the concatenated batch.

    mpiexec -n P python sync_bn.py --sizes 1,4,7 --out result.json [--device cuda]

Every rank draws the same global batch (fixed seed), keeps its block of `sizes[rank]` samples,
and runs two training steps and one eval step of nn.SyncBatchNorm (forward + backward with a
random dy). Rank 0 gathers y, dx, the summed dweight/dbias and the running stats, runs
nn.BatchNorm1d/2d on the whole batch in one process, and writes the max abs differences.
"""
import argparse
import json

import numpy as np
from mpi4py import MPI

from numbanorm import distributed as D
from numbanorm import nn

CASES = [  # (dtype, shape of one sample); C = shape[0]
    ("float64", (5,)),
    ("float64", (3, 4, 5)),
    ("float32", (3, 4, 5)),
]


def host(a):
    return a if isinstance(a, np.ndarray) else a.copy_to_host()


def run_case(comm, sizes, dtype, sample_shape, device, seed):
    rank = comm.Get_rank()
    dtype = np.dtype(dtype)
    C = sample_shape[0]
    total = sum(sizes)
    start = sum(sizes[:rank])
    stop = start + sizes[rank]
    rng = np.random.default_rng(seed)
    steps = []
    for _ in range(2):  # a large mean and a spread per channel: stresses the merge
        x = (rng.standard_normal((total,) + sample_shape) * rng.uniform(0.5, 3.0, (1, C) + (1,) * (len(sample_shape) - 1))
             + rng.uniform(-50, 50, (1, C) + (1,) * (len(sample_shape) - 1))).astype(dtype)
        dy = rng.standard_normal(x.shape).astype(dtype)
        steps.append((x, dy))
    x_eval = rng.standard_normal((total,) + sample_shape).astype(dtype)
    weight = rng.uniform(0.5, 1.5, C).astype(dtype)
    bias = rng.standard_normal(C).astype(dtype)

    def put(a):
        return a if device == "cpu" else D._backend.transfer(np.ascontiguousarray(a), "cuda")

    sync = nn.SyncBatchNorm(C, momentum=0.3, comm=comm, dtype=dtype, device=device)
    ref_cls = nn.BatchNorm1d if len(sample_shape) <= 2 else nn.BatchNorm2d
    ref = ref_cls(C, momentum=0.3, dtype=dtype) if rank == 0 else None
    sync.weight.data, sync.bias.data = put(weight), put(bias)
    if ref is not None:
        ref.weight.data, ref.bias.data = weight.copy(), bias.copy()

    diffs = {"y": 0.0, "dx": 0.0, "dweight": 0.0, "dbias": 0.0, "running_mean": 0.0,
             "running_var": 0.0, "y_eval": 0.0}
    scale = {}
    for x, dy in steps:
        sync.zero_grad()
        y = host(sync(put(x[start:stop])))
        dx = host(sync.backward(put(dy[start:stop])))
        ys, dxs = comm.gather(y, 0), comm.gather(dx, 0)
        dws = comm.gather(host(sync.weight.grad), 0)
        dbs = comm.gather(host(sync.bias.grad), 0)
        rms = comm.gather((host(sync.running_mean).copy(), host(sync.running_var).copy(),
                           int(host(sync.num_batches_tracked))), 0)
        if rank == 0:
            ref.zero_grad()
            y0 = ref(x)
            dx0 = ref.backward(dy)
            got = {"y": np.concatenate(ys), "dx": np.concatenate(dxs),
                   "dweight": np.sum(dws, axis=0), "dbias": np.sum(dbs, axis=0),
                   "running_mean": rms[0][0], "running_var": rms[0][1]}
            want = {"y": y0, "dx": dx0, "dweight": ref.weight.grad, "dbias": ref.bias.grad,
                    "running_mean": ref.running_mean, "running_var": ref.running_var}
            for k in got:
                assert got[k].shape == want[k].shape, (k, got[k].shape, want[k].shape)
                assert got[k].dtype == want[k].dtype, (k, got[k].dtype, want[k].dtype)
                d = float(np.max(np.abs(got[k].astype(np.float64) - want[k]))) if want[k].size else 0.0
                diffs[k] = max(diffs[k], d)
                scale[k] = max(scale.get(k, 0.0), float(np.max(np.abs(want[k]))) if want[k].size else 0.0)
            # every rank holds bitwise the same running stats and batch counter
            diffs["ranks_identical"] = all(
                np.array_equal(r[0], rms[0][0]) and np.array_equal(r[1], rms[0][1]) and r[2] == rms[0][2]
                for r in rms)
            diffs["num_batches_tracked"] = [r[2] for r in rms] + [int(ref.num_batches_tracked)]
    # eval: plain BatchNorm with the (synchronized) running stats, no communication
    sync.eval()
    y = host(sync(put(x_eval[start:stop])))
    ys = comm.gather(y, 0)
    if rank == 0:
        ref.eval()
        diffs["y_eval"] = float(np.max(np.abs(np.concatenate(ys).astype(np.float64) - ref(x_eval))))
        diffs["scale"] = scale
    return diffs


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--sizes", required=True, help="per-rank batch sizes, comma-separated")
    p.add_argument("--out", required=True)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    comm = MPI.COMM_WORLD
    with D.abort_on_error(comm):
        if args.device == "cuda":
            import os

            import numbanorm.cuda

            if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
                numbanorm.cuda.config.THREADS = 32  # the simulator runs a thread per CUDA thread
        sizes = [int(s) for s in args.sizes.split(",")]
        if len(sizes) != comm.Get_size():
            raise SystemExit(f"--sizes has {len(sizes)} entries for {comm.Get_size()} ranks")
        results = {}
        for i, (dtype, shape) in enumerate(CASES):
            results[f"{dtype}{list(shape)}"] = run_case(comm, sizes, dtype, shape, args.device, 100 + i)
        if comm.Get_rank() == 0:
            with open(args.out, "w") as f:
                json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
