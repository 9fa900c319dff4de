"""GPU path of the CNN layers and optimizers (numbanorm/cuda/{conv,pool,elementwise,linear,loss,optim}.py) against the CPU path.

Runs on a real GPU when there is one, else under the CUDA simulator (tests/conftest.py), so
shapes stay tiny: odd sizes, padding and strides, grid-stride loops with 32-thread blocks.
"""
import numpy as np
import pytest

from numbanorm import cuda_support

pytest.importorskip("numba.cuda")
if not cuda_support.cuda_available():
    pytest.skip("CUDA (or the CUDA simulator) is not usable here", allow_module_level=True)

from numba import cuda  # noqa: E402

import numbanorm.cuda as ncuda  # noqa: E402
from numbanorm import nn, optim  # noqa: E402

RNG = np.random.default_rng(5)


@pytest.fixture(autouse=True)
def small_launches(monkeypatch):
    monkeypatch.setattr(ncuda.config, "THREADS", 32)
    monkeypatch.setattr(ncuda.config, "TARGET_BLOCKS", 2)


def host(a):
    return a.copy_to_host()


def tol(dtype):
    return dict(rtol=2e-5, atol=2e-5) if dtype == np.float32 else dict(rtol=1e-11, atol=1e-12)


def tiny_model(dtype, rng):
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, stride=(1, 2), padding=1, dtype=dtype, rng=rng), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(3, 2, 2, dtype=dtype, rng=rng), nn.AvgPool2d(2, 1), nn.Flatten(),
        nn.Dropout(0.25, rng=rng), nn.Linear(2 * 2 * 1, 3, dtype=dtype, rng=rng))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_model_step_matches_cpu(dtype):
    cpu, gpu = tiny_model(dtype, 3), tiny_model(dtype, 3).to("cuda")
    assert cuda.devicearray.is_cuda_ndarray(gpu[0].weight.data)
    x = RNG.standard_normal((2, 2, 8, 13)).astype(dtype)
    labels = np.array([0, 2])
    crit_c, crit_g = nn.CrossEntropyLoss(), nn.CrossEntropyLoss()
    opt_c = optim.SGD(cpu.parameters(), lr=0.1, momentum=0.9, weight_decay=0.01)
    opt_g = optim.SGD(gpu.parameters(), lr=0.1, momentum=0.9, weight_decay=0.01)
    for _ in range(2):
        loss_c = crit_c.forward(cpu.forward(x), labels)
        loss_g = crit_g.forward(gpu.forward(cuda.to_device(x)), cuda.to_device(labels))
        np.testing.assert_allclose(loss_g, loss_c, **tol(dtype))
        cpu.zero_grad()
        gpu.zero_grad()
        dx_c = cpu.backward(crit_c.backward())
        dx_g = gpu.backward(crit_g.backward())
        np.testing.assert_allclose(host(dx_g), dx_c, **tol(dtype))
        for (name, pc), (_, pg) in zip(cpu.named_parameters(), gpu.named_parameters()):
            np.testing.assert_allclose(host(pg.grad), pc.grad, err_msg=name, **tol(dtype))
        opt_c.step()
        opt_g.step()
    for key, value in gpu.state_dict().items():
        np.testing.assert_allclose(value, cpu.state_dict()[key], err_msg=key, **tol(dtype))


@pytest.mark.parametrize("layer", ["maxpool", "avgpool_overlap", "relu", "linear3d"])
def test_single_layers_match_cpu(layer):
    if layer == "maxpool":
        make, shape = (lambda: nn.MaxPool2d(3, 2)), (2, 3, 7, 6)
    elif layer == "avgpool_overlap":
        make, shape = (lambda: nn.AvgPool2d(2, 1)), (1, 2, 5, 4)
    elif layer == "relu":
        make, shape = nn.ReLU, (3, 37)
    else:
        make, shape = (lambda: nn.Linear(5, 4, dtype=np.float64, rng=1)), (2, 3, 5)
    cpu, gpu = make(), make().to("cuda")
    x = RNG.standard_normal(shape)
    y = cpu.forward(x)
    yg = gpu.forward(cuda.to_device(x))
    np.testing.assert_allclose(host(yg), y, rtol=1e-12, atol=1e-12)
    dy = RNG.standard_normal(y.shape)
    np.testing.assert_allclose(host(gpu.backward(cuda.to_device(dy))), cpu.backward(dy), rtol=1e-12, atol=1e-12)


def test_dropout_mask_identical_on_cpu_and_gpu():
    x = RNG.standard_normal((5, 13)).astype(np.float32)
    y = nn.Dropout(0.5, rng=42).forward(x)
    yg = nn.Dropout(0.5, rng=42).forward(cuda.to_device(x))
    np.testing.assert_array_equal(host(yg), y)


def test_max_pool_nan_and_ties_match_cpu():
    x = np.zeros((1, 1, 4, 4))
    x[0, 0, 0, 1] = np.nan
    x[0, 0, 2, 2] = 1.0
    x[0, 0, 3, 3] = 1.0
    cpu, gpu = nn.MaxPool2d(2), nn.MaxPool2d(2)
    y = cpu.forward(x)
    assert np.isnan(y[0, 0, 0, 0]) and y[0, 0, 1, 1] == 1.0
    np.testing.assert_array_equal(host(gpu.forward(cuda.to_device(x))), y)
    dy = np.arange(4.0).reshape(1, 1, 2, 2) + 1
    np.testing.assert_array_equal(host(gpu.backward(cuda.to_device(dy))), cpu.backward(dy))


