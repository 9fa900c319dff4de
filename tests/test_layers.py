"""CNN layers: forward vs a textbook float64 NumPy reference, backward vs central finite
differences (loss = sum(y * dy) with a random dy), forward/backward vs PyTorch when installed,
state_dict keys, error messages."""
import numpy as np
import pytest

import numbanorm.nn as nn

from .reference import numeric_grad

RNG = np.random.default_rng(1234)


# ---------------------------------------------------------------- textbook references

def conv2d_ref(x, w, b, stride, pad):
    N, C, H, W = x.shape
    O, _, KH, KW = w.shape
    (sh, sw), (ph, pw) = stride, pad
    xp = np.zeros((N, C, H + 2 * ph, W + 2 * pw))
    xp[:, :, ph:ph + H, pw:pw + W] = x
    OH, OW = (H + 2 * ph - KH) // sh + 1, (W + 2 * pw - KW) // sw + 1
    y = np.zeros((N, O, OH, OW))
    for oh in range(OH):
        for ow in range(OW):
            patch = xp[:, :, oh * sh:oh * sh + KH, ow * sw:ow * sw + KW]  # (N, C, KH, KW)
            y[:, :, oh, ow] = np.tensordot(patch, w, axes=([1, 2, 3], [1, 2, 3]))
    if b is not None:
        y += b[None, :, None, None]
    return y


def pool_ref(x, k, s, op):
    N, C, H, W = x.shape
    OH, OW = (H - k) // s + 1, (W - k) // s + 1
    y = np.zeros((N, C, OH, OW))
    for oh in range(OH):
        for ow in range(OW):
            y[:, :, oh, ow] = op(x[:, :, oh * s:oh * s + k, ow * s:ow * s + k], axis=(2, 3))
    return y


def xent_ref(logits, labels):
    out = 0.0
    for r in range(logits.shape[0]):
        z = logits[r] - logits[r].max()
        out += -(z[labels[r]] - np.log(np.exp(z).sum()))
    return out / logits.shape[0]


