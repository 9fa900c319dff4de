"""GPU backend (numbanorm.cuda) against the CPU backend, op by op, forward and backward.

Runs on a real GPU when there is one, else under Numba's CUDA simulator (tests/conftest.py).
The simulator runs one Python thread per CUDA thread, so shapes stay tiny and the fixture
below shrinks the blocks to one warp, the partial chunks to one item per thread and the grids
to a few blocks: sizes not a multiple of 32, rows shorter than a warp, grid-stride loops and
BatchNorm with few channels split over several partial blocks all show up at these sizes.
"""
import os

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

SIMULATOR = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
DTYPES = [np.float32, np.float64]


@pytest.fixture(autouse=True)
def small_launches(monkeypatch):
    monkeypatch.setattr(ncuda.config, "THREADS", 32)
    monkeypatch.setattr(ncuda.config, "ITEMS_PER_THREAD", 1)
    monkeypatch.setattr(ncuda.config, "TARGET_BLOCKS", 8)


def dev(a):
    return None if a is None else cuda.to_device(np.ascontiguousarray(a))


def host(a):
    return None if a is None else a.copy_to_host()


def tol(dtype):
    return dict(rtol=2e-5, atol=2e-5) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-10)


def assert_close(gpu, cpu, dtype):
    if cpu is None:
        assert gpu is None
        return
    assert cuda.devicearray.is_cuda_ndarray(gpu), type(gpu)
    got = host(gpu)
    assert got.dtype == cpu.dtype and got.shape == cpu.shape
    np.testing.assert_allclose(got, cpu, **tol(dtype))


def randn(rng, shape, dtype, loc=0.0):
    return (loc + rng.standard_normal(shape)).astype(dtype)


def check_op(forward, backward, x, params, dtype, rng, **kw):
    """Run forward + backward on both backends with a random dy; compare everything.
    params: dict of (C,) arrays or None; running stats in it are compared after the call."""
    cpu_params = {k: (None if v is None else v.copy()) for k, v in params.items()}
    gpu_params = {k: dev(v) for k, v in params.items()}
    y, saved = forward(x, **cpu_params, **kw)
    yg, savedg = forward(dev(x), **gpu_params, **kw)
    assert_close(yg, y, dtype)
    for k in params:
        if k.startswith("running") and params[k] is not None:
            assert_close(gpu_params[k], cpu_params[k], dtype)
    dy = randn(rng, y.shape, dtype)
    for g, c in zip(backward(dev(dy), savedg), backward(dy, saved)):
        assert_close(g, c, dtype)


# ---------------------------------------------------------------- BatchNorm

# (shape, dtype, affine): (40, 2) and (4, 2, 20) split two channels over several partial
# blocks; (6, 33) takes the column layout; (1, 2, 5) has N = 1.
BN_CASES = [((3, 5, 7), np.float32, True), ((3, 5, 7), np.float64, False),
            ((2, 3, 3, 3), np.float64, True), ((40, 2), np.float32, False),
            ((6, 33), np.float64, True), ((4, 2, 20), np.float32, True),
            ((1, 2, 5), np.float64, True)]


@pytest.mark.parametrize("shape, dtype, affine", BN_CASES)
@pytest.mark.parametrize("mode", ["train_running", "train", "eval"])
def test_batch_norm_matches_cpu(shape, dtype, affine, mode):
    rng = np.random.default_rng(hash((shape, mode)) % 2**32)
    C = shape[1]
    x = randn(rng, shape, dtype, loc=0.5)
    params = dict(
        weight=randn(rng, C, dtype) if affine else None,
        bias=randn(rng, C, dtype) if affine else None,
        running_mean=randn(rng, C, dtype) if mode != "train" else None,
        running_var=(rng.random(C) + 0.5).astype(dtype) if mode != "train" else None,
    )
    check_op(F.batch_norm, F.batch_norm_backward, x, params, dtype, rng,
             training=mode != "eval", momentum=0.3, eps=1e-4)


