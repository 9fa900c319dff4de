"""GPU ops launch on the caller's stream (numbanorm.cuda.stream, a PyTorch/CuPy current stream,
else Numba's default stream), and give the same bits on any stream.

Under the simulator, tests/conftest.py records the stream of every kernel launch (fixture
kernel_launches). The simulator cannot wrap external stream handles, so the tests that hand
numbanorm a PyTorch/CuPy stream map each handle to a simulator stream of its own; PyTorch and
CuPy arrays are stood in for by device arrays whose class claims to come from `torch`/`cupy`,
with a stand-in module in sys.modules giving the framework's current stream.
"""
import sys
import types

import numpy as np
import pytest

from numbanorm import cuda_support

pytest.importorskip("numba.cuda")
if not cuda_support.cuda_available():
    pytest.skip("CUDA (or the CUDA simulator) is not usable here", allow_module_level=True)

from numba import cuda  # noqa: E402

import numbanorm.cuda as ncuda  # noqa: E402
from numbanorm import functional as F  # noqa: E402
from numbanorm import nn  # noqa: E402
from numbanorm.cuda import _common  # noqa: E402

from .conftest import SIMULATOR  # noqa: E402

pytestmark = pytest.mark.skipif(not SIMULATOR, reason="launch streams are recorded under the simulator")


@pytest.fixture(autouse=True)
def small_launches(monkeypatch):
    monkeypatch.setattr(ncuda.config, "THREADS", 32)
    monkeypatch.setattr(ncuda.config, "ITEMS_PER_THREAD", 1)
    monkeypatch.setattr(ncuda.config, "TARGET_BLOCKS", 8)


@pytest.fixture
def handles(monkeypatch):
    """cuda.external_stream under the simulator: one simulator stream per handle."""
    streams = {}
    monkeypatch.setattr(_common, "_EXTERNAL", {})
    monkeypatch.setattr(cuda, "external_stream", lambda h: streams.setdefault(h, cuda.stream()))
    return streams


def dev(a):
    return cuda.to_device(np.ascontiguousarray(a))


def rand(shape, seed=0, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def run_all_norms(make=dev):
    """Forward and backward of every norm op (and a layer) on tiny inputs; the results on host."""
    out = []
    x4, dy4 = make(rand((2, 4, 3, 3))), make(rand((2, 4, 3, 3), 1))
    w, b = make(rand(4, 2) + 1), make(rand(4, 3))
    rm, rv = make(np.zeros(4, np.float32)), make(np.ones(4, np.float32))
    calls = [
        (F.batch_norm, (x4, w, b, rm, rv, True), F.batch_norm_backward),
        (F.batch_norm, (x4, w, b, rm, rv, False), F.batch_norm_backward),
        (F.batch_norm, (x4, None, None, rm, rv, False), F.batch_norm_backward),
        (F.layer_norm, (x4, (3, 3), make(rand((3, 3), 4)), None), F.layer_norm_backward),
        (F.group_norm, (x4, 2, w, b), F.group_norm_backward),
        (F.instance_norm, (x4, w, b, rm, rv, True), F.instance_norm_backward),
    ]
    for fwd, args, bwd in calls:
        y, saved = fwd(*args)
        out += [y.copy_to_host(), *(g.copy_to_host() for g in bwd(dy4, saved) if g is not None)]
    mask = make(np.array([[True, False, True], [True, True, True], [False, True, True]] * 2).reshape(2, 9))
    y, saved = F.batch_norm(x4, w, b, rm, rv, True, mask=mask.reshape(2, 3, 3))
    out += [y.copy_to_host(), *(g.copy_to_host() for g in F.batch_norm_backward(dy4, saved))]
    y, saved = F.layer_norm(make(rand((3, 8), 5).astype(np.float16)), 8)
    out += [y.copy_to_host(), F.layer_norm_backward(make(rand((3, 8), 6).astype(np.float16)), saved)[0].copy_to_host()]
    layer = nn.GroupNorm(2, 4, device="cuda")
    out.append(layer.forward(x4).copy_to_host())
    out += [rm.copy_to_host(), rv.copy_to_host()]
    return out


def assert_same(a, b):
    assert len(a) == len(b)
    for u, v in zip(a, b):
        assert u.dtype == v.dtype and u.shape == v.shape
        np.testing.assert_array_equal(u, v)


def test_default_stream_when_nothing_says_otherwise(kernel_launches):
    run_all_norms()
    assert kernel_launches and all(s == 0 for _, s in kernel_launches), kernel_launches


def test_explicit_stream_every_launch_and_same_bits(kernel_launches):
    reference = run_all_norms()
    kernel_launches.clear()
    s = cuda.stream()
    with ncuda.stream(s):
        assert _common.op_stream() is s
        got = run_all_norms()
    assert _common.op_stream() is not s  # the block's end restores the op's own choice
    names = {k for k, _ in kernel_launches}
    assert {"_forward", "_backward_dx", "_plane_partials", "_masked_partials", "_copy_cast"} <= names
    assert all(st is s for _, st in kernel_launches), [k for k, st in kernel_launches if st is not s]
    assert_same(got, reference)


def test_trainer_ops_follow_the_stream(kernel_launches):
    x = dev(rand((2, 1, 6, 6)))
    s = cuda.stream()
    with ncuda.stream(s):
        model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                              nn.Flatten(), nn.Linear(18, 3)).to("cuda")
        logits = model.forward(x)
        loss, saved = F.cross_entropy(logits, np.array([0, 2]))
        model.backward(F.cross_entropy_backward(1.0, saved))
    assert len({k for k, _ in kernel_launches}) >= 6
    assert all(st is s for _, st in kernel_launches), [k for k, st in kernel_launches if st is not s]