def check_gradients(layer, x, params=()):
    """Analytic dx and parameter grads of sum(layer(x) * dy) against finite differences."""
    y = layer.forward(x)
    dy = RNG.standard_normal(y.shape)
    layer.zero_grad()
    dx = layer.backward(dy)

    def loss():
        return float(np.sum(layer.forward(x) * dy))

    np.testing.assert_allclose(dx, numeric_grad(loss, x), rtol=1e-6, atol=1e-7)
    for p in params:
        np.testing.assert_allclose(p.grad, numeric_grad(loss, p.data), rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------- Conv2d

CONV_CASES = [  # (N, C, H, W, O, kernel, stride, padding, bias)
    (2, 3, 7, 6, 4, 3, 1, 1, True),
    (1, 2, 8, 9, 3, (2, 3), (2, 1), (0, 2), False),
    (3, 1, 5, 5, 2, 5, 2, 2, True),
]


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d_forward_matches_reference(case):
    N, C, H, W, O, k, s, p, bias = case
    conv = nn.Conv2d(C, O, k, stride=s, padding=p, bias=bias, dtype=np.float64, rng=0)
    x = RNG.standard_normal((N, C, H, W))
    y = conv.forward(x)
    ref = conv2d_ref(x, conv.weight.data, conv.bias.data if bias else None, conv.stride, conv.padding)
    np.testing.assert_allclose(y, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d_gradients_finite_differences(case):
    N, C, H, W, O, k, s, p, bias = case
    conv = nn.Conv2d(C, O, k, stride=s, padding=p, bias=bias, dtype=np.float64, rng=1)
    check_gradients(conv, RNG.standard_normal((N, C, H, W)), conv.parameters())


def test_conv2d_grads_accumulate_until_zero_grad():
    conv = nn.Conv2d(2, 3, 3, dtype=np.float64, rng=2)
    x = RNG.standard_normal((2, 2, 5, 5))
    dy = RNG.standard_normal((2, 3, 3, 3))
    conv.forward(x)
    conv.backward(dy)
    g1 = conv.weight.grad.copy()
    conv.forward(x)
    conv.backward(dy)
    np.testing.assert_allclose(conv.weight.grad, 2 * g1, rtol=1e-12)
    conv.zero_grad()
    assert conv.weight.grad is None and conv.bias.grad is None


def test_init_bounds_and_seeding():
    conv = nn.Conv2d(4, 8, 3, rng=7)
    bound = 1 / np.sqrt(4 * 9)
    assert conv.weight.data.dtype == np.float32
    assert np.abs(conv.weight.data).max() <= bound and np.abs(conv.weight.data).max() > 0.8 * bound
    assert np.abs(conv.bias.data).max() <= bound
    again = nn.Conv2d(4, 8, 3, rng=7)
    np.testing.assert_array_equal(conv.weight.data, again.weight.data)
    nn.init.manual_seed(3)
    a = nn.Linear(5, 6).weight.data
    nn.init.manual_seed(3)
    np.testing.assert_array_equal(a, nn.Linear(5, 6).weight.data)
    assert np.abs(a).max() <= 1 / np.sqrt(5)


# ---------------------------------------------------------------- pooling

@pytest.mark.parametrize("k,s", [(2, None), (3, 2), (2, 1)])
def test_max_pool_forward_and_gradients(k, s):
    pool = nn.MaxPool2d(k, s)
    x = RNG.standard_normal((2, 3, 7, 6))
    np.testing.assert_array_equal(pool.forward(x), pool_ref(x, k, s or k, np.max))
    check_gradients(pool, x)


@pytest.mark.parametrize("k,s", [(2, None), (3, 2), (2, 1)])
def test_avg_pool_forward_and_gradients(k, s):
    pool = nn.AvgPool2d(k, s)
    x = RNG.standard_normal((2, 3, 7, 6))
    np.testing.assert_allclose(pool.forward(x), pool_ref(x, k, s or k, np.mean), rtol=1e-12)
    check_gradients(pool, x)


def _max_pool_argmax_ref(x, k):
    """Window argmax (flat offset in the plane) by PyTorch's rule: ties go to the first maximum,
    a NaN wins and the last NaN of the window wins."""
    N, C, H, W = x.shape
    idx = np.zeros((N, C, H // k, W // k), np.int64)
    for n, c, oh, ow in np.ndindex(idx.shape):
        best, arg = None, None
        for i in range(k):
            for j in range(k):
                v, off = x[n, c, oh * k + i, ow * k + j], (oh * k + i) * W + ow * k + j
                if best is None or v > best or v != v:
                    best, arg = v, off
        idx[n, c, oh, ow] = arg
    return idx


@pytest.mark.parametrize("k,shape", [(2, (2, 3, 7, 9)), (3, (3, 2, 8, 7)), (2, (1, 1, 3, 2))])
def test_max_pool_non_overlapping_fast_path_matches_generic(k, shape):
    """stride == kernel, no padding takes the tiled kernel; ceil_mode on odd sizes takes the
    generic one (its last window is partial): the full windows must agree bit for bit, NaN and
    ties included, and the argmax must follow PyTorch's rule."""
    from numbanorm.functional import max_pool2d, max_pool2d_backward

    x = np.round(RNG.standard_normal(shape) * 2).astype(np.float32)  # many ties
    x[RNG.random(shape) < 0.15] = np.nan
    y, saved = max_pool2d(x, k)
    OH, OW = y.shape[2:]
    yg, saved_g = max_pool2d(x, k, ceil_mode=True)
    assert yg.shape[2] * k > shape[2] or yg.shape[3] * k > shape[3]  # so the generic path ran
    idx_g = saved_g.idx[:, :, :OH, :OW]
    np.testing.assert_array_equal(y, yg[:, :, :OH, :OW])
    np.testing.assert_array_equal(saved.idx, idx_g)
    np.testing.assert_array_equal(saved.idx, _max_pool_argmax_ref(x, k))
    dy = RNG.standard_normal(y.shape).astype(np.float32)
    dx = max_pool2d_backward(dy, saved)
    ref = np.zeros(x.shape, np.float32).reshape(shape[0], shape[1], -1)
    for n, c, oh, ow in np.ndindex(y.shape):
        ref[n, c, saved.idx[n, c, oh, ow]] += dy[n, c, oh, ow]
    np.testing.assert_array_equal(dx, ref.reshape(shape))


def test_max_pool_float32_keeps_dtype():
    x = RNG.standard_normal((1, 2, 4, 4)).astype(np.float32)
    y = nn.MaxPool2d(2).forward(x)
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, pool_ref(x, 2, 2, np.max).astype(np.float32))


# ---------------------------------------------------------------- ReLU, Flatten, Linear

@pytest.mark.parametrize("shape", [(3, 5), (200, 300)])  # serial and parallel kernels
def test_relu_forward_and_backward(shape):
    x = RNG.standard_normal(shape)
    x[np.abs(x) < 1e-3] = 0.5  # keep finite differences away from the kink
    relu = nn.ReLU()
    y = relu.forward(x)
    np.testing.assert_array_equal(y, np.maximum(x, 0))
    dy = RNG.standard_normal(shape)
    np.testing.assert_array_equal(relu.backward(dy), np.where(x > 0, dy, 0))
    if x.size < 100:
        check_gradients(relu, x)


def test_flatten_roundtrip():
    x = RNG.standard_normal((2, 3, 4, 5))
    f = nn.Flatten()
    y = f.forward(x)
    assert y.shape == (2, 60)
    np.testing.assert_array_equal(y, x.reshape(2, 60))
    dy = RNG.standard_normal((2, 60))
    np.testing.assert_array_equal(f.backward(dy), dy.reshape(x.shape))


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(4, 7), (2, 3, 7)])
def test_linear_forward_and_gradients(shape, bias):
    lin = nn.Linear(7, 5, bias=bias, dtype=np.float64, rng=4)
    x = RNG.standard_normal(shape)
    ref = x @ lin.weight.data.T + (lin.bias.data if bias else 0)
    np.testing.assert_allclose(lin.forward(x), ref, rtol=1e-12)
    check_gradients(lin, x, lin.parameters())


# ---------------------------------------------------------------- Dropout

def test_dropout_statistics_scaling_and_backward():
    drop = nn.Dropout(0.3, rng=5)
    x = np.ones((400, 500), np.float32)
    y = drop.forward(x)
    kept = y != 0
    assert abs(kept.mean() - 0.7) < 0.01
    np.testing.assert_allclose(y[kept], 1 / 0.7, rtol=1e-6)
    dy = RNG.standard_normal(x.shape).astype(np.float32)
    np.testing.assert_allclose(drop.backward(dy), np.where(kept, dy / 0.7, 0), rtol=1e-6)
    y2 = drop.forward(x)
    assert (y2 != y).any()  # a fresh mask each forward


def test_dropout_seeded_and_eval_identity():
    x = RNG.standard_normal((10, 20))
    a = nn.Dropout(0.5, rng=9).forward(x)
    b = nn.Dropout(0.5, rng=9).forward(x)
    np.testing.assert_array_equal(a, b)
    drop = nn.Dropout(0.5).eval()
    assert drop.forward(x) is x
    dy = RNG.standard_normal(x.shape)
    assert drop.backward(dy) is dy


def test_dropout_gradient_finite_differences():
    drop = nn.Dropout(0.4, rng=np.random.default_rng(11))
    x = RNG.standard_normal((3, 8))
    y = drop.forward(x)
    mask = (y != 0) / 0.6
    dy = RNG.standard_normal(x.shape)
    np.testing.assert_allclose(drop.backward(dy), dy * mask, rtol=1e-12)


# ---------------------------------------------------------------- CrossEntropyLoss

@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_cross_entropy_value_and_gradient(dtype):
    logits = (RNG.standard_normal((6, 5)) * 3).astype(dtype)
    labels = RNG.integers(0, 5, 6)
    crit = nn.CrossEntropyLoss()
    loss = crit.forward(logits, labels)
    assert isinstance(loss, float)
    np.testing.assert_allclose(loss, xent_ref(logits.astype(np.float64), labels), rtol=1e-6 if dtype == np.float32 else 1e-12)
    dlogits = crit.backward()
    assert dlogits.dtype == dtype
    work = logits.astype(np.float64)
    num = numeric_grad(lambda: xent_ref(work, labels), work)
    np.testing.assert_allclose(dlogits, num, rtol=1e-5, atol=1e-6 if dtype == np.float32 else 1e-9)


def test_cross_entropy_is_stable_for_large_logits_and_sum_reduction():
    logits = np.array([[1000.0, 0.0, -1000.0], [0.0, 1e4, 0.0]])
    labels = np.array([0, 2])
    crit = nn.CrossEntropyLoss(reduction="sum")
    loss = crit.forward(logits, labels)
    np.testing.assert_allclose(loss, 1e4, rtol=1e-12)
    d = crit.backward(2.0)
    assert np.isfinite(d).all()
    np.testing.assert_allclose(d, 2 * np.array([[0, 0, 0], [0, 1, -1.0]]), atol=1e-12)


# ---------------------------------------------------------------- Sequential and state dicts

def reference_model(dtype=np.float32, rng=0):
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1, dtype=dtype, rng=rng), nn.BatchNorm2d(4, dtype=dtype), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3, padding=1, dtype=dtype, rng=rng), nn.BatchNorm2d(6, dtype=dtype), nn.ReLU(),
        nn.MaxPool2d(2), nn.Flatten(), nn.Linear(6 * 2 * 2, 8, dtype=dtype, rng=rng), nn.ReLU(),
        nn.Dropout(0.0), nn.Linear(8, 3, dtype=dtype, rng=rng))


