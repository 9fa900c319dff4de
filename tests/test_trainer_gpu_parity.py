"""GPU vs CPU parity of the trainer through the public API only (numbanorm.nn, numbanorm.optim):
every optimizer option, Conv2d/Linear without bias, input_grad=False, both CrossEntropy
reductions. Runs on a real GPU, else under the CUDA simulator (tiny shapes)."""
import numpy as np
import pytest

from numbanorm import cuda_support

pytest.importorskip("numba.cuda")
if not cuda_support.cuda_available():
    pytest.skip("CUDA (or the CUDA simulator) is not usable here", allow_module_level=True)

from numba import cuda  # noqa: E402

from numbanorm import nn, optim  # noqa: E402

TOL = {np.float32: dict(rtol=1e-5, atol=1e-6), np.float64: dict(rtol=1e-12, atol=1e-13)}


def host(a):
    return a if isinstance(a, np.ndarray) else a.copy_to_host()


def params_pair(dtype, seed=0):
    """The same two parameters (with gradients set by hand) on the CPU and on the GPU."""
    rng = np.random.default_rng(seed)
    cpu = [nn.Parameter(rng.standard_normal(s).astype(dtype)) for s in ((3, 4), (5,))]
    gpu = [nn.Parameter(cuda.to_device(p.data.copy())) for p in cpu]
    return cpu, gpu, rng


SGD_OPTIONS = [
    dict(lr=0.1),
    dict(lr=0.1, momentum=0.9),
    dict(lr=0.1, momentum=0.9, nesterov=True),
    dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.05),
    dict(lr=0.1, momentum=0.8, dampening=0.3),
    dict(lr=0.1, momentum=0.8, dampening=0.3, weight_decay=0.05),
    dict(lr=0.05, momentum=0.0, weight_decay=0.1),
]
ADAM_OPTIONS = [dict(lr=0.01), dict(lr=0.01, betas=(0.5, 0.9), eps=1e-6, weight_decay=0.1),
                dict(lr=0.01, amsgrad=True), dict(lr=0.01, betas=(0.5, 0.9), weight_decay=0.1, amsgrad=True)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind,options", [("SGD", o) for o in SGD_OPTIONS] + [("Adam", o) for o in ADAM_OPTIONS],
                         ids=lambda v: v if isinstance(v, str) else ",".join(f"{k}={w}" for k, w in v.items()))
def test_optimizer_step_matches_cpu_and_formula(kind, options, dtype):
    """Three steps with fresh gradients: GPU == CPU, and both == torch.optim's formula written
    out here in float64 (so a wrong formula on both devices fails too)."""
    cpu, gpu, rng = params_pair(dtype)
    opt_c, opt_g = getattr(optim, kind)(cpu, **options), getattr(optim, kind)(gpu, **options)
    ref = [p.data.astype(np.float64) for p in cpu]
    state = [dict() for _ in cpu]
    for step in range(1, 4):
        for pc, pg, r, st in zip(cpu, gpu, ref, state):
            g = rng.standard_normal(pc.data.shape).astype(dtype)
            pc.grad, pg.grad = g, cuda.to_device(g)
            _reference_step(kind, options, r, g.astype(np.float64), st, step)
        opt_c.step()
        opt_g.step()
        for pc, pg, r in zip(cpu, gpu, ref):
            np.testing.assert_allclose(host(pg.data), pc.data, **TOL[dtype])
            np.testing.assert_allclose(pc.data, r, **TOL[dtype])


def _reference_step(kind, o, p, g, st, t):
    """torch.optim.SGD / Adam, in place on p (float64)."""
    wd = o.get("weight_decay", 0.0)
    g = g + wd * p
    if kind == "SGD":
        mom, damp = o.get("momentum", 0.0), o.get("dampening", 0.0)
        if mom:
            st["buf"] = g.copy() if "buf" not in st else mom * st["buf"] + (1 - damp) * g
            g = g + mom * st["buf"] if o.get("nesterov") else st["buf"]
        p -= o["lr"] * g
        return
    b1, b2 = o.get("betas", (0.9, 0.999))
    eps = o.get("eps", 1e-8)
    st["m"] = b1 * st.get("m", 0.0) + (1 - b1) * g
    st["v"] = b2 * st.get("v", 0.0) + (1 - b2) * g * g
    v = st["v"]
    if o.get("amsgrad"):
        st["vmax"] = v = np.maximum(st.get("vmax", 0.0), v)
    m_hat, v_hat = st["m"] / (1 - b1 ** t), v / (1 - b2 ** t)
    p -= o["lr"] * m_hat / (np.sqrt(v_hat) + eps)


@pytest.mark.parametrize("layer", ["conv", "linear"])
@pytest.mark.parametrize("input_grad", [True, False])
def test_bias_free_layers_and_input_grad_match_cpu(layer, input_grad):
    dtype = np.float64
    rng = np.random.default_rng(2)
    if layer == "conv":
        make = lambda: nn.Conv2d(2, 3, 3, stride=2, padding=1, bias=False, dtype=dtype, rng=4)
        x = rng.standard_normal((2, 2, 5, 6))
    else:
        make = lambda: nn.Linear(5, 4, bias=False, dtype=dtype, rng=4)
        x = rng.standard_normal((3, 5))
    cpu, gpu = make(), make().to("cuda")
    assert cpu.bias is None and gpu.bias is None and [n for n, _ in gpu.named_parameters()] == ["weight"]
    y_c, y_g = cpu(x), gpu(cuda.to_device(x))
    np.testing.assert_allclose(host(y_g), y_c, **TOL[dtype])
    dy = rng.standard_normal(y_c.shape)
    dx_c, dx_g = cpu.backward(dy, input_grad=input_grad), gpu.backward(cuda.to_device(dy), input_grad=input_grad)
    if input_grad:
        np.testing.assert_allclose(host(dx_g), dx_c, **TOL[dtype])
    else:
        assert dx_c is None and dx_g is None
    np.testing.assert_allclose(host(gpu.weight.grad), cpu.weight.grad, **TOL[dtype])


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cross_entropy_reductions_match_cpu_and_formula(reduction, dtype):
    rng = np.random.default_rng(3)
    logits = (3 * rng.standard_normal((5, 4))).astype(dtype)
    labels = np.array([0, 3, 1, 1, 2])
    cpu, gpu = nn.CrossEntropyLoss(reduction), nn.CrossEntropyLoss(reduction)
    loss_c, loss_g = cpu.forward(logits, labels), gpu.forward(cuda.to_device(logits), cuda.to_device(labels))
    l64 = logits.astype(np.float64)
    logp = l64 - l64.max(1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(1, keepdims=True))
    per = -logp[np.arange(5), labels]
    want = {"mean": per.mean(), "sum": per.sum(), "none": per}[reduction]
    np.testing.assert_allclose(loss_c, want, **TOL[dtype])
    np.testing.assert_allclose(host(loss_g) if reduction == "none" else loss_g, loss_c, **TOL[dtype])
    dloss = np.linspace(0.5, 1.5, 5).astype(dtype) if reduction == "none" else 0.5
    d_c = cpu.backward(dloss)
    d_g = gpu.backward(cuda.to_device(dloss) if reduction == "none" else dloss)
    dwant = np.exp(logp)
    dwant[np.arange(5), labels] -= 1
    dwant *= (dloss[:, None] if reduction == "none" else 0.5) / (5 if reduction == "mean" else 1)
    np.testing.assert_allclose(d_c, dwant, **TOL[dtype])
    np.testing.assert_allclose(host(d_g), d_c, **TOL[dtype])
