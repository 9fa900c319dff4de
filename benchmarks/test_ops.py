"""Every op, forward and backward, float32, against its contenders in one benchmark group;
a few cases also with float16 or channels-last inputs (Case.variant, in the group's name).

CPU contenders (group "<op> <direction> <shape>"):
  numbanorm  numbanorm.functional on NumPy arrays
  numpy      the tests' plain-NumPy reference (tests/reference.py, textbook form) on float32
  torch      PyTorch CPU with numba's thread count; forwards under no_grad, backwards through
             the native kernels autograd calls (aten::native_*_backward), only the backward timed
  floor      benchmarks/floor.py: streaming kernels over the same bytes
GPU contenders (group "CUDA <op> <direction> <shape>"), only on a real CUDA GPU:
  numbanorm-cuda, torch-cuda, copy-d2d (a device-to-device copy moving the floor's bytes);
  float16 and channels-last cases too (device arrays of the same dtype and memory order)

Every contender's result is checked against a float64 reference before it is timed.
extra_info carries `bytes` (the floor's traffic, benchmarks/floor.py) so the report shows GB/s.
"""
import os
import shutil

import numba
import numpy as np
import pytest

from numbanorm import functional as F

from . import floor
from .cases import cases
from .common import info, quick_mode

try:
    import torch
    import torch.nn.functional as tF

    torch.set_num_threads(numba.get_num_threads())
except ImportError:  # the torch contenders skip
    torch = None

try:
    from tests import reference as ref
except ImportError:  # e.g. benchmarks copied without tests/
    ref = None

EPS = 1e-5
CPU_CONTENDERS = ("numbanorm", "numpy", "torch", "floor")
GPU_CONTENDERS = ("numbanorm-cuda", "torch-cuda", "copy-d2d")
DIRECTIONS = ("forward", "backward")
RTOL = 1e-3  # max |got - want| / max |want|, per output
RTOL_HALF = 4e-3  # the same for float16 outputs


def pytest_generate_tests(metafunc):
    """Items in case -> direction -> contender order, so each group's entries run together."""
    quick = quick_mode(metafunc.config)
    for arg, contenders in (("cpu_item", CPU_CONTENDERS), ("gpu_item", GPU_CONTENDERS)):
        if arg in metafunc.fixturenames:
            items = [(c, d, k) for c in cases(quick) for d in DIRECTIONS for k in contenders]
            ids = [f"{c.op}-{d}-{c.label.replace(' ', '')}-{k}" for c, d, k in items]
            metafunc.parametrize(arg, items, ids=ids)


# ---------------------------------------------------------------- data and the float64 truth

class Data:
    """float32 inputs of one case (C-contiguous) and, lazily, the float64 reference results."""

    def __init__(self, case):
        rng = np.random.default_rng(0)
        shape = case.shape
        self.case = case
        self.x = (rng.standard_normal(shape, dtype=np.float32) * 2.0 + 0.5)
        self.dy = rng.standard_normal(shape, dtype=np.float32)
        pshape = shape[1:] if case.op == "LayerNorm" else (shape[1],)
        self.w = (1.0 + 0.1 * rng.standard_normal(pshape)).astype(np.float32)
        self.b = (0.1 * rng.standard_normal(pshape)).astype(np.float32)
        self.rm = (0.5 + 0.1 * rng.standard_normal(pshape)).astype(np.float32)
        self.rv = (4.0 + rng.random(pshape)).astype(np.float32)
        if case.variant == "float16":
            self.x, self.dy = self.x.astype(np.float16), self.dy.astype(np.float16)
        elif case.variant == "channels-last":
            cl = lambda a: np.moveaxis(np.ascontiguousarray(np.moveaxis(a, 1, -1)), -1, 1)
            self.x, self.dy = cl(self.x), cl(self.dy)
        self._truth = None

    def truth(self):
        """(y, (dx, dweight, dbias)) in float64 from tests/reference.py."""
        if self._truth is None:
            if ref is None:
                pytest.skip("tests/reference.py not importable: nothing to check results against")
            c = self.case
            f = lambda a: a.astype(np.float64)
            x, dy, w, b, rm, rv = (f(a) for a in (self.x, self.dy, self.w, self.b, self.rm, self.rv))
            self._truth = (_reference_forward(c, x, w, b, rm, rv),
                           _reference_backward(c, x, dy, w, rm, rv))
        return self._truth

    @property
    def nbytes(self):
        return self.x.nbytes