def test_sequential_backward_chains_children_in_reverse():
    model = nn.Sequential(nn.Linear(4, 6, dtype=np.float64, rng=1), nn.ReLU(),
                          nn.Linear(6, 3, dtype=np.float64, rng=2))
    x = RNG.standard_normal((5, 4))
    check_gradients(model, x, model.parameters())
    assert len(model) == 3 and isinstance(model[1], nn.ReLU)


def test_model_gradients_finite_differences_with_batchnorm():
    model = reference_model(np.float64)
    check_gradients(model, RNG.standard_normal((3, 1, 8, 8)), model.parameters())


def test_sequential_state_dict_keys_and_roundtrip():
    model = reference_model()
    sd = model.state_dict()
    assert list(sd)[:7] == ["0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean",
                            "1.running_var", "1.num_batches_tracked"]
    assert "12.weight" in sd and "9.bias" in sd
    other = reference_model(rng=99)
    other.load_state_dict(sd)
    x = RNG.standard_normal((2, 1, 8, 8)).astype(np.float32)
    np.testing.assert_array_equal(model.eval().forward(x), other.eval().forward(x))


# ---------------------------------------------------------------- errors

def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="in_channels"):
        nn.Conv2d(0, 2, 3)
    with pytest.raises(TypeError, match="kernel_size"):
        nn.Conv2d(1, 2, 2.5)
    with pytest.raises(ValueError, match="padding"):
        nn.Conv2d(1, 2, 3, padding=-1)
    with pytest.raises(ValueError, match=r"p must be in \[0, 1\)"):
        nn.Dropout(1.0)
    with pytest.raises(ValueError, match="p must be"):
        nn.Dropout(-0.1)
    with pytest.raises(ValueError, match="reduction"):
        nn.CrossEntropyLoss("avg")
    with pytest.raises(TypeError, match="rng"):
        nn.Linear(2, 3, rng="seed")
    with pytest.raises(TypeError, match="layer 1"):
        nn.Sequential(nn.ReLU(), "relu")