def test_adam_on_gpu_matches_cpu():
    data = [RNG.standard_normal((3, 4)).astype(np.float32), RNG.standard_normal(7).astype(np.float32)]
    pc = [nn.Parameter(d.copy()) for d in data]
    pg = [nn.Parameter(cuda.to_device(d)) for d in data]
    oc, og = optim.Adam(pc, lr=0.01, weight_decay=0.1), optim.Adam(pg, lr=0.01, weight_decay=0.1)
    for _ in range(3):
        for a, b in zip(pc, pg):
            g = RNG.standard_normal(a.data.shape).astype(np.float32)
            a.grad, b.grad = g, cuda.to_device(g)
        oc.step()
        og.step()
    for a, b in zip(pc, pg):
        np.testing.assert_allclose(host(b.data), a.data, rtol=1e-6, atol=1e-7)
    sd = og.state_dict()
    assert isinstance(sd["state"][0]["exp_avg"], np.ndarray)


def test_gpu_errors():
    crit = nn.CrossEntropyLoss()
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\)"):
        crit.forward(cuda.to_device(np.zeros((2, 3))), np.array([0, 3]))
    conv = nn.Conv2d(1, 1, 3)  # parameters on the CPU
    with pytest.raises(ValueError, match="is on 'cpu' but x is on 'cuda'"):
        conv.forward(cuda.to_device(np.zeros((1, 1, 4, 4), np.float32)))


def _same_on_gpu(make, x, tol_kw=dict(rtol=1e-12, atol=1e-12)):
    """Forward and backward (dx and parameter grads) of one layer on the GPU equal the CPU's."""
    cpu, gpu = make(), make().to("cuda")
    y = cpu.forward(x)
    np.testing.assert_allclose(host(gpu.forward(cuda.to_device(x))), y, **tol_kw)
    dy = RNG.standard_normal(y.shape)
    np.testing.assert_allclose(host(gpu.backward(cuda.to_device(dy))), cpu.backward(dy), **tol_kw)
    for (name, pc), (_, pg) in zip(cpu.named_parameters(), gpu.named_parameters()):
        np.testing.assert_allclose(host(pg.grad), pc.grad, err_msg=name, **tol_kw)


@pytest.mark.parametrize("case", [
    dict(groups=2, padding=1), dict(dilation=2, padding=2, stride=(1, 2)),
    dict(padding=1, padding_mode="reflect"), dict(padding=(1, 2), padding_mode="circular", bias=False)])
def test_conv2d_options_match_cpu(case):
    _same_on_gpu(lambda: nn.Conv2d(4, 2, 3, dtype=np.float64, rng=2, **case), RNG.standard_normal((2, 4, 5, 6)))


@pytest.mark.parametrize("make", [
    lambda: nn.MaxPool2d(3, 2, padding=1, ceil_mode=True),
    lambda: nn.AvgPool2d((3, 2), (2, 1), padding=1, ceil_mode=True, count_include_pad=False),
    lambda: nn.AvgPool2d(3, 2, padding=1)])
def test_pool_options_match_cpu(make):
    _same_on_gpu(make, RNG.standard_normal((1, 2, 7, 6)))


@pytest.mark.parametrize("reduction,ignore_index,smoothing", [("mean", 1, 0.1), ("none", -100, 0.2), ("sum", 0, 0.0)])
def test_cross_entropy_options_match_cpu(reduction, ignore_index, smoothing):
    logits = RNG.standard_normal((5, 3))
    labels = np.array([0, 1, 2, 1, 0])
    cpu = nn.CrossEntropyLoss(reduction, ignore_index, smoothing)
    gpu = nn.CrossEntropyLoss(reduction, ignore_index, smoothing)
    loss_c = cpu.forward(logits, labels)
    loss_g = gpu.forward(cuda.to_device(logits), labels)
    np.testing.assert_allclose(host(loss_g) if reduction == "none" else loss_g, loss_c, rtol=1e-13)
    dloss = RNG.standard_normal(5) if reduction == "none" else 1.3
    np.testing.assert_allclose(host(gpu.backward(cuda.to_device(dloss) if reduction == "none" else dloss)),
                               cpu.backward(dloss), rtol=1e-13, atol=1e-14)


@pytest.mark.parametrize("make_opt", [
    lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01),
    lambda ps: optim.SGD(ps, lr=0.1, momentum=0.5, dampening=0.3),
    lambda ps: optim.SGD(ps, lr=0.1),
    lambda ps: optim.Adam(ps, lr=0.01, weight_decay=0.1, amsgrad=True)])
def test_optimizer_options_match_cpu(make_opt):
    w0 = RNG.standard_normal((3, 5)).astype(np.float32)
    pc, pg = nn.Parameter(w0.copy()), nn.Parameter(cuda.to_device(w0.copy()))
    oc, og = make_opt([pc]), make_opt([pg])
    for step in range(3):
        g = (RNG.standard_normal((3, 5)) * (2.0 if step == 1 else 0.1)).astype(np.float32)
        pc.grad, pg.grad = g.copy(), cuda.to_device(g)
        oc.step()
        og.step()
        np.testing.assert_array_equal(host(pg.data), pc.data)  # the same rule, the same rounding