@pytest.mark.parametrize("kind", ["int", "torch", "cupy", "protocol"])
def test_stream_objects_of_other_frameworks(kind, handles, kernel_launches):
    given = {"int": 1234,
             "torch": types.SimpleNamespace(cuda_stream=1234),
             "cupy": types.SimpleNamespace(ptr=1234),
             "protocol": types.SimpleNamespace(__cuda_stream__=lambda: (0, 1234))}[kind]
    with ncuda.stream(given):
        F.layer_norm(dev(rand((3, 5))), 5)
    assert kernel_launches and all(st is handles[1234] for _, st in kernel_launches)


def test_bad_stream_is_a_type_error():
    with pytest.raises(TypeError, match="stream must be"):
        with ncuda.stream("default"):
            pass


def _foreign_class(module):
    from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray

    return type("ForeignArray", (FakeCUDAArray,), {"__module__": module, "device": "cuda:0"})


@pytest.mark.parametrize("framework", ["torch", "cupy"])
def test_framework_current_stream(framework, handles, kernel_launches, monkeypatch):
    """Arrays of a framework run on its current stream (read from the already imported module);
    the next op on Numba arrays goes back to the default stream."""
    current = {"handle": 777}
    if framework == "torch":
        fake = types.SimpleNamespace(cuda=types.SimpleNamespace(
            current_stream=lambda device: types.SimpleNamespace(cuda_stream=current["handle"])))
    else:
        fake = types.SimpleNamespace(cuda=types.SimpleNamespace(
            get_current_stream=lambda: types.SimpleNamespace(ptr=current["handle"])))
    monkeypatch.setitem(sys.modules, framework, fake)
    cls = _foreign_class(framework)
    reference = run_all_norms()
    kernel_launches.clear()
    got = run_all_norms(lambda a: cls(np.ascontiguousarray(a)))
    assert kernel_launches and all(st is handles[777] for _, st in kernel_launches)
    assert_same(got, reference)
    kernel_launches.clear()
    current["handle"] = 888  # the caller switched streams: the next op follows
    F.group_norm(cls(rand((2, 4, 3))), 2)
    assert kernel_launches and all(st is handles[888] for _, st in kernel_launches)
    kernel_launches.clear()
    F.group_norm(dev(rand((2, 4, 3))), 2)
    assert kernel_launches and all(st == 0 for _, st in kernel_launches)


def test_framework_module_not_imported_is_not_imported(kernel_launches, monkeypatch):
    """A class claiming to come from a framework that is not imported: numbanorm does not import
    it, and the array interface (none here) decides: the default stream."""
    monkeypatch.delitem(sys.modules, "cupy", raising=False)
    F.layer_norm(_foreign_class("cupy")(rand((3, 5))), 5)
    assert "cupy" not in sys.modules
    assert kernel_launches and all(st == 0 for _, st in kernel_launches)


def test_numba_array_bound_to_a_stream(kernel_launches):
    """A Numba device array bound to a stream (Numba's convention) runs its op there; an explicit
    stream wins over it."""
    s, t = cuda.stream(), cuda.stream()
    x = cuda.to_device(rand((3, 5))).bind(s)
    F.layer_norm(x, 5)
    assert kernel_launches and all(st is s for _, st in kernel_launches)
    kernel_launches.clear()
    with ncuda.stream(t):
        F.layer_norm(x, 5)
    assert kernel_launches and all(st is t for _, st in kernel_launches)


def test_launch_configurations_are_built_once_per_key(monkeypatch):
    """The real-GPU path of _common.launch (the simulator configures its kernel objects in
    place, so there every call configures afresh): one configuration per (kernel, grid, block,
    stream, shared bytes), built by kernel[...] once and reused."""
    built = []

    class Kernel:
        def __getitem__(self, configuration):
            built.append(configuration)
            return object()

    monkeypatch.setattr(_common, "_SIMULATOR", False)
    monkeypatch.setattr(_common, "_LAUNCHES", {})
    k, s = Kernel(), cuda.stream()
    with ncuda.stream(0):
        first = _common.launch(k, 4, 32)
        assert _common.launch(k, 4, 32) is first
        assert _common.launch(k, 4, 32, 256) is not first
    with ncuda.stream(s):
        assert _common.launch(k, 4, 32) is not first
    assert built == [(4, 32, 0, 0), (4, 32, 0, 256), (4, 32, s, 0)]
