"""Eval-mode inference of the demo's reference CNN with BatchNorm folded into the convolutions
(numbanorm.nn.utils.fuse_bn_eval) against the same model unfused, side by side in one process.

    python benchmarks/bench_fusion.py --batch 256 --rounds 30 [--threads 1 --cpu-time]

The two models alternate call by call (so machine load hits both alike); prints the median
time of each and the speed-up. --cpu-time uses process CPU time (robust on a shared machine;
use with --threads 1). The outputs are compared before timing.
"""
import argparse
import os
import sys
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=None, help="set every pool's thread count")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--cpu-time", action="store_true")
    args = ap.parse_args()
    if args.threads is not None:
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
            os.environ[var] = str(args.threads)
    import numba
    import numpy as np

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from benchmarks.test_fusion import eval_models

    model, fused, x = eval_models(args.batch)
    y, yf = model(x), fused(x)
    err = float(np.abs(yf - y).max() / np.abs(y).max())
    clock = time.process_time if args.cpu_time else time.perf_counter
    times = {"unfused": [], "fused": []}
    for _ in range(3):  # warm-up
        model(x), fused(x)
    for _ in range(args.rounds):
        for name, m in (("unfused", model), ("fused", fused)):
            t0 = clock()
            m(x)
            times[name].append(clock() - t0)
    med = {k: float(np.median(v)) for k, v in times.items()}
    print(f"batch {args.batch}, {numba.get_num_threads()} Numba threads, {args.rounds} alternating rounds, "
          f"{'CPU' if args.cpu_time else 'wall'} time; max |fused - unfused| / max |y| = {err:.1e}")
    for k in ("unfused", "fused"):
        print(f"  {k:8s} median {med[k] * 1e3:8.2f} ms  ({args.batch / med[k]:,.0f} images/s)")
    print(f"  speed-up of fusion: {med['unfused'] / med['fused']:.3f}x")


if __name__ == "__main__":
    main()
