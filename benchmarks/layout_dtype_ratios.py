"""float16 and channels-last norm ops against float32 NCHW, side by side in one run.

    python -m benchmarks.layout_dtype_ratios [threads] [rounds] [only] [clock]

For each op at a large benchmark shape: forward/backward ms of float32 NCHW, float16 and
bfloat16 (with ml_dtypes; float32 parameters: mixed precision), channels-last float32
(BatchNorm, GroupNorm, InstanceNorm; float16 channels-last too, also against float16 NCHW) and
the memory floors of float32 and float16 (benchmarks/floor.py: the same bytes streamed, no
more), with the ratio of each to float32 NCHW (the issue #13 targets: float16 <= 0.75x,
channels-last <= 1.1x). Interleaved rounds, best of `rounds` (15) per row; before every timed
call the caches are evicted (EVICT_BYTES read), so every row starts from memory alike: without
that, a row timed right after rows that touched the same arrays (the float32 NCHW row after
the floor rows, which read its x and dy) could find them in L3 while the others did not.
Shapes whose calls take ~0.3 ms (the 28x28 ones) still vary by up to ~1.3x from run to run on
this shared 2-core machine: compare ratios within a run. `only`: run just the
ops whose "op shape" (e.g. "GroupNorm 32x256x28x28") contains one of these comma-separated
strings, e.g. "32x64x28x28" ("" for all). `clock`: "wall" (the default) or "cpu": the calling
thread's CPU time (time.thread_time), for 1 thread only, where the kernels run on the calling
thread: on a shared, busy machine it leaves out the time the thread waits descheduled (2 cores,
load 4-6, 2026-11-25: one channels-last forward ratio read 1.03x and 2.11x in two wall-clock
runs of 9 rounds; with the cpu clock repeated runs agreed within ~0.1x forward, ~0.3x backward,
the rest being other processes' use of the caches).
"""
import sys
import time

import numba
import numpy as np

from numbanorm import functional as F
from numbanorm._validate import BFLOAT16

from . import floor

OPS = [  # (op, shape, channels-last rows)
    ("BatchNorm2d-train", (64, 64, 56, 56), True),
    ("BatchNorm2d-train", (32, 64, 28, 28), True),
    ("BatchNorm2d-eval", (64, 64, 56, 56), False),
    ("LayerNorm", (4096, 1024), False),
    ("GroupNorm", (32, 256, 28, 28), True),
    ("GroupNorm", (32, 64, 28, 28), True),
    ("GroupNorm", (64, 64, 56, 56), True),
    ("InstanceNorm2d", (32, 64, 28, 28), True),
    ("InstanceNorm2d", (64, 64, 56, 56), True),
]


def _op(op, shape):
    """(forward(x, w, b) -> (y, saved), backward(dy, saved), parameter shape)."""
    if op.startswith("BatchNorm"):
        training = op.endswith("train")
        rm, rv = np.zeros(shape[1], np.float32), np.ones(shape[1], np.float32)
        return (lambda x, w, b: F.batch_norm(x, w, b, rm, rv, training),
                F.batch_norm_backward, (shape[1],))
    if op == "LayerNorm":
        return (lambda x, w, b: F.layer_norm(x, shape[-1], w, b), F.layer_norm_backward,
                (shape[-1],))
    if op == "GroupNorm":
        return lambda x, w, b: F.group_norm(x, 32, w, b), F.group_norm_backward, (shape[1],)
    return lambda x, w, b: F.instance_norm(x), F.instance_norm_backward, (shape[1],)


def _channels_last(a):
    return np.moveaxis(np.ascontiguousarray(np.moveaxis(a, 1, -1)), -1, 1)


def _rows(op, shape, channels_last, rng):
    """{row name: (forward, backward) thunks} for one op and shape."""
    forward, backward, pshape = _op(op, shape)
    x = rng.standard_normal(shape).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    w, b = np.ones(pshape, np.float32), np.zeros(pshape, np.float32)
    data = {"float32": (x, dy), "float16": (x.astype(np.float16), dy.astype(np.float16))}
    if BFLOAT16 is not None:
        data["bfloat16"] = (x.astype(BFLOAT16), dy.astype(BFLOAT16))
    if channels_last:
        data["float32 channels-last"] = (_channels_last(x), _channels_last(dy))
        # float16 channels-last: compare with float16 NCHW
        data["float16 channels-last"] = tuple(_channels_last(a) for a in data["float16"])
    rows = {}
    for name, (xa, da) in data.items():
        _, saved = forward(xa, w, b)
        rows[name] = (lambda xa=xa: forward(xa, w, b), lambda da=da, s=saved: backward(da, s))
    training = op != "BatchNorm2d-eval"
    for name in ("float32", "float16"):
        xa, da = data[name]
        out = np.empty_like(xa)
        rows[f"{name} floor"] = (lambda xa=xa, out=out: floor.forward(xa, out, training),
                                 lambda xa=xa, da=da, out=out: floor.backward(xa, da, out, training))
    return rows


EVICT_BYTES = 96 << 20  # read before each timed call: three times this machine's 32 MB L3


def main(threads=None, rounds=15, only=None, clock="wall"):
    if threads:
        numba.set_num_threads(threads)
    if clock not in ("wall", "cpu"):
        raise ValueError(f"clock must be 'wall' or 'cpu', got {clock!r}")
    if clock == "cpu" and numba.get_num_threads() != 1:
        raise ValueError("clock 'cpu' counts the calling thread only: run it with threads = 1, "
                         f"got {numba.get_num_threads()} threads")
    now = time.thread_time if clock == "cpu" else time.perf_counter
    rng = np.random.default_rng(0)
    evict = np.ones(EVICT_BYTES // 8)  # summed: the caches filled with other, clean lines
    for op, shape, channels_last in OPS:
        name = f"{op} {'x'.join(map(str, shape))}"
        if only and not any(o in name for o in only.split(",")):
            continue
        rows = _rows(op, shape, channels_last, rng)
        best = {k: [np.inf, np.inf] for k in rows}
        for _ in range(rounds):
            for k, fns in rows.items():
                for i, fn in enumerate(fns):
                    evict.sum()
                    t = now()
                    fn()
                    best[k][i] = min(best[k][i], now() - t)
        base = best["float32"]
        print(f"{name}, {numba.get_num_threads()} thread(s), {clock} clock")
        for k, (f, g) in best.items():
            line = (f"  {k:22s} forward {f * 1e3:7.2f} ms ({f / base[0]:.2f}x)  "
                    f"backward {g * 1e3:7.2f} ms ({g / base[1]:.2f}x)")
            if k.endswith(" channels-last"):  # the issue #13 target: against NCHW of its dtype
                same = best[k.split()[0]]
                line += f"  vs {k.split()[0]} NCHW {f / same[0]:.2f}x / {g / same[1]:.2f}x"
            print(line)


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]), *sys.argv[3:5])