def test_batch_norm_stats_and_sums_match_cpu():
    from numbanorm.cpu import channel_norm as cpu_cn

    rng = np.random.default_rng(1)
    x = randn(rng, (5, 3, 11), np.float64, loc=3.0)
    dy = randn(rng, x.shape, np.float64)
    m, v = cpu_cn.stats(x)
    mg, vg = ncuda.channel_norm.stats(dev(x))
    assert_close(mg, m, np.float64)
    assert_close(vg, v, np.float64)
    for g, c in zip(ncuda.channel_norm.backward_sums(dev(x), dev(dy), dev(m)),
                    cpu_cn.backward_sums(x, dy, m)):
        assert_close(g, c, np.float64)


# ---------------------------------------------------------------- row norms

@pytest.mark.parametrize("shape, nshape, dtype, affine", [
    ((3, 5, 7), (7,), np.float32, True), ((3, 5, 7), (5, 7), np.float64, False),
    ((4, 40), (40,), np.float64, True), ((4, 40), (40,), np.float32, False),
    ((2, 3), (3,), np.float32, True), ((2, 1, 33), (1, 33), np.float64, True)])
def test_layer_norm_matches_cpu(shape, nshape, dtype, affine):
    rng = np.random.default_rng(2)
    x = randn(rng, shape, dtype, loc=-1.0)
    params = dict(weight=randn(rng, nshape, dtype) if affine else None,
                  bias=randn(rng, nshape, dtype) if affine else None)
    check_op(F.layer_norm, F.layer_norm_backward, x, params, dtype, rng, normalized_shape=nshape)


@pytest.mark.parametrize("shape, groups, dtype, affine", [
    ((2, 4, 3, 3), 1, np.float32, True), ((2, 4, 3, 3), 2, np.float64, True),
    ((2, 4, 3, 3), 4, np.float64, False), ((3, 6, 5), 3, np.float32, False),
    ((1, 4, 9), 2, np.float64, True)])
def test_group_norm_matches_cpu(shape, groups, dtype, affine):
    rng = np.random.default_rng(3)
    C = shape[1]
    x = randn(rng, shape, dtype, loc=2.0)
    params = dict(weight=randn(rng, C, dtype) if affine else None,
                  bias=randn(rng, C, dtype) if affine else None)
    check_op(F.group_norm, F.group_norm_backward, x, params, dtype, rng, num_groups=groups)


@pytest.mark.parametrize("shape, dtype", [((2, 4, 3, 3), np.float32), ((3, 5, 7), np.float64),
                                          ((2, 3, 40), np.float32)])
@pytest.mark.parametrize("mode", ["input_stats", "input_stats_running", "running_stats"])
def test_instance_norm_matches_cpu(shape, dtype, mode):
    rng = np.random.default_rng(4)
    C = shape[1]
    x = randn(rng, shape, dtype)
    running = mode != "input_stats"
    params = dict(weight=randn(rng, C, dtype), bias=randn(rng, C, dtype),
                  running_mean=randn(rng, C, dtype) if running else None,
                  running_var=(rng.random(C) + 0.5).astype(dtype) if running else None)
    check_op(F.instance_norm, F.instance_norm_backward, x, params, dtype, rng,
             use_input_stats=mode != "running_stats", momentum=0.2)


@pytest.mark.parametrize("threads", [32, 64])
def test_block_sizes_agree(threads, monkeypatch):
    """Larger blocks exercise more levels of the shared-memory tree."""
    monkeypatch.setattr(ncuda.config, "THREADS", threads)
    rng = np.random.default_rng(5)
    x = randn(rng, (3, 70), np.float64)
    check_op(F.layer_norm, F.layer_norm_backward, x, dict(weight=randn(rng, 70, np.float64), bias=None),
             np.float64, rng, normalized_shape=(70,))
    x = randn(rng, (5, 2, 30), np.float64)
    check_op(F.batch_norm, F.batch_norm_backward, x, dict(weight=None, bias=None), np.float64, rng)