_current = {}


def data_for(case):
    """One case's data at a time (the big shapes are ~50 MB per array)."""
    if case not in _current:
        _current.clear()
        _current[case] = Data(case)
    return _current[case]


def _to_host(a):
    if a is None:
        return None
    if torch is not None and isinstance(a, torch.Tensor):
        return a.detach().cpu().numpy()
    return a if isinstance(a, np.ndarray) else a.copy_to_host()


def check(name, got, want, rtol=RTOL):
    """Compare outputs (a single array or a tuple of grads) with the float64 truth."""
    got = got if isinstance(got, tuple) else (got,)
    want = want if isinstance(want, tuple) else (want,)
    for i, (g, w) in enumerate(zip(got, want)):
        if w is None:
            continue
        g = np.asarray(_to_host(g), np.float64).reshape(w.shape)
        err = np.max(np.abs(g - w)) / max(np.max(np.abs(w)), 1e-30)
        assert err < rtol, f"{name}: output {i} differs from the float64 reference by {err:.2e} (relative)"


# ---------------------------------------------------------------- contenders
# Each prepare_* returns a zero-argument callable (what is timed) whose result is the op's
# output: y for a forward, (dx, dweight, dbias) for a backward.

def prepare_numbanorm(case, direction, x, dy, w, b, rm, rv):
    op = case.op
    if op.startswith("BatchNorm"):
        fwd = lambda: F.batch_norm(x, w, b, rm, rv, training=case.training, momentum=0.1, eps=EPS)
        bwd = F.batch_norm_backward
    elif op == "LayerNorm":
        fwd = lambda: F.layer_norm(x, tuple(x.shape[1:]), w, b, EPS)
        bwd = F.layer_norm_backward
    elif op == "GroupNorm":
        fwd = lambda: F.group_norm(x, case.groups, w, b, EPS)
        bwd = F.group_norm_backward
    else:
        fwd = lambda: F.instance_norm(x, eps=EPS)
        bwd = F.instance_norm_backward
    if direction == "forward":
        return lambda: fwd()[0]
    saved = fwd()[1]
    return lambda: bwd(dy, saved)


def prepare_numpy(case, direction, x, dy, w, b, rm, rv):
    if ref is None:
        pytest.skip("tests/reference.py not importable")
    if case.variant:
        pytest.skip("the NumPy reference contender runs the float32 NCHW cases only")
    if direction == "forward":
        return lambda: _reference_forward(case, x, w, b, rm, rv)
    return lambda: _reference_backward(case, x, dy, w, rm, rv)


def _reference_forward(case, x, w, b, rm, rv):
    """The plain-NumPy reference forward (computed in x's dtype); running stats not updated."""
    op = case.op
    if op.startswith("BatchNorm"):
        return ref.batch_norm(x, w, b, rm.copy(), rv.copy(), training=case.training, eps=EPS)[0]
    if op == "LayerNorm":
        return ref.layer_norm(x, x.shape[1:], w, b, EPS)
    if op == "GroupNorm":
        return ref.group_norm(x, case.groups, w, b, EPS)
    return ref.instance_norm(x, eps=EPS)[0]


def _reference_backward(case, x, dy, w, rm, rv):
    """(dx, dweight, dbias) of the reference (InstanceNorm: no affine, dweight/dbias unused)."""
    op = case.op
    if op in ("BatchNorm2d-train", "BatchNorm1d-train"):
        return ref.batch_norm_backward(dy, x, w, rv, training=True, eps=EPS)
    if op == "BatchNorm2d-eval":
        return ref.batch_norm_eval_backward(dy, x, w, rm, rv, eps=EPS)
    if op == "LayerNorm":
        return ref.layer_norm_backward(dy, x, x.shape[1:], w, EPS)
    if op == "GroupNorm":
        return ref.group_norm_backward(dy, x, case.groups, w, EPS)
    return ref.instance_norm_backward(dy, x, eps=EPS)