def test_bad_inputs_raise_clear_errors():
    conv = nn.Conv2d(3, 2, 3)
    with pytest.raises(ValueError, match="4-D"):
        conv.forward(np.zeros((3, 5, 5), np.float32))
    with pytest.raises(ValueError, match="3 input channels"):
        conv.forward(np.zeros((1, 2, 5, 5), np.float32))
    with pytest.raises(TypeError, match="float32"):
        conv.forward(np.zeros((1, 3, 5, 5), np.float64))
    with pytest.raises(ValueError, match="smaller than kernel_size"):
        conv.forward(np.zeros((1, 3, 2, 5), np.float32))
    with pytest.raises(TypeError, match="numpy.ndarray or a CUDA array"):
        conv.forward([[1.0]])
    with pytest.raises(ValueError, match="too small"):
        nn.MaxPool2d(3).forward(np.zeros((1, 1, 2, 2)))
    with pytest.raises(ValueError, match="in_features"):
        nn.Linear(4, 2).forward(np.zeros((3, 5), np.float32))
    with pytest.raises(ValueError, match="before forward"):
        nn.ReLU().backward(np.zeros(3))
    relu = nn.ReLU()
    relu.forward(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="dy must have shape"):
        relu.backward(np.zeros((3, 2)))
    crit = nn.CrossEntropyLoss()
    logits = np.zeros((3, 4))
    with pytest.raises(ValueError, match=r"labels must be in \[0, 4\)"):
        crit.forward(logits, np.array([0, 4, 1]))
    with pytest.raises(ValueError, match=r"labels must be in \[0, 4\)"):
        crit.forward(logits, np.array([0, -1, 1]))
    with pytest.raises(TypeError, match="integer dtype"):
        crit.forward(logits, np.array([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        crit.forward(logits, np.array([0, 1]))
    with pytest.raises(ValueError, match="2-D"):
        crit.forward(np.zeros(4), np.array([0]))


# ---------------------------------------------------------------- PyTorch

torch = None


@pytest.fixture(scope="module")
def torch_mod():
    t = pytest.importorskip("torch", reason="PyTorch not installed: comparisons against it skipped")
    t.set_num_threads(1)
    return t


def _copy_to_torch(ours, theirs, torch):
    theirs.load_state_dict({k: torch.from_numpy(v) for k, v in ours.state_dict().items()})


def test_model_matches_torch_forward_backward(torch_mod):
    torch = torch_mod
    tnn = torch.nn
    ours = reference_model(np.float64)
    theirs = tnn.Sequential(
        tnn.Conv2d(1, 4, 3, padding=1), tnn.BatchNorm2d(4), tnn.ReLU(), tnn.MaxPool2d(2),
        tnn.Conv2d(4, 6, 3, padding=1), tnn.BatchNorm2d(6), tnn.ReLU(), tnn.MaxPool2d(2),
        tnn.Flatten(), tnn.Linear(24, 8), tnn.ReLU(), tnn.Dropout(0.0), tnn.Linear(8, 3)).double()
    assert list(theirs.state_dict()) == list(ours.state_dict())
    _copy_to_torch(ours, theirs, torch)
    x = RNG.standard_normal((4, 1, 9, 8))
    labels = RNG.integers(0, 3, 4)
    crit = nn.CrossEntropyLoss()
    loss = crit.forward(ours.forward(x), labels)
    dx = ours.backward(crit.backward())
    xt = torch.tensor(x, requires_grad=True)
    lt = tnn.CrossEntropyLoss()(theirs(xt), torch.tensor(labels))
    lt.backward()
    np.testing.assert_allclose(loss, lt.item(), rtol=1e-12)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-9, atol=1e-12)
    tp = dict(theirs.named_parameters())
    for name, p in ours.named_parameters():
        np.testing.assert_allclose(p.grad, tp[name].grad.numpy(), rtol=1e-9, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("layer", ["conv", "maxpool", "avgpool", "linear"])
def test_float32_layers_match_torch(torch_mod, layer):
    torch = torch_mod
    tnn = torch.nn
    if layer == "conv":
        ours, theirs = nn.Conv2d(3, 5, (3, 2), stride=(1, 2), padding=(1, 0), rng=3), tnn.Conv2d(3, 5, (3, 2), (1, 2), (1, 0))
        shape = (2, 3, 9, 8)
    elif layer == "maxpool":
        ours, theirs, shape = nn.MaxPool2d(3, 2), tnn.MaxPool2d(3, 2), (2, 3, 9, 8)
    elif layer == "avgpool":
        ours, theirs, shape = nn.AvgPool2d(2), tnn.AvgPool2d(2), (2, 3, 9, 8)
    else:
        ours, theirs, shape = nn.Linear(6, 4, rng=3), tnn.Linear(6, 4), (5, 6)
    _copy_to_torch(ours, theirs, torch)
    x = RNG.standard_normal(shape).astype(np.float32)
    y = ours.forward(x)
    xt = torch.tensor(x, requires_grad=True)
    yt = theirs(xt)
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-5, atol=1e-6)
    dy = RNG.standard_normal(y.shape).astype(np.float32)
    dx = ours.backward(dy)
    yt.backward(torch.from_numpy(dy))
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-5, atol=1e-5)
    tp = dict(theirs.named_parameters())
    for name, p in ours.named_parameters():
        np.testing.assert_allclose(p.grad, tp[name].grad.numpy(), rtol=1e-5, atol=1e-5, err_msg=name)


def test_default_init_distribution_matches_torch_bounds(torch_mod):
    torch = torch_mod
    t = torch.nn.Conv2d(32, 64, 3)
    ours = nn.Conv2d(32, 64, 3, rng=0)
    # same bound: max |w| of 18432 uniform draws is within 0.1% of the bound for both
    np.testing.assert_allclose(np.abs(ours.weight.data).max(), t.weight.abs().max().item(), rtol=2e-3)


def test_input_grad_false_skips_dx_but_keeps_param_grads():
    a, b = reference_model(np.float64), reference_model(np.float64)
    x = RNG.standard_normal((2, 1, 8, 8))
    dy = RNG.standard_normal((2, 3))
    a.forward(x)
    b.forward(x)
    assert a.backward(dy).shape == x.shape
    assert b.backward(dy, input_grad=False) is None
    for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        np.testing.assert_allclose(pb.grad, pa.grad, rtol=1e-12, err_msg=name)
    lin = nn.Linear(3, 2, dtype=np.float64, rng=0)
    lin.forward(np.ones((4, 3)))
    assert lin.backward(np.ones((4, 2)), input_grad=False) is None and lin.weight.grad is not None


def test_cnn_kernels_bitwise_same_for_any_thread_count():
    """conv2d (im2col, col2im, the dweight batch sum), max pooling, ReLU and the SGD update give
    the same bits with 1 thread and with the default count (fixed tasks, fixed sum order)."""
    import numba

    from numbanorm import functional as F

    x = RNG.standard_normal((9, 16, 31, 35)).astype(np.float32)  # y above the serial sizes
    w = RNG.standard_normal((32, 16, 3, 3)).astype(np.float32)
    b = RNG.standard_normal(32).astype(np.float32)
    big = RNG.standard_normal(300001).astype(np.float32)
    xl = RNG.standard_normal((65, 301)).astype(np.float32)  # above _blas.SPLIT_ABOVE, odd rows
    wl = RNG.standard_normal((97, 301)).astype(np.float32)

    def run():
        yl, sl = F.linear(xl, wl)
        linear = [yl, *F.linear_backward(np.sin(yl), sl)[:2]]
        y, sc = F.conv2d(x, w, b, padding=1)
        r, sr = F.relu(y)
        p, sp = F.max_pool2d(r, 2)
        dp = np.cos(np.arange(p.size, dtype=np.float32)).reshape(p.shape)
        dx, dw, db = F.conv2d_backward(F.relu_backward(F.max_pool2d_backward(dp, sp), sr), sc)
        wp, buf = big.copy(), big[::-1].copy()
        F.sgd_step(wp, big * 0.5, buf, 0.1, 0.9, 0.0, 0.0, False, False)
        return [y, r, p, dx, dw, db, wp, buf] + linear

    original = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = run()
    finally:
        numba.set_num_threads(original)
    for a, c in zip(one, run()):
        assert np.array_equal(a, c)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_batched_gemm_on_numba_pool_matches_numpy(dtype):
    """numbanorm/cpu/_cblas.py (BLAS called from Numba's pool): the same bits as NumPy's matmul
    per sample at one BLAS thread, for the layouts the conv kernels pass (a shared 2-D a, a
    transposed b view, a leading 1), and False (untouched) for a layout BLAS cannot read."""
    from threadpoolctl import threadpool_limits

    from numbanorm.cpu import _cblas

    if not _cblas.batched(np.ones((2, 2, 2), dtype), np.ones((2, 2), dtype), np.empty((2, 2, 2), dtype)):
        pytest.skip("NumPy's bundled OpenBLAS (numpy.libs) not found: the NumPy path is used")
    r = np.random.default_rng(5)
    n, m, k, p = 7, 13, 29, 11
    cases = [(r.standard_normal((m, k)), r.standard_normal((n, k, p))),
             (r.standard_normal((n, m, k)), r.standard_normal((n, p, k)).transpose(0, 2, 1)),
             (r.standard_normal((1, k, m)).transpose(0, 2, 1), r.standard_normal((n, k, p)))]
    for a, b in cases:
        a, b = a.astype(dtype), b.astype(dtype)
        out = np.full((n, m, p), np.nan, dtype)
        assert _cblas.batched(a, b, out)
        with threadpool_limits(1, "blas"):
            ref = np.stack([np.matmul(a if a.ndim == 2 else a[min(i, a.shape[0] - 1)], b[i]) for i in range(n)])
        np.testing.assert_array_equal(out, ref)
    out = np.full((n, m, p), np.nan, dtype)
    strided = r.standard_normal((n, m, 2 * k)).astype(dtype)[:, :, ::2]
    assert not _cblas.batched(strided, cases[0][1].astype(dtype), out)
    assert np.isnan(out).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_split_rows_gemm_matches_numpy(dtype):
    """numbanorm/cpu/_cblas.py split_rows (a 2-D product in two row halves on Numba's pool): the
    products linear makes (row-major and transposed operands, odd and single-row counts) agree
    with NumPy; False (untouched) for a layout BLAS cannot read."""
    from numbanorm.cpu import _cblas

    r = np.random.default_rng(6)
    if not _cblas.split_rows(np.ones((2, 2), dtype), np.ones((2, 2), dtype), np.empty((2, 2), dtype)):
        pytest.skip("NumPy's bundled OpenBLAS (numpy.libs) not found: the NumPy path is used")
    for m, k, n in ((7, 13, 5), (1, 4, 3), (64, 33, 17)):
        for a, b in ((r.standard_normal((m, k)), r.standard_normal((k, n))),
                     (r.standard_normal((k, m)).T, r.standard_normal((n, k)).T)):
            a, b = a.astype(dtype), b.astype(dtype)
            out = np.full((m, n), np.nan, dtype)
            assert _cblas.split_rows(a, b, out)
            np.testing.assert_allclose(out, a.astype(np.float64) @ b, rtol=1e-5, atol=1e-5)
    out = np.full((4, 3), np.nan, dtype)
    assert not _cblas.split_rows(np.ones((4, 10), dtype)[:, ::2], np.ones((5, 3), dtype), out)
    assert np.isnan(out).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_conv2d_fused_stride1_path_matches_generic(dtype, monkeypatch):
    """G == 1 and stride 1 take the fused per-sample kernels (numbanorm/cpu/conv.py
    _fused_forward / _fused_backward: wide columns in cache, x kept instead of cols); they agree
    with the generic im2col + batched gemm path (forced here) on y, dx, dweight and dbias, for an odd batch
    (unequal halves), padding, dilation, rectangular and 1x1 kernels, and with input_grad or
    weight_grad off."""
    from numbanorm import functional as F
    from numbanorm.cpu import conv as cpu_conv

    if not cpu_conv._cblas.AVAILABLE:
        pytest.skip("NumPy's bundled OpenBLAS (numpy.libs) not found: the generic path is used")
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    x = RNG.standard_normal((5, 3, 11, 9)).astype(dtype)
    b = RNG.standard_normal(4).astype(dtype)
    for kernel, kw in (((3, 3), dict(padding=1)), ((3, 2), dict(padding=(2, 0), dilation=(1, 2))),
                       ((1, 1), dict()), ((5, 5), dict(padding=2, dilation=2))):
        w = RNG.standard_normal((4, 3) + kernel).astype(dtype)
        results = []
        for fused in (True, False):
            if not fused:
                monkeypatch.setattr(cpu_conv._cblas, "AVAILABLE", False)
            y, saved = F.conv2d(x, w, b, **kw)
            assert (saved.kept is x) == fused
            dy = np.cos(np.arange(y.size)).reshape(y.shape).astype(dtype)
            results.append((y, *F.conv2d_backward(dy, saved)))
            assert F.conv2d_backward(dy, saved, input_grad=False)[0] is None
            dx_only = F.conv2d_backward(dy, saved, weight_grad=False)
            assert dx_only[1] is None and dx_only[2] is None
            np.testing.assert_array_equal(dx_only[0], results[-1][1])
        monkeypatch.undo()
        for a, c in zip(*results):
            np.testing.assert_allclose(a, c, **tol)
