"""Per-call budget of the small norm calls: where the microseconds of one call go.

    python -m benchmarks.call_budget [--markdown benchmarks/CALL_BUDGET.md]

For each small shape (benchmarks/cases.py SMALL), forward and backward, through the functional
API and through the nn layer, it measures (best of several timeit repeats, one process):
  total       one call, nothing instrumented
  validation  time inside the argument checks: numbanorm._validate's functions, _backend.select,
              the backward's check of saved / dy, and functional.norm's common-case
              predicates (_common_case, _row_params; the tests written inline in the ops' `if`,
              e.g. momentum's and LayerNorm's x's, count as dispatch)
  numba call  Numba's own cost of entering the compiled code: a no-op jitted function called
              with the same arguments as each compiled entry the op calls
  kernel      time inside the compiled entries (their host-side calls), less the numba call
  dispatch    the rest: Python between the checks and the kernels (views, output allocation,
              the saved state, the layer's bookkeeping)
and PyTorch CPU's time for the same call (the functional forward under no_grad, the native
backward kernel; for the layer rows the same PyTorch calls). Components are measured in a
second, instrumented loop; each instrumented call's timer overhead (calibrated) is subtracted.
"""
import argparse
import sys
import time
import timeit
from collections import defaultdict

import numba

import numbanorm
from numbanorm import _backend
from numbanorm import _validate
from numbanorm import nn
from numbanorm.cpu import channel_norm, row_norm
from numbanorm.functional import norm

from .cases import SMALL
from .test_ops import Data, prepare_numbanorm, prepare_torch

REPEAT = 7


def best_us(fn, number):
    return min(timeit.repeat(fn, number=number, repeat=REPEAT)) / number * 1e6


class Instrument:
    """Wraps the checks and the compiled entries with timers while active."""

    def __init__(self):
        self.ns = defaultdict(int)
        self.calls = defaultdict(int)
        self.kernel_args = []
        self.record = False
        self._patches = []
        for mod in (_validate,):
            for name, fn in list(vars(mod).items()):
                if callable(fn) and getattr(fn, "__module__", None) == mod.__name__ and not name.startswith("_"):
                    self._patches.append((mod, name, "validation"))
        # grad_output's own checks are the wrapped select and _validate.grad_output
        self._patches += [(_backend, "select", "validation"), (norm, "check_saved", "validation"),
                          (norm, "_common_case", "validation"), (norm, "_row_params", "validation")]
        for mod in (row_norm, channel_norm):
            for name, fn in list(vars(mod).items()):
                if isinstance(fn, numba.core.registry.CPUDispatcher):
                    self._patches.append((mod, name, "kernel"))
        self._saved = []

    def _wrap(self, fn, bucket):
        ns, calls, clock = self.ns, self.calls, time.perf_counter_ns

        def timed(*args, **kwargs):
            if bucket == "kernel" and self.record:
                self.kernel_args.append((fn, args))
            t0 = clock()
            try:
                return fn(*args, **kwargs)
            finally:
                ns[bucket] += clock() - t0
                calls[bucket] += 1
        return timed

    def __enter__(self):
        for mod, name, bucket in self._patches:
            fn = getattr(mod, name)
            self._saved.append((mod, name, fn))
            setattr(mod, name, self._wrap(fn, bucket))
        return self

    def __exit__(self, *exc):
        for mod, name, fn in reversed(self._saved):
            setattr(mod, name, fn)
        self._saved.clear()


def instrumented_us(inst, fn, number):
    """{bucket: us per call} inside the instrumented functions; per bucket the best of REPEAT
    loops of `number` calls, less the timer overhead of each instrumented call."""
    best = {}
    for _ in range(REPEAT):
        for b in ("validation", "kernel"):
            inst.ns[b] = inst.calls[b] = 0
        timeit.timeit(fn, number=number)
        for b in ("validation", "kernel"):
            us = (inst.ns[b] - inst.calls[b] * OVERHEAD_NS) / number / 1e3
            best[b] = min(best.get(b, us), us)
    return best


@numba.njit
def _noop(*args):
    return 0