def test_bad_threads_config(monkeypatch):
    monkeypatch.setattr(ncuda.config, "THREADS", 48)
    with pytest.raises(ValueError, match="THREADS"):
        F.layer_norm(dev(np.ones((2, 3))), 3)


# ---------------------------------------------------------------- numerics, determinism

@pytest.mark.parametrize("op", ["batch", "layer", "group", "instance"])
def test_large_mean(op):
    rng = np.random.default_rng(6)
    x = (1e4 + rng.standard_normal((4, 3, 10))).astype(np.float32)
    x64 = x.astype(np.float64)
    if op == "batch":
        yg, _ = F.batch_norm(dev(x))
        axes = (0, 2)
    elif op == "layer":
        yg, _ = F.layer_norm(dev(x), (3, 10))
        axes = (1, 2)
    elif op == "group":
        yg, _ = F.group_norm(dev(x), 1)
        axes = (1, 2)
    else:
        yg, _ = F.instance_norm(dev(x))
        axes = (2,)
    ref = (x64 - x64.mean(axis=axes, keepdims=True)) / np.sqrt(x64.var(axis=axes, keepdims=True) + 1e-5)
    np.testing.assert_allclose(host(yg), ref, atol=1e-5)


@pytest.mark.parametrize("op", ["batch", "layer", "group", "instance"])
def test_eps_sized_effects_float32(op):
    """Small variance (1e-4) against eps=1e-3: eps changes y by ~5%, and an eps-sized error (eps
    dropped, added twice, or taken from the wrong place) is orders above the tolerance."""
    rng = np.random.default_rng(8)
    x = (0.01 * rng.standard_normal((4, 3, 10)) + 2.0).astype(np.float32)
    x64, eps = x.astype(np.float64), 1e-3
    fn = {"batch": lambda a: F.batch_norm(a, eps=eps), "layer": lambda a: F.layer_norm(a, (3, 10), eps=eps),
          "group": lambda a: F.group_norm(a, 1, eps=eps), "instance": lambda a: F.instance_norm(a, eps=eps)}[op]
    axes = {"batch": (0, 2), "layer": (1, 2), "group": (1, 2), "instance": (2,)}[op]
    ref = (x64 - x64.mean(axis=axes, keepdims=True)) / np.sqrt(x64.var(axis=axes, keepdims=True) + eps)
    np.testing.assert_allclose(host(fn(dev(x))[0]), ref, rtol=1e-5, atol=1e-5)


def test_deterministic():
    rng = np.random.default_rng(7)
    x = dev(randn(rng, (8, 2, 50), np.float32))
    dy = dev(randn(rng, (8, 2, 50), np.float32))
    w = dev(randn(rng, 2, np.float32))

    def run():
        y, s = F.batch_norm(x, w, None)
        dx, dw, _ = F.batch_norm_backward(dy, s)
        y2, s2 = F.group_norm(x, 2, w)
        dx2, dw2, _ = F.group_norm_backward(dy, s2)
        return [host(a) for a in (y, dx, dw, y2, dx2, dw2)]

    for a, b in zip(run(), run()):
        assert np.array_equal(a, b)


def test_nan_propagates_to_its_channel():
    x = np.ones((3, 2, 4))
    x[1, 0, 2] = np.nan
    y, _ = F.batch_norm(dev(x))
    y = host(y)
    assert np.isnan(y[:, 0]).all() and not np.isnan(y[:, 1]).any()


# ---------------------------------------------------------------- errors and placement

