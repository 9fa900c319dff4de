"""Optimizers: the update rules written out by hand in float64, and against torch.optim."""
import numpy as np
import pytest

from numbanorm import optim
from numbanorm.nn import Linear, Parameter

RNG = np.random.default_rng(7)


def make_params(dtype=np.float64):
    return [Parameter(RNG.standard_normal((3, 4)).astype(dtype)), Parameter(RNG.standard_normal(5).astype(dtype))]


def grads_sequence(params, steps):
    return [[RNG.standard_normal(p.data.shape).astype(p.data.dtype) for p in params] for _ in range(steps)]


def test_sgd_momentum_nesterov_by_hand():
    params = make_params()
    start = [p.data.copy() for p in params]
    lr, mu, wd = 0.1, 0.9, 0.01
    opt = optim.SGD(params, lr=lr, momentum=mu, weight_decay=wd, nesterov=True)
    seq = grads_sequence(params, 3)
    ref, bufs = [s.copy() for s in start], [None, None]
    for gs in seq:
        for i, (p, g) in enumerate(zip(params, gs)):
            p.grad = g.copy()
            d = g + wd * ref[i]
            bufs[i] = d.copy() if bufs[i] is None else mu * bufs[i] + d
            ref[i] = ref[i] - lr * (d + mu * bufs[i])
        opt.step()
    for p, r in zip(params, ref):
        np.testing.assert_allclose(p.data, r, rtol=1e-12)


def test_adam_by_hand():
    params = make_params()
    lr, (b1, b2), eps, wd = 0.01, (0.8, 0.99), 1e-6, 0.1
    opt = optim.Adam(params, lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd)
    ref = [p.data.copy() for p in params]
    m = [np.zeros_like(r) for r in ref]
    v = [np.zeros_like(r) for r in ref]
    for t, gs in enumerate(grads_sequence(params, 4), start=1):
        for i, (p, g) in enumerate(zip(params, gs)):
            p.grad = g.copy()
            d = g + wd * ref[i]
            m[i] = b1 * m[i] + (1 - b1) * d
            v[i] = b2 * v[i] + (1 - b2) * d * d
            mhat, vhat = m[i] / (1 - b1 ** t), v[i] / (1 - b2 ** t)
            ref[i] = ref[i] - lr * mhat / (np.sqrt(vhat) + eps)
        opt.step()
    for p, r in zip(params, ref):
        np.testing.assert_allclose(p.data, r, rtol=1e-10)


def test_params_without_grad_are_skipped_and_zero_grad():
    params = make_params()
    before = params[1].data.copy()
    opt = optim.SGD(params, lr=0.5, momentum=0.9)
    params[0].grad = np.ones_like(params[0].data)
    opt.step()
    np.testing.assert_array_equal(params[1].data, before)
    assert 1 not in opt.state
    opt.zero_grad()
    assert params[0].grad is None


def test_state_dict_roundtrip_continues_identically():
    a, b = make_params(), None
    b = [Parameter(p.data.copy()) for p in a]
    opt_a = optim.Adam(a, lr=0.05)
    seq = grads_sequence(a, 4)
    for gs in seq[:2]:
        for p, g in zip(a, gs):
            p.grad = g
        opt_a.step()
    for pa, pb in zip(a, b):
        pb.data = pa.data.copy()
    opt_b = optim.Adam(b, lr=0.5)
    opt_b.load_state_dict(opt_a.state_dict())
    assert opt_b.lr == 0.05
    for gs in seq[2:]:
        for pa, pb, g in zip(a, b, gs):
            pa.grad, pb.grad = g, g.copy()
        opt_a.step()
        opt_b.step()
    for pa, pb in zip(a, b):
        np.testing.assert_array_equal(pa.data, pb.data)


def test_bad_arguments():
    params = make_params()
    with pytest.raises(ValueError, match="lr"):
        optim.SGD(params, lr=-1.0)
    with pytest.raises(ValueError, match="Nesterov"):
        optim.SGD(params, lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match=r"betas\[1\]"):
        optim.Adam(params, betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="empty"):
        optim.Adam([])
    with pytest.raises(TypeError, match="params\\[0\\]"):
        optim.SGD([np.zeros(3)], lr=0.1)
    with pytest.raises(TypeError, match="lr"):
        optim.SGD(params, lr="0.1")


@pytest.fixture(scope="module")
def torch_mod():
    return pytest.importorskip("torch", reason="PyTorch not installed: comparisons against it skipped")


@pytest.mark.parametrize("kind,kwargs", [
    ("SGD", dict(lr=0.1)),
    ("SGD", dict(lr=0.1, momentum=0.9, weight_decay=1e-2)),
    ("SGD", dict(lr=0.05, momentum=0.8, dampening=0.3)),
    ("SGD", dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)),
    ("Adam", dict(lr=1e-2)),
    ("Adam", dict(lr=3e-3, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.05)),
])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matches_torch_optim(torch_mod, kind, kwargs, dtype):
    torch = torch_mod
    params = make_params(dtype)
    tparams = [torch.tensor(p.data.copy(), requires_grad=True) for p in params]
    ours = getattr(optim, kind)(params, **kwargs)
    theirs = getattr(torch.optim, kind)(tparams, **kwargs)
    for gs in grads_sequence(params, 5):
        for p, tp, g in zip(params, tparams, gs):
            p.grad = g.copy()
            tp.grad = torch.from_numpy(g.copy())
        ours.step()
        theirs.step()
    tol = 1e-6 if dtype == np.float32 else 1e-13
    for p, tp in zip(params, tparams):
        np.testing.assert_allclose(p.data, tp.detach().numpy(), rtol=tol, atol=tol)


def test_trains_a_linear_model():
    """A few SGD steps through a layer's own gradients lower the loss."""
    lin = Linear(3, 1, dtype=np.float64, rng=0)
    x = RNG.standard_normal((32, 3))
    target = x @ np.array([[1.0], [-2.0], [0.5]])
    opt = optim.SGD(lin.parameters(), lr=0.1, momentum=0.5)
    losses = []
    for _ in range(20):
        y = lin.forward(x)
        losses.append(float(np.mean((y - target) ** 2)))
        opt.zero_grad()
        lin.backward(2 * (y - target) / y.size)
        opt.step()
    assert losses[-1] < 0.05 * losses[0]