def timer_overhead_ns():
    """What one instrumented call adds: a wrapped no-op against the bare no-op."""
    inst = Instrument()
    bare = lambda: None
    wrapped = inst._wrap(bare, "calibration")
    n = 200000
    return (min(timeit.repeat(wrapped, number=n, repeat=REPEAT))
            - min(timeit.repeat(bare, number=n, repeat=REPEAT))) / n * 1e9


def numba_call_us(kernel_args, number):
    """Numba's entry cost for these compiled calls: _noop with the same arguments."""
    total = 0.0
    for _, args in kernel_args:
        _noop(*args)
        total += best_us(lambda: _noop(*args), number)
    return total


def _layer(case, d):
    C = case.shape[1]
    if case.op.startswith("BatchNorm"):
        layer = nn.BatchNorm2d(C) if len(case.shape) == 4 else nn.BatchNorm1d(C)
        if case.op.endswith("eval"):
            layer.eval()
    elif case.op == "LayerNorm":
        layer = nn.LayerNorm(case.shape[1:])
    elif case.op == "GroupNorm":
        layer = nn.GroupNorm(case.groups, C)
    else:
        layer = nn.InstanceNorm2d(C)
    return layer


def budget(case, direction, api, number):
    d = Data(case)
    args = (d.x, d.dy, d.w, d.b, d.rm.copy(), d.rv.copy())
    if api == "functional":
        fn = prepare_numbanorm(case, direction, *args)
    else:
        layer = _layer(case, d)
        if direction == "forward":
            fn = lambda: layer.forward(d.x)
        else:
            def fn():
                layer.forward(d.x)
                return layer.backward(d.dy)
    fn()
    total = best_us(fn, number)
    if api == "layer" and direction == "backward":  # the layer's backward needs its forward
        fwd = lambda: layer.forward(d.x)
        total -= best_us(fwd, number)
    inst = Instrument()
    with inst:
        inst.record = True
        fn()
        inst.record = False
        kernel_args = list(inst.kernel_args)
        if api == "layer" and direction == "backward":
            fwd_args = []
            inst.record, inst.kernel_args = True, fwd_args
            layer.forward(d.x)
            inst.record = False
            kernel_args = kernel_args[len(fwd_args):]
        parts = instrumented_us(inst, fn, number)
        if api == "layer" and direction == "backward":
            fwd_parts = instrumented_us(inst, fwd, number)
            parts = {b: parts[b] - fwd_parts[b] for b in parts}
    call = numba_call_us(kernel_args, number)
    kernel = parts["kernel"] - call
    torch_fn = prepare_torch(case, direction, *args)
    torch_fn()
    t_torch = best_us(torch_fn, number)
    return {"total": total, "validation": parts["validation"], "numba call": call, "kernel": kernel,
            "dispatch": total - parts["validation"] - parts["kernel"], "torch": t_torch}


OVERHEAD_NS = 0.0
COLUMNS = ("total", "torch", "validation", "dispatch", "numba call", "kernel")


def main(argv=None):
    global OVERHEAD_NS
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--number", type=int, default=2000, help="calls per timeit repeat")
    ap.add_argument("--markdown", help="also write the table to this file")
    args = ap.parse_args(argv)
    OVERHEAD_NS = timer_overhead_ns()
    lines = ["| op | direction | api | " + " | ".join(f"{c} (us)" for c in COLUMNS) + " | x PyTorch |",
             "|---|---|---|" + "---|" * (len(COLUMNS) + 1)]
    print(f"numbanorm {numbanorm.__file__}, {numba.get_num_threads()} threads, timer overhead "
          f"{OVERHEAD_NS:.0f} ns per instrumented call", file=sys.stderr)
    for case in SMALL:
        for direction in ("forward", "backward"):
            for api in ("functional", "layer"):
                r = budget(case, direction, api, args.number)
                cells = " | ".join(f"{r[c]:.1f}" for c in COLUMNS)
                line = (f"| {case.op} {case.label} | {direction} | {api} | {cells} | "
                        f"{r['total'] / r['torch']:.2f}x |")
                lines.append(line)
                print(line, flush=True)
    if args.markdown:
        with open(args.markdown + ".tmp", "w") as f:
            f.write("\n".join(lines) + "\n")
        import os
        os.replace(args.markdown + ".tmp", args.markdown)


if __name__ == "__main__":
    main()
