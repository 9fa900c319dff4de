"""One training step (forward, loss, backward, SGD step) of the demo's reference CNN, numbanorm
vs PyTorch CPU, at the same thread count.

    python benchmarks/bench_train_step.py --batch 128 --steps 20

Both frameworks run at the process's defaults (no thread or wait-policy variable is set) unless
--threads is given, which sets OMP/OpenBLAS/MKL/Numba thread counts before anything loads.

Model: conv(1->32,3x3,pad1)-BN-ReLU-maxpool2-conv(32->64,3x3,pad1)-BN-ReLU-maxpool2-flatten-
linear(3136->128)-ReLU-linear(128->10) on 28x28 inputs.
"""
import argparse
import os
import sys
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=None, help="set every pool's thread count")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--cpu-time", action="store_true",
                    help="time with process CPU time (robust on a shared machine; use with --threads 1)")
    ap.add_argument("--only", choices=["numbanorm", "torch"], help="time one side only")
    ap.add_argument("--profile", action="store_true", help="time each layer's forward/backward")
    args = ap.parse_args()
    if args.threads is not None:
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
            os.environ[var] = str(args.threads)
    import numpy as np

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from benchmarks.test_trainer import ours_model, torch_model
    import numbanorm.nn as nn
    from numbanorm import optim

    B = args.batch
    rng = np.random.default_rng(0)
    x = rng.standard_normal((B, 1, 28, 28)).astype(np.float32)
    labels = rng.integers(0, 10, B)

    model = ours_model()
    crit = nn.CrossEntropyLoss()
    opt = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def ours():
        opt.zero_grad()
        loss = crit.forward(model.forward(x), labels)
        model.backward(crit.backward(), input_grad=False)  # torch: x.requires_grad is False
        opt.step()
        return loss

    import torch
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    tm = torch_model(torch)
    topt = torch.optim.SGD(tm.parameters(), lr=0.01, momentum=0.9)
    tcrit = torch.nn.CrossEntropyLoss()
    xt, lt = torch.from_numpy(x), torch.from_numpy(labels)

    def theirs():
        topt.zero_grad()
        loss = tcrit(tm(xt), lt)
        loss.backward()
        topt.step()
        return loss.item()

    def timeit(fns):
        """Steps of each function interleaved (a shared, busy machine slows both alike);
        the median and the minimum per function."""
        for fn in fns:
            for _ in range(3):
                fn()
        ts = [[] for _ in fns]
        for _ in range(args.steps):
            for fn, t in zip(fns, ts):
                t0 = clock()
                fn()
                t.append(clock() - t0)
        return [(float(np.median(t)), min(t)) for t in ts]

    clock = time.process_time if args.cpu_time else time.perf_counter

    import numba
    print(f"threads: numba {numba.get_num_threads()}, torch {torch.get_num_threads()}; batch {B}; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cpus; "
          f"clock {'process CPU time' if args.cpu_time else 'wall'}; "
          f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(auto)')}, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}")
    sides = [("numbanorm", ours), ("torch", theirs)]
    if args.only:
        sides = [s for s in sides if s[0] == args.only]
    results = timeit([fn for _, fn in sides])
    for (name, _), (med, mn) in zip(sides, results):
        print(f"{name:9s}: median {med * 1e3:7.2f} ms/step ({B / med:6.0f} images/s), "
              f"min {mn * 1e3:7.2f} ms/step ({B / mn:6.0f} images/s)")
    if len(results) == 2:
        (ours_med, ours_min), (th_med, th_min) = results
        print(f"speed-up (torch time / numbanorm time): median {th_med / ours_med:.2f}x, "
              f"min {th_min / ours_min:.2f}x")

    if args.profile:
        times = {}
        for _ in range(args.steps):
            h = x
            for i, m in enumerate(model):
                t0 = time.perf_counter()
                h = m.forward(h)
                times.setdefault(f"{i} {type(m).__name__} fwd", []).append(time.perf_counter() - t0)
            crit.forward(h, labels)
            d = crit.backward()
            for i, m in reversed(list(enumerate(model))):
                t0 = time.perf_counter()
                d = m.backward(d)
                times.setdefault(f"{i} {type(m).__name__} bwd", []).append(time.perf_counter() - t0)
            model.zero_grad()
            t0 = time.perf_counter()
            opt.step()
        for k, v in times.items():
            print(f"  {k:24s} median {np.median(v) * 1e3:7.3f} ms, min {min(v) * 1e3:7.3f} ms")


if __name__ == "__main__":
    main()
