"""MPI overhead per training step: SyncBatchNorm and allreduce_gradients against the compute.

    pytest benchmarks/test_mpi_overhead.py -s                 # 2 ranks, full shapes
    NUMBANORM_BENCH_QUICK=1 pytest benchmarks/test_mpi_overhead.py -s

The test launches `mpiexec -n 2` on this file (worker mode below) and reports, per rank
(median over repetitions, milliseconds):
  bn           BatchNorm2d forward + backward on the rank's (N, C, H, W) shard, no communication
  sync_bn      SyncBatchNorm forward + backward on the same shard (2 collectives)
  collectives  the two collectives alone: Allgather of (P, 3, C) + Allreduce of (2, C) float64
  grads        allreduce_gradients of the demo CNN's 421,738 float32 gradients (bucketed)
  step         the demo CNN (numbanorm-demo, --norm batch, plain BatchNorm2d) forward + loss +
               backward on the rank's shard of a batch: the compute of one training step
  overhead     sync_bn - bn; and the communication of one demo step (2 SyncBN layers' collectives
               + the gradient allreduce) as a share of that step's compute.
Skipped where mpi4py or mpiexec is missing. Ranks run with one Numba thread each.
"""
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve()
ROOT = HERE.parent.parent
RANKS = 2
DEMO_PARAMS = 421_738  # float32 parameters of numbanorm-demo's CNN


def _mpiexec():
    local = Path(sys.executable).parent / "mpiexec"
    return str(local) if local.exists() else shutil.which("mpiexec")


def _have_mpi4py():
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return False
    return True


# ---------------------------------------------------------------- worker (runs under mpiexec)

def _median_ms(fn, reps, comm):
    fn()  # warm-up (compilation, first-touch)
    times = []
    for _ in range(reps):
        comm.Barrier()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times))


def worker(shape, batch, reps, out):
    from mpi4py import MPI

    from numbanorm import demo
    from numbanorm import distributed as D
    from numbanorm import nn

    comm = MPI.COMM_WORLD
    with D.abort_on_error(comm):
        N, C, H, W = shape
        rng = np.random.default_rng(comm.Get_rank())
        x = rng.standard_normal(shape).astype(np.float32)
        dy = rng.standard_normal(shape).astype(np.float32)
        bn, sbn = nn.BatchNorm2d(C), nn.SyncBatchNorm(C, comm=comm)

        def step(m):
            m.zero_grad()
            m(x)
            m.backward(dy)

        local = np.zeros((3, C))
        gathered = np.empty((comm.Get_size(), 3, C))
        sums = np.zeros((2, C))
        total = np.empty_like(sums)

        def collectives():
            comm.Allgather(local, gathered)
            comm.Allreduce(sums, total)

        grads = [nn.Parameter(np.zeros(n, np.float32)) for n in (288, 32, 32, 18432, 64, 64, 401408, 128, 1280, 10)]
        assert sum(int(p.data.size) for p in grads) == DEMO_PARAMS
        for p in grads:
            p.grad = rng.standard_normal(p.data.shape).astype(np.float32)

        model, crit = demo.build_model("batch", seed=0), nn.CrossEntropyLoss()
        images = rng.standard_normal((batch, 1, 28, 28)).astype(np.float32)
        labels = rng.integers(0, 10, batch)

        def train_step():
            model.zero_grad()
            crit.forward(model.forward(images), labels)
            model.backward(crit.backward())

        r = {"ranks": comm.Get_size(), "shape_per_rank": list(shape), "demo_batch_per_rank": batch,
             "step_ms": _median_ms(train_step, reps, comm),
             "bn_ms": _median_ms(lambda: step(bn), reps, comm),
             "sync_bn_ms": _median_ms(lambda: step(sbn), reps, comm),
             "collectives_ms": _median_ms(collectives, reps, comm),
             "grads_ms": _median_ms(lambda: D.allreduce_gradients(grads, comm), reps, comm)}
        r["sync_overhead_ms"] = r["sync_bn_ms"] - r["bn_ms"]
        # per demo step: 2 norm layers (2 x the collectives) + one gradient allreduce
        r["comm_per_step_ms"] = 2 * r["collectives_ms"] + r["grads_ms"]
        r["comm_share_of_step"] = r["comm_per_step_ms"] / r["step_ms"]
        results = comm.gather(r, 0)
        if comm.Get_rank() == 0:
            worst = {k: max(x[k] for x in results) for k in r if k.endswith("_ms")}
            worst["comm_share_of_step"] = worst["comm_per_step_ms"] / worst["step_ms"]
            with open(out, "w") as f:
                json.dump({**r, **worst}, f, indent=1)


# ---------------------------------------------------------------- the benchmark

@pytest.mark.skipif(not (_have_mpi4py() and _mpiexec()),
                    reason="needs mpi4py and mpiexec: pip install mpi4py mpich (numbanorm[mpi])")
def test_mpi_overhead(benchmark, quick, tmp_path):
    shape, batch, reps = ((8, 8, 8, 8), 8, 3) if quick else ((32, 64, 28, 28), 64, 20)
    out = tmp_path / "mpi_overhead.json"
    env = dict(os.environ, NUMBA_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    cmd = [_mpiexec(), "-n", str(RANKS), sys.executable, str(HERE), "--worker",
           ",".join(map(str, shape)), str(batch), str(reps), str(out)]

    def run():
        res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, f"exit {res.returncode}\n{res.stdout}\n{res.stderr}"
        return json.loads(out.read_text())

    r = benchmark.pedantic(run, rounds=1, iterations=1)
    benchmark.extra_info.update(r)
    print(f"\nMPI overhead, {r['ranks']} ranks, per-rank shard {tuple(r['shape_per_rank'])} float32 "
          f"(slowest rank, median ms):\n"
          f"  BatchNorm2d fwd+bwd {r['bn_ms']:.3f}   SyncBatchNorm fwd+bwd {r['sync_bn_ms']:.3f}   "
          f"overhead {r['sync_overhead_ms']:.3f}\n"
          f"  collectives of one SyncBN layer {r['collectives_ms']:.3f}   "
          f"allreduce_gradients ({DEMO_PARAMS:,} float32) {r['grads_ms']:.3f}\n"
          f"  demo CNN step (batch {r['demo_batch_per_rank']} per rank) {r['step_ms']:.3f}   "
          f"communication per step {r['comm_per_step_ms']:.3f} = "
          f"{100 * r['comm_share_of_step']:.1f}% of the step's compute")


if __name__ == "__main__" and len(sys.argv) == 6 and sys.argv[1] == "--worker":
    worker(tuple(int(v) for v in sys.argv[2].split(",")), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
