"""float16 and channels-last BatchNorm2d (training) against float32 NCHW, side by side in one run.

    python -m benchmarks.layout_dtype_ratios [threads]

Interleaved rounds, best of 15 per op: prints forward/backward ms and the ratios
channels-last / NCHW and float16 / float32 (the issue #13 targets: <= 1.1x and <= 0.75x).
"""
import sys
import time

import numba
import numpy as np

from numbanorm import functional as F


def main(threads=None):
    if threads:
        numba.set_num_threads(threads)
    rng = np.random.default_rng(0)
    for shape in [(32, 64, 28, 28), (64, 64, 56, 56)]:
        N, C, H, W = shape
        xcl = rng.standard_normal((N, H, W, C)).astype(np.float32).transpose(0, 3, 1, 2)
        xn = np.ascontiguousarray(xcl)
        w, b = np.ones(C, np.float32), np.zeros(C, np.float32)
        dy = rng.standard_normal(shape).astype(np.float32)
        dycl = np.moveaxis(np.ascontiguousarray(np.moveaxis(dy, 1, -1)), -1, 1)
        cases = {}
        for name, x, d in (("float32 NCHW", xn, dy), ("float32 channels-last", xcl, dycl),
                           ("float16 NCHW", xn.astype(np.float16), dy.astype(np.float16))):
            _, saved = F.batch_norm(x, w, b)
            cases[name] = (lambda x=x: F.batch_norm(x, w, b),
                           lambda d=d, s=saved: F.batch_norm_backward(d, s))
        best = {k: [np.inf, np.inf] for k in cases}
        for _ in range(15):
            for k, fns in cases.items():
                for i, fn in enumerate(fns):
                    t = time.perf_counter()
                    fn()
                    best[k][i] = min(best[k][i], time.perf_counter() - t)
        base = best["float32 NCHW"]
        print(f"BatchNorm2d-train {shape}, {numba.get_num_threads()} thread(s)")
        for k, (f, g) in best.items():
            print(f"  {k:22s} forward {f * 1e3:7.2f} ms ({f / base[0]:.2f}x)  "
                  f"backward {g * 1e3:7.2f} ms ({g / base[1]:.2f}x)")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else None)