def prepare_torch(case, direction, x, dy, w, b, rm, rv, device="cpu", sync=None):
    """PyTorch on `device`; tensors are copies of the NumPy inputs."""
    if torch is None:
        pytest.skip("PyTorch not installed (pip install torch, or the 'bench' extra)")
    aten = torch.ops.aten
    t = lambda a: torch.from_numpy(np.array(a)).to(device)
    x, dy, w, b, rm, rv = t(x), t(dy), t(w), t(b), t(rm), t(rv)
    op = case.op
    N, C = int(x.shape[0]), int(x.shape[1])
    mask = [True, True, True]
    if direction == "forward":
        if op.startswith("BatchNorm"):
            fn = lambda: tF.batch_norm(x, rm, rv, w, b, training=case.training, momentum=0.1, eps=EPS)
        elif op == "LayerNorm":
            fn = lambda: tF.layer_norm(x, tuple(x.shape[1:]), w, b, EPS)
        elif op == "GroupNorm":
            fn = lambda: tF.group_norm(x, case.groups, w, b, EPS)
        else:
            fn = lambda: tF.instance_norm(x, eps=EPS)
    else:
        # the kernels autograd would call, with the forward's saved tensors
        if op.startswith("BatchNorm"):
            tr = case.training
            _, sm, si = aten.native_batch_norm(x, w, b, rm, rv, tr, 0.1, EPS)
            fn = lambda: aten.native_batch_norm_backward(dy, x, w, rm, rv, sm, si, tr, EPS, mask)
        elif op == "LayerNorm":
            ns = list(x.shape[1:])
            _, mean, rstd = aten.native_layer_norm(x, ns, w, b, EPS)
            fn = lambda: aten.native_layer_norm_backward(dy, x, ns, mean, rstd, w, b, mask)
        elif op == "GroupNorm":
            HxW, G = x[0, 0].numel(), case.groups
            _, mean, rstd = aten.native_group_norm(x, w, b, N, C, HxW, G, EPS)
            fn = lambda: aten.native_group_norm_backward(dy, x, mean, rstd, w, N, C, HxW, G, mask)
        else:
            # torch.instance_norm is batch_norm over x viewed as (1, N*C, *spatial)
            xr, dyr = x.reshape(1, N * C, -1), dy.reshape(1, N * C, -1)
            _, sm, si = aten.native_batch_norm(xr, None, None, None, None, True, 0.1, EPS)
            fn = lambda: aten.native_batch_norm_backward(dyr, xr, None, None, None, sm, si, True,
                                                         EPS, [True, False, False])
    if sync is None:
        return fn
    return lambda: (fn(), sync())[0]


def prepare_floor(case, direction, x, dy, w, b, rm, rv):
    # the same bytes as flat C arrays; float16 converted as the kernels do (numbanorm.cpu.half)
    x, dy = (np.ascontiguousarray(a) for a in (x, dy))
    if x.dtype == np.float16:
        x, dy = x.view(np.uint16), dy.view(np.uint16)
    out = np.empty_like(x)
    if direction == "forward":
        return lambda: floor.forward(x, out, case.training)
    return lambda: floor.backward(x, dy, out, case.training)


CPU_PREPARE = {"numbanorm": prepare_numbanorm, "numpy": prepare_numpy, "torch": prepare_torch,
               "floor": prepare_floor}


def _expected(data, direction):
    y, grads = data.truth()
    if direction == "forward":
        return y
    if data.case.op == "InstanceNorm2d":
        return (grads[0],)
    return tuple(grads)


def _result_of(direction, out):
    if direction == "backward" and isinstance(out, (tuple, list)):
        return tuple(out)
    return out


