"""Cold start: the first calls in a fresh process, with and without Numba's on-disk cache.

Each round runs a new Python process (so nothing is compiled in memory) that imports numbanorm
and makes the first forward+backward call of each op on a small float32 input. NUMBA_CACHE_DIR
points at
  cold  a fresh, empty temporary directory (every kernel is compiled: the first-use cost)
  warm  a directory filled by one earlier run (the kernels load from the cache)
The timed value is the whole process (interpreter start included); extra_info splits it into
import time and first-call time per op, measured inside the process.
"""
import json
import os
import subprocess
import sys
import tempfile

import pytest

from .common import info

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Runs in the child: prints a JSON dict of seconds.
WORKLOAD = r"""
import json, sys, time
t0 = time.perf_counter()
import numpy as np
from numbanorm import functional as F
out = {"import": time.perf_counter() - t0}
rng = np.random.default_rng(0)
x = rng.standard_normal((8, 16, 8, 8), dtype=np.float32)
dy = rng.standard_normal(x.shape, dtype=np.float32)
w, b = np.ones(16, np.float32), np.zeros(16, np.float32)
rm, rv = np.zeros(16, np.float32), np.ones(16, np.float32)
ops = {
    "batch_norm": (lambda: F.batch_norm(x, w, b, rm, rv, training=True), F.batch_norm_backward),
    "layer_norm": (lambda: F.layer_norm(x, (16, 8, 8)), F.layer_norm_backward),
    "group_norm": (lambda: F.group_norm(x, 4, w, b), F.group_norm_backward),
    "instance_norm": (lambda: F.instance_norm(x), F.instance_norm_backward),
}
for name in sys.argv[1].split(","):
    fwd, bwd = ops[name]
    t = time.perf_counter()
    y, saved = fwd()
    bwd(dy, saved)
    out[name] = time.perf_counter() - t
out["total_in_process"] = time.perf_counter() - t0
print(json.dumps(out))
"""

ALL_OPS = "batch_norm,layer_norm,group_norm,instance_norm"


def run_child(cache_dir, ops):
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
    env.pop("NUMBA_DISABLE_JIT", None)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-c", WORKLOAD, ops], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"child failed:\n{proc.stderr[-3000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("cache", ["cold", "warm"])
def test_coldstart(benchmark, cache, quick, tmp_path):
    ops = "batch_norm" if quick else ALL_OPS
    rounds = 1 if quick else 3
    runs = []
    warmed = str(tmp_path / "warmed")
    if cache == "warm":
        run_child(warmed, ops)  # fill the cache once

    def setup():
        d = warmed if cache == "warm" else tempfile.mkdtemp(prefix="numba-cold-", dir=tmp_path)
        return (d,), {}

    def child(d):
        runs.append(run_child(d, ops))

    benchmark.group = f"coldstart first call ({ops})"
    benchmark.pedantic(child, setup=setup, rounds=rounds, iterations=1)
    # the in-process split of the median round (by total)
    runs.sort(key=lambda r: r["total_in_process"])
    split = runs[len(runs) // 2]
    info(benchmark, op="coldstart", direction="first call", contender=f"numbanorm {cache} cache",
         device="cpu", cache=cache, ops=ops.split(","), seconds=split)
    assert all(v >= 0 for v in split.values())