BAD_CALLS = [
    lambda d: F.batch_norm(d(np.ones((4,), np.float32))),
    lambda d: F.batch_norm(d(np.ones((2, 3), np.float32)), weight=d(np.ones(4, np.float32))),
    lambda d: F.batch_norm(d(np.ones((2, 3), np.float32)), weight=d(np.ones(3, np.float64))),
    lambda d: F.batch_norm(d(np.ones((1, 3), np.float32))),
    lambda d: F.batch_norm(d(np.ones((2, 3), np.float32)), training=False),
    lambda d: F.batch_norm(d(np.ones((2, 3), np.int32))),
    lambda d: F.layer_norm(d(np.ones((2, 3), np.float32)), (4,)),
    lambda d: F.group_norm(d(np.ones((2, 6, 2), np.float32)), 4),
    lambda d: F.instance_norm(d(np.ones((2, 3, 1), np.float32))),
    lambda d: F.batch_norm_backward(d(np.ones((2, 4), np.float32)), F.batch_norm(d(np.ones((2, 3), np.float32)))[1]),
    lambda d: F.layer_norm_backward(d(np.ones((2, 3), np.float32)), F.batch_norm(d(np.ones((2, 3), np.float32)))[1]),
]


@pytest.mark.parametrize("i", range(len(BAD_CALLS)))
def test_same_errors_as_cpu(i):
    with pytest.raises((ValueError, TypeError)) as cpu_err:
        BAD_CALLS[i](lambda a: a)
    with pytest.raises(type(cpu_err.value)) as gpu_err:
        BAD_CALLS[i](dev)
    assert str(gpu_err.value) == str(cpu_err.value)


def test_mixed_placement_is_refused():
    x = np.ones((2, 3), np.float32)
    with pytest.raises(ValueError, match="different devices"):
        F.batch_norm(dev(x), weight=np.ones(3, np.float32))
    with pytest.raises(ValueError, match="different devices"):
        F.layer_norm(x, 3, weight=dev(np.ones(3, np.float32)))
    _, saved = F.batch_norm(dev(x))
    with pytest.raises(ValueError, match="forward ran on cuda"):
        F.batch_norm_backward(x, saved)
    with pytest.raises(TypeError, match="numpy.ndarray or a CUDA array"):
        F.batch_norm(dev(x), weight=[1.0, 1.0, 1.0])


def test_non_contiguous_device_input():
    rng = np.random.default_rng(8)
    x = randn(rng, (5, 3, 4), np.float64)
    xt = dev(np.ascontiguousarray(x.transpose(2, 1, 0))).transpose((2, 1, 0))
    assert not xt.is_c_contiguous()
    y, _ = F.batch_norm(x)
    yg, _ = F.batch_norm(xt)
    assert_close(yg, y, np.float64)


def test_array_helpers():
    a = ncuda.full((2, 3), 1.5, np.float32)
    assert host(a).dtype == np.float32 and (host(a) == 1.5).all()
    ncuda.add_(a, dev(np.arange(6, dtype=np.float32).reshape(2, 3)))
    np.testing.assert_array_equal(host(a), 1.5 + np.arange(6).reshape(2, 3))
    c = ncuda.cast(dev(np.array([0.1, 2.5])), np.float32)
    np.testing.assert_array_equal(host(c), np.array([0.1, 2.5], np.float32))
    assert ncuda.empty((0, 3), np.float64).shape == (0, 3)
    d = ncuda.to_device(np.arange(3.0))
    assert ncuda.to_device(d) is d and ncuda.wrap(d) is d


# ---------------------------------------------------------------- layers

def _train_step(layer, x, dy):
    y = layer(x)
    dx = layer.backward(dy)
    return y, dx


