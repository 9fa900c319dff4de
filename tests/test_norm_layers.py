"""numbanorm.nn norm layers: PyTorch parity (when torch is installed), state dicts, modes,
gradient accumulation, errors; plus hypothesis property tests of the functional ops."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from numbanorm import functional as F, nn

from . import reference as R

RNG = np.random.default_rng(7)


def rand(shape, dtype=np.float32):
    return RNG.standard_normal(shape).astype(dtype)


LAYERS = [
    # (our factory, torch factory name, kwargs, input shape)
    (nn.BatchNorm1d, "BatchNorm1d", dict(num_features=5), (8, 5)),
    (nn.BatchNorm1d, "BatchNorm1d", dict(num_features=5), (8, 5, 7)),
    (nn.BatchNorm2d, "BatchNorm2d", dict(num_features=4, momentum=None), (6, 4, 5, 5)),
    (nn.BatchNorm2d, "BatchNorm2d", dict(num_features=4, affine=False), (6, 4, 5, 5)),
    (nn.BatchNorm2d, "BatchNorm2d", dict(num_features=4, track_running_stats=False), (6, 4, 5, 5)),
    (nn.BatchNorm3d, "BatchNorm3d", dict(num_features=3, momentum=0.3), (2, 3, 3, 4, 5)),
    (nn.InstanceNorm1d, "InstanceNorm1d", dict(num_features=4), (3, 4, 9)),
    (nn.InstanceNorm2d, "InstanceNorm2d", dict(num_features=4, affine=True, track_running_stats=True), (3, 4, 5, 6)),
    (nn.InstanceNorm3d, "InstanceNorm3d", dict(num_features=2, affine=True), (2, 2, 3, 3, 3)),
    (nn.LayerNorm, "LayerNorm", dict(normalized_shape=(5, 6)), (3, 4, 5, 6)),
    (nn.LayerNorm, "LayerNorm", dict(normalized_shape=6, bias=False), (3, 4, 5, 6)),
    (nn.LayerNorm, "LayerNorm", dict(normalized_shape=6, elementwise_affine=False), (3, 6)),
    (nn.GroupNorm, "GroupNorm", dict(num_groups=2, num_channels=4), (3, 4, 5, 6)),
    (nn.GroupNorm, "GroupNorm", dict(num_groups=4, num_channels=4, affine=False), (3, 4, 7)),
]


@pytest.mark.parametrize("ours,torch_name,kwargs,shape", LAYERS,
                         ids=[f"{t}-{i}" for i, (_, t, _, _) in enumerate(LAYERS)])
def test_layer_matches_pytorch_over_train_and_eval_steps(ours, torch_name, kwargs, shape):
    torch = pytest.importorskip("torch", reason="PyTorch not installed: parity test skipped")
    layer = ours(**kwargs)
    ref = getattr(torch.nn, torch_name)(**kwargs)
    with torch.no_grad():  # non-trivial affine parameters
        for p, q in zip(ref.parameters(), layer.parameters()):
            p.copy_(torch.from_numpy(rand(tuple(p.shape))))
            q.data[...] = p.numpy()
    for step in range(3):
        if step == 2:
            layer.eval()
            ref.eval()
        x = rand(shape) * 3 + 1
        dy = rand(shape)
        tx = torch.from_numpy(x).requires_grad_(True)
        ty = ref(tx)
        ty.backward(torch.from_numpy(dy))
        y = layer(x)
        dx = layer.backward(dy)
        np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-3, atol=1e-4)
    # gradients accumulate across backward calls, like PyTorch's
    for p, q in zip(ref.parameters(), layer.parameters()):
        np.testing.assert_allclose(q.grad, p.grad.numpy(), rtol=1e-3, atol=1e-4)
    ours_state = layer.state_dict()
    theirs = ref.state_dict()
    assert list(ours_state) == list(theirs)
    for k in theirs:
        np.testing.assert_allclose(ours_state[k], theirs[k].numpy(), rtol=1e-5, atol=1e-6, err_msg=k)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_norm_layer_gradients_accumulate_as_np_add(dtype):
    """A norm layer adds dweight and dbias into .grad in one compiled call (cpu.add_pair_) for
    float32/float64 parameters, np.add otherwise: the same sums as np.add either way."""
    layer = nn.GroupNorm(2, 4, dtype=dtype)
    x, dys = rand((3, 4, 5), dtype), [rand((3, 4, 5), dtype) for _ in range(3)]
    _, saved = F.group_norm(x, 2, layer.weight.data, layer.bias.data)
    expect_w, expect_b = None, None
    for dy in dys:
        layer(x)
        layer.backward(dy)
        _, dw, db = F.group_norm_backward(dy, saved)
        expect_w = dw.copy() if expect_w is None else np.add(expect_w, dw)
        expect_b = db.copy() if expect_b is None else np.add(expect_b, db)
    assert layer.weight.grad.dtype == dtype
    np.testing.assert_array_equal(layer.weight.grad, expect_w)
    np.testing.assert_array_equal(layer.bias.grad, expect_b)


def test_add_pair_checks_shapes_as_np_add():
    from numbanorm import cpu

    dst, dst2 = np.zeros(4, np.float32), np.zeros(4, np.float32)
    cpu.add_pair_(dst, np.ones(4, np.float32), dst2, np.full(4, 2.0, np.float32))
    np.testing.assert_array_equal(dst, 1.0)
    np.testing.assert_array_equal(dst2, 2.0)
    with pytest.raises(ValueError):  # np.add's error, not a silent out-of-bounds sum
        cpu.add_pair_(dst, np.ones(3, np.float32), dst2, np.ones(4, np.float32))


def test_pytorch_state_dict_loads_unchanged():
    torch = pytest.importorskip("torch", reason="PyTorch not installed")
    ref = torch.nn.BatchNorm2d(3)
    ref(torch.randn(4, 3, 5, 5) * 2 + 1)
    layer = nn.BatchNorm2d(3)
    missing, unexpected = layer.load_state_dict({k: v.numpy() for k, v in ref.state_dict().items()})
    assert missing == [] and unexpected == []
    assert int(layer.num_batches_tracked) == 1
    layer.eval()
    ref.eval()
    x = rand((2, 3, 5, 5))
    np.testing.assert_allclose(layer(x), ref(torch.from_numpy(x)).detach().numpy(), rtol=1e-5, atol=1e-6)
    # torch tensors themselves load too (np.asarray accepts CPU tensors)
    layer.load_state_dict(ref.state_dict())


def test_load_state_dict_checks_everything_before_writing():
    layer = nn.BatchNorm1d(3)
    good = layer.state_dict()
    bad = dict(good, running_mean=np.arange(3, dtype=np.float32), running_var=np.ones(4, np.float32))
    with pytest.raises(ValueError, match="running_var must have shape \\(3,\\), got \\(4,\\)"):
        layer.load_state_dict(bad)
    assert np.array_equal(layer.running_mean, np.zeros(3, np.float32))  # nothing written
    with pytest.raises(ValueError, match="unexpected keys \\['extra'\\]"):
        layer.load_state_dict(dict(good, extra=np.zeros(1)))
    with pytest.raises(ValueError, match="missing keys \\['weight'\\]"):
        layer.load_state_dict({k: v for k, v in good.items() if k != "weight"})
    # old checkpoints without num_batches_tracked still load
    layer.load_state_dict({k: v for k, v in good.items() if k != "num_batches_tracked"})


def test_state_dict_returns_copies():
    layer = nn.LayerNorm(4)
    state = layer.state_dict()
    state["weight"][...] = 5
    assert np.array_equal(layer.weight.data, np.ones(4, np.float32))


def test_layer_defaults_follow_pytorch():
    bn = nn.BatchNorm2d(8)
    assert (bn.eps, bn.momentum, bn.affine, bn.track_running_stats) == (1e-5, 0.1, True, True)
    assert bn.weight.data.dtype == np.float32 and bn.training
    inorm = nn.InstanceNorm2d(8)
    assert (inorm.affine, inorm.track_running_stats) == (False, False)
    assert inorm.parameters() == [] and list(inorm.state_dict()) == []
    ln = nn.LayerNorm((3, 4))
    assert ln.weight.data.shape == (3, 4) and ln.bias.data.shape == (3, 4)
    gn = nn.GroupNorm(2, 8, dtype=np.float64)
    assert gn.weight.data.dtype == np.float64


def test_train_eval_switch_and_zero_grad():
    bn = nn.BatchNorm1d(3)
    x = rand((16, 3)) * 2 + 5
    bn(x)
    rm = bn.running_mean.copy()
    bn.eval()
    assert not bn.training
    y = bn(x)
    assert np.array_equal(bn.running_mean, rm)
    np.testing.assert_allclose(y, (x - bn.running_mean) / np.sqrt(bn.running_var + 1e-5), rtol=1e-5, atol=1e-5)
    bn.backward(rand(x.shape))
    assert bn.weight.grad is not None
    bn.zero_grad()
    assert bn.weight.grad is None and bn.bias.grad is None
    assert bn.train() is bn and bn.training


def test_layer_errors():
    bn = nn.BatchNorm2d(3)
    with pytest.raises(ValueError, match="backward called before forward"):
        bn.backward(rand((2, 3, 4, 4)))
    with pytest.raises(ValueError, match="expected 4D input, got shape \\(2, 3\\)"):
        bn(rand((2, 3)))
    with pytest.raises(ValueError, match="expected 3 channels \\(x.shape\\[1\\]\\), got 4"):
        bn(rand((2, 4, 3, 3)))
    with pytest.raises(ValueError, match="num_groups must be a positive divisor"):
        nn.GroupNorm(3, 8)
    with pytest.raises(ValueError, match="momentum"):
        nn.BatchNorm1d(3, momentum=2.0)
    with pytest.raises(ValueError, match="eps"):
        nn.LayerNorm(3, eps=0)
    with pytest.raises(TypeError, match="dtype must be float16, (bfloat16, )?float32 or float64"):
        nn.BatchNorm1d(3, dtype=np.int32)
    with pytest.raises(ValueError, match="num_features must be a positive int"):
        nn.BatchNorm1d(0)
    with pytest.raises(ValueError, match="device must be 'cpu' or 'cuda'"):
        nn.BatchNorm1d(3, device="tpu")
    # a rejected call leaves the running statistics and the counter untouched
    bn1 = nn.BatchNorm1d(3)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        bn1(rand((1, 3)))
    assert int(bn1.num_batches_tracked) == 0
    assert np.array_equal(bn1.running_var, np.ones(3, np.float32))
    # backward consumes the saved state: a second backward is an error, not a silent reuse
    bn1(rand((4, 3)))
    bn1.backward(rand((4, 3)))
    with pytest.raises(ValueError, match="before forward \\(or twice"):
        bn1.backward(rand((4, 3)))


def test_momentum_none_is_a_cumulative_average():
    bn = nn.BatchNorm1d(2, momentum=None)
    batches = [rand((10, 2)) + i for i in range(4)]
    for b in batches:
        bn(b)
    expected = np.mean([b.astype(np.float64).mean(0) for b in batches], axis=0)
    np.testing.assert_allclose(bn.running_mean, expected, rtol=1e-5)
    assert int(bn.num_batches_tracked) == 4


# ------------------------------------------------------------------ property-based

@st.composite
def norm_case(draw):
    ndim = draw(st.integers(2, 5))
    shape = [draw(st.integers(1, 5))] + [draw(st.integers(1, 6)) for _ in range(ndim - 1)]
    return tuple(shape)


@settings(max_examples=40, deadline=None)
@given(shape=norm_case(), seed=st.integers(0, 2**31 - 1), k=st.integers(1, 3))
def test_layer_norm_property(shape, seed, k):
    rng = np.random.default_rng(seed)
    k = min(k, len(shape) - 1)
    normalized = shape[-k:]
    x = rng.standard_normal(shape) * rng.uniform(0.1, 10) + rng.uniform(-5, 5)
    w, b = rng.standard_normal(normalized), rng.standard_normal(normalized)
    y, saved = F.layer_norm(x, normalized, w, b)
    np.testing.assert_allclose(y, R.layer_norm(x, normalized, w, b), rtol=1e-8, atol=1e-8)
    dy = rng.standard_normal(shape)
    for got, want in zip(F.layer_norm_backward(dy, saved), R.layer_norm_backward(dy, x, normalized, w)):
        np.testing.assert_allclose(got, want, rtol=1e-7, atol=1e-7)


@settings(max_examples=40, deadline=None)
@given(shape=norm_case(), seed=st.integers(0, 2**31 - 1), data=st.data())
def test_group_norm_property(shape, seed, data):
    C = shape[1]
    groups = data.draw(st.sampled_from([g for g in range(1, C + 1) if C % g == 0]))
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape) * rng.uniform(0.1, 10) + rng.uniform(-5, 5)
    w, b = rng.standard_normal(C), rng.standard_normal(C)
    y, saved = F.group_norm(x, groups, w, b)
    np.testing.assert_allclose(y, R.group_norm(x, groups, w, b), rtol=1e-8, atol=1e-8)
    dy = rng.standard_normal(shape)
    for got, want in zip(F.group_norm_backward(dy, saved), R.group_norm_backward(dy, x, groups, w)):
        np.testing.assert_allclose(got, want, rtol=1e-7, atol=1e-7)


@settings(max_examples=40, deadline=None)
@given(shape=norm_case(), seed=st.integers(0, 2**31 - 1))
def test_batch_norm_property(shape, seed):
    if np.prod(shape) // shape[1] < 2:
        shape = (2,) + shape[1:]
    rng = np.random.default_rng(seed)
    C = shape[1]
    x = rng.standard_normal(shape) * rng.uniform(0.1, 10) + rng.uniform(-5, 5)
    w, b = rng.standard_normal(C), rng.standard_normal(C)
    rm, rv = np.zeros(C), np.ones(C)
    y, saved = F.batch_norm(x, w, b, rm, rv, training=True)
    ref_y, ref_rm, ref_rv = R.batch_norm(x, w, b, np.zeros(C), np.ones(C), True)
    np.testing.assert_allclose(y, ref_y, rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(rv, ref_rv, rtol=1e-8, atol=1e-8)
    dy = rng.standard_normal(shape)
    for got, want in zip(F.batch_norm_backward(dy, saved), R.batch_norm_backward(dy, x, w)):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