def test_cpu(benchmark, cpu_item):
    case, direction, contender = cpu_item
    d = data_for(case)
    fn = CPU_PREPARE[contender](case, direction, d.x, d.dy, d.w, d.b, d.rm.copy(), d.rv.copy())
    if contender != "floor":
        check(f"{contender} {case.group(direction)}", _result_of(direction, fn()),
              _expected(d, direction), RTOL_HALF if d.x.dtype == np.float16 else RTOL)
    benchmark.group = case.group(direction)
    info(benchmark, op=case.op, direction=direction, shape=list(case.shape), contender=contender,
         device="cpu", dtype=str(d.x.dtype), layout=case.variant or "C",
         bytes=floor.floor_bytes(d.nbytes, direction, case.training))
    benchmark(fn)


# ---------------------------------------------------------------- GPU

def gpu_skip_reason():
    """None when a real CUDA GPU is usable from numba.cuda, else why not."""
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        return "CUDA simulator active (NUMBA_ENABLE_CUDASIM=1): GPU timings would be meaningless"
    if shutil.which("nvidia-smi") is None:
        return "no CUDA GPU (nvidia-smi not found)"
    try:
        from numba import cuda

        if not cuda.is_available():
            return "no CUDA GPU (numba.cuda.is_available() is False)"
    except Exception as e:  # numba-cuda missing or broken
        return f"no CUDA GPU usable from numba.cuda ({type(e).__name__}: {e})"
    return None


def _numbanorm_cuda_reason():
    try:
        import numbanorm.cuda as be
    except Exception as e:
        return f"numbanorm CUDA backend not importable ({type(e).__name__}: {e})"
    if not (hasattr(be, "channel_norm") and hasattr(be, "row_norm")):
        return "numbanorm CUDA backend not written yet (numbanorm/cuda has no channel_norm/row_norm)"
    return None


def test_gpu(benchmark, gpu_item):
    case, direction, contender = gpu_item
    reason = gpu_skip_reason()
    if reason:
        pytest.skip(reason)
    from numba import cuda

    d = data_for(case)
    nbytes = floor.floor_bytes(d.nbytes, direction, case.training)
    args = (d.x, d.dy, d.w, d.b, d.rm.copy(), d.rv.copy())
    if contender == "numbanorm-cuda":
        reason = _numbanorm_cuda_reason()
        if reason:
            pytest.skip(reason)
        inner = prepare_numbanorm(case, direction, *(_to_device(a) for a in args))
        fn = lambda: (inner(), cuda.synchronize())[0]
    elif contender == "torch-cuda":
        if torch is None or not torch.cuda.is_available():
            pytest.skip("PyTorch with CUDA not available")
        fn = prepare_torch(case, direction, *args, device="cuda", sync=torch.cuda.synchronize)
    else:
        # read + write of nbytes // 2 each: the same traffic as the op's floor
        src = cuda.device_array(nbytes // 2, np.uint8)
        dst = cuda.device_array(nbytes // 2, np.uint8)
        fn = lambda: (dst.copy_to_device(src), cuda.synchronize())
    if contender != "copy-d2d":
        check(f"{contender} {case.group(direction, 'cuda')}", _result_of(direction, fn()),
              _expected(d, direction), RTOL_HALF if d.x.dtype == np.float16 else RTOL)
    benchmark.group = case.group(direction, "cuda")
    info(benchmark, op=case.op, direction=direction, shape=list(case.shape), contender=contender,
         device="cuda", dtype=str(d.x.dtype), layout=case.variant or "C", bytes=nbytes)
    benchmark(fn)


def _to_device(a):
    """A host array copied to the device in its memory order: C, or channels-last (a moved
    view of its (N, *spatial, C) copy; numba's to_device takes dense C or F arrays only)."""
    from numba import cuda

    if a.flags.c_contiguous:
        return cuda.to_device(a)
    import numbanorm.cuda as ncuda

    return ncuda.moveaxis(cuda.to_device(np.ascontiguousarray(np.moveaxis(a, 1, -1))), -1, 1)