@pytest.mark.parametrize("make, shape", [
    (lambda dev_: nn.BatchNorm2d(3, momentum=None, device=dev_), (2, 3, 3, 3)),
    (lambda dev_: nn.BatchNorm1d(3, device=dev_), (5, 3)),
    (lambda dev_: nn.LayerNorm((3, 4), device=dev_), (2, 3, 4)),
    (lambda dev_: nn.GroupNorm(2, 4, device=dev_), (2, 4, 5)),
    (lambda dev_: nn.InstanceNorm1d(3, affine=True, track_running_stats=True, device=dev_), (2, 3, 6)),
])
def test_layers_on_gpu_match_cpu(make, shape):
    rng = np.random.default_rng(9)
    cpu_layer, gpu_layer, moved = make("cpu"), make("cuda"), make("cpu").to("cuda")
    for layer in (gpu_layer, moved):
        for p in layer.parameters():
            assert cuda.devicearray.is_cuda_ndarray(p.data)
    for step in range(2):  # two steps: gradients accumulate through add_
        x = randn(rng, shape, np.float32)
        dy = randn(rng, shape, np.float32)
        y, dx = _train_step(cpu_layer, x, dy)
        for layer in (gpu_layer, moved):
            yg, dxg = _train_step(layer, dev(x), dev(dy))
            assert_close(yg, y, np.float32)
            assert_close(dxg, dx, np.float32)
    for layer in (gpu_layer, moved):
        for pc, pg in zip(cpu_layer.parameters(), layer.parameters()):
            assert_close(pg.grad, pc.grad, np.float32)
        sd, sd_cpu = layer.state_dict(), cpu_layer.state_dict()
        assert list(sd) == list(sd_cpu)
        for k in sd:
            assert isinstance(sd[k], np.ndarray)
            np.testing.assert_allclose(sd[k], sd_cpu[k], rtol=2e-5, atol=2e-5)
    # eval mode, then a round trip through the state dict and back to the host
    x = randn(rng, shape, np.float32)
    y = cpu_layer.eval()(x)
    fresh = make("cuda")
    fresh.load_state_dict(cpu_layer.state_dict())
    assert_close(fresh.eval()(dev(x)), y, np.float32)
    back = fresh.to("cpu")
    np.testing.assert_allclose(back(x), y, rtol=2e-5, atol=2e-5)


# ---------------------------------------------------------------- edges

def test_empty_batch():
    x = np.ones((0, 3, 4), np.float32)
    w = np.ones(3, np.float32)
    yg, saved = F.batch_norm(dev(x), dev(w), dev(w))
    assert yg.shape == (0, 3, 4)
    dx, dw, db = F.batch_norm_backward(dev(x), saved)
    assert dx.shape == (0, 3, 4)
    np.testing.assert_array_equal(host(dw), np.zeros(3, np.float32))
    np.testing.assert_array_equal(host(db), np.zeros(3, np.float32))


def test_cpu_path_does_not_import_numba_cuda():
    import subprocess
    import sys

    code = ("import sys, numpy as np; from numbanorm import functional as F; "
            "F.layer_norm(np.ones((2, 3)), 3); assert 'numba.cuda' not in sys.modules")
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


class _ForeignArray:
    """A stand-in for a CuPy array / torch CUDA tensor: only __cuda_array_interface__."""

    def __init__(self, d):
        self._d = d
        self.__cuda_array_interface__ = d.__cuda_array_interface__


@pytest.mark.skipif(SIMULATOR, reason="simulator device arrays have no __cuda_array_interface__")
def test_foreign_cuda_arrays_are_wrapped_zero_copy():
    rng = np.random.default_rng(10)
    x = randn(rng, (3, 4, 5), np.float32)
    rm = dev(np.zeros(4, np.float32))
    y, _ = F.batch_norm(x)
    yg, saved = F.batch_norm(_ForeignArray(dev(x)), running_mean=_ForeignArray(rm),
                             running_var=_ForeignArray(dev(np.ones(4, np.float32))))
    assert_close(yg, y, np.float32)
    assert np.abs(host(rm)).max() > 0  # updated in place through the foreign wrapper


def test_bfloat16_refused_on_the_device():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    x = cuda.to_device(np.zeros((4, 3, 5), ml_dtypes.bfloat16))
    rm = cuda.to_device(np.zeros(3, np.float32))
    with pytest.raises(TypeError, match="bfloat16 is supported on the CPU backend only"):
        F.batch_norm(x, None, None, rm, cuda.to_device(np.ones(3, np.float32)))
    assert not rm.copy_to_host().any()
