"""BatchNorm's variants on the CPU: Weight Standardization, Batch Renormalization, masked
statistics, FrozenBatchNorm2d and frozen parameters, BatchNorm folded for inference.

Each against the float64 reference (tests/reference.py), finite differences with a random dy,
and PyTorch where PyTorch has the op (skipped with the reason when torch is not importable).
"""
import numpy as np
import pytest

from numbanorm import functional as F
from numbanorm import nn, optim

from . import reference as R
from .reference import f64, numeric_grad, tol

RNG = np.random.default_rng(4321)


def rand(shape, dtype=np.float64, scale=1.0, loc=0.0):
    return (loc + scale * RNG.standard_normal(shape)).astype(dtype)


def fd_check(f, backward_grads, arrays, eps_fd=1e-6, rtol=1e-5, atol=1e-7):
    """Central differences of loss = sum(f(*arrays) * dy) against backward_grads(dy) (a list
    with one gradient per array, None to skip)."""
    y = f(*arrays)
    dy = rand(y.shape)
    grads = backward_grads(dy)
    for arr, g in zip(arrays, grads):
        if g is None:
            continue
        num = numeric_grad(lambda: np.sum(f(*arrays) * dy), arr, eps_fd)
        np.testing.assert_allclose(g, num, rtol=rtol, atol=atol)


def torch_or_skip():
    return pytest.importorskip("torch", reason="PyTorch parity tests need torch (optional)")


# ================================================================ Weight Standardization

WS_SHAPES = [(4, 3, 3, 3), (8, 5), (3, 2, 1, 7), (16, 32, 3, 3)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", WS_SHAPES)
def test_weight_standardization_matches_reference(shape, dtype):
    w = rand(shape, dtype, scale=0.3, loc=0.1)
    w_hat, saved = F.weight_standardization(w)
    assert w_hat.shape == w.shape and w_hat.dtype == dtype
    np.testing.assert_allclose(w_hat, R.weight_standardization(f64(w)), **tol(dtype))
    dy = rand(shape, dtype)
    dw = F.weight_standardization_backward(dy, saved)
    assert dw.shape == w.shape and dw.dtype == dtype
    np.testing.assert_allclose(dw, R.weight_standardization_backward(f64(dy), f64(w)), **tol(dtype))


def test_weight_standardization_eps_and_finite_differences():
    w = rand((3, 2, 2, 2))
    w_hat, _ = F.weight_standardization(w, eps=0.5)
    np.testing.assert_allclose(w_hat, R.weight_standardization(w, 0.5), rtol=1e-12)
    holder = {}

    def f(w):
        y, holder["saved"] = F.weight_standardization(w, eps=1e-3)
        return y

    fd_check(f, lambda dy: [F.weight_standardization_backward(dy, holder["saved"])], [w])


def test_weight_standardization_matches_timm_formula_in_torch():
    torch = torch_or_skip()
    w = rand((6, 4, 3, 3), np.float32)
    wt = torch.tensor(w, requires_grad=True)
    # timm's StdConv2d: batch_norm of the weight viewed as (1, O, -1), training, eps 1e-6
    ref = torch.nn.functional.batch_norm(wt.reshape(1, 6, -1), None, None, training=True,
                                         momentum=0.0, eps=1e-6).reshape_as(wt)
    dy = rand(w.shape, np.float32)
    ref.backward(torch.tensor(dy))
    w_hat, saved = F.weight_standardization(w)
    np.testing.assert_allclose(w_hat, ref.detach().numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(F.weight_standardization_backward(dy, saved), wt.grad.numpy(),
                               rtol=1e-4, atol=1e-4)


def test_weight_standardization_bad_input():
    with pytest.raises(ValueError, match="weight must be"):
        F.weight_standardization(rand(5))
    with pytest.raises(TypeError, match="float32 or float64"):
        F.weight_standardization(np.ones((2, 3), np.int64))
    with pytest.raises(ValueError, match="eps"):
        F.weight_standardization(rand((2, 3)), eps=0.0)
    _, saved = F.weight_standardization(rand((2, 3)))
    with pytest.raises(ValueError, match="dy must have shape"):
        F.weight_standardization_backward(rand((3, 2)), saved)
    _, bn_saved = F.batch_norm(rand((4, 2)))
    with pytest.raises(TypeError, match="weight_standardization"):
        F.weight_standardization_backward(rand((4, 2)), bn_saved)


def test_weight_standardization_large_mean_float32():
    w = (1e4 + RNG.standard_normal((4, 50))).astype(np.float32)
    w_hat, _ = F.weight_standardization(w)
    np.testing.assert_allclose(w_hat, R.weight_standardization(f64(w)), rtol=1e-3, atol=1e-3)


# ================================================================ Batch Renormalization

RENORM_SHAPES = [(6, 3), (4, 3, 5), (3, 4, 3, 3), (2, 3, 2, 2, 3)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", RENORM_SHAPES)
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("rmax, dmax", [(3.0, 5.0), (1.1, 0.2)])  # clipping off / on
def test_batch_renorm_training_matches_reference(shape, dtype, affine, rmax, dmax):
    C = shape[1]
    x = rand(shape, dtype, scale=2.0, loc=0.5)
    w, b = (rand(C, dtype), rand(C, dtype)) if affine else (None, None)
    rm, rv = rand(C, dtype, scale=0.5), (np.abs(rand(C)) + 0.5).astype(dtype)
    rm0, rv0 = f64(rm.copy()), f64(rv.copy())
    y, saved = F.batch_renorm(x, w, b, rm, rv, True, 0.1, 1e-5, rmax, dmax)
    y_ref, rm_ref, rv_ref = R.batch_renorm(f64(x), f64(w), f64(b), rm0, rv0, 0.1, 1e-5, rmax, dmax)
    assert y.dtype == dtype and y.shape == shape
    np.testing.assert_allclose(y, y_ref, **tol(dtype))
    np.testing.assert_allclose(rm, rm_ref, **tol(dtype))  # updated as batch_norm, after r and d
    np.testing.assert_allclose(rv, rv_ref, **tol(dtype))
    dy = rand(shape, dtype)
    dx, dw, db = F.batch_renorm_backward(dy, saved)
    ref = R.batch_renorm_backward(f64(dy), f64(x), f64(w), rm0, rv0, 1e-5, rmax, dmax)
    np.testing.assert_allclose(dx, ref[0], **tol(dtype))
    if affine:
        assert dw.dtype == dtype and db.dtype == dtype
        np.testing.assert_allclose(dw, ref[1], **tol(dtype))
        np.testing.assert_allclose(db, ref[2], **tol(dtype))
    else:
        assert dw is None and db is None


def test_batch_renorm_running_stats_exactly_as_batch_norm():
    x = rand((8, 3, 4), np.float32, loc=2.0)
    rm, rv = rand(3, np.float32), (np.abs(rand(3)) + 0.5).astype(np.float32)
    rm2, rv2 = rm.copy(), rv.copy()
    F.batch_renorm(x, None, None, rm, rv, True, 0.3)
    F.batch_norm(x, None, None, rm2, rv2, True, 0.3)
    np.testing.assert_array_equal(rm, rm2)
    np.testing.assert_allclose(rv, rv2, rtol=1e-7, atol=0)


def test_batch_renorm_finite_differences_with_r_d_constant():
    x, w, b = rand((4, 2, 3)), rand(2), rand(2)
    rm, rv = rand(2, scale=0.5), np.abs(rand(2)) + 0.5
    r_d = R.batch_renorm_r_d(x, rm, rv, 1e-5, 1.2, 0.3)  # the forward's constants
    y, saved = F.batch_renorm(x, w, b, rm.copy(), rv.copy(), True, 0.1, 1e-5, 1.2, 0.3)
    np.testing.assert_allclose(y, R.batch_renorm(x, w, b, rm, rv, r_d=r_d)[0], rtol=1e-10, atol=1e-10)

    def f(x, w, b):  # r and d held at the forward's values
        return R.batch_renorm(x, w, b, rm, rv, r_d=r_d)[0]

    fd_check(f, lambda dy: F.batch_renorm_backward(dy, saved), [x, w, b])


def test_batch_renorm_with_rmax_1_dmax_0_is_batch_norm():
    x, w, b = rand((5, 3, 4)), rand(3), rand(3)
    rm, rv = rand(3), np.abs(rand(3)) + 0.5
    rm2, rv2 = rm.copy(), rv.copy()
    y, s = F.batch_renorm(x, w, b, rm, rv, True, 0.1, 1e-5, rmax=1.0, dmax=0.0)
    y2, s2 = F.batch_norm(x, w, b, rm2, rv2, True, 0.1, 1e-5)
    np.testing.assert_allclose(y, y2, rtol=1e-12, atol=1e-12)
    dy = rand(x.shape)
    for g, g2 in zip(F.batch_renorm_backward(dy, s), F.batch_norm_backward(dy, s2)):
        np.testing.assert_allclose(g, g2, rtol=1e-12, atol=1e-12)


def test_batch_renorm_eval_is_batch_norm_eval():
    x, w, b = rand((5, 3, 4)), rand(3), rand(3)
    rm, rv = rand(3), np.abs(rand(3)) + 0.5
    y, s = F.batch_renorm(x, w, b, rm, rv, training=False)
    y2, s2 = F.batch_norm(x, w, b, rm, rv, training=False)
    np.testing.assert_array_equal(y, y2)
    dy = rand(x.shape)
    for g, g2 in zip(F.batch_renorm_backward(dy, s), F.batch_norm_backward(dy, s2)):
        np.testing.assert_array_equal(g, g2)
    assert s.op == "batch_renorm"


def test_batch_renorm_bad_input_changes_nothing():
    x = rand((4, 3))
    rm, rv = np.zeros(3), np.ones(3)
    with pytest.raises(ValueError, match="running_mean and running_var"):
        F.batch_renorm(x, None, None, None, None)
    with pytest.raises(ValueError, match="rmax"):
        F.batch_renorm(x, None, None, rm, rv, rmax=0.5)
    with pytest.raises(ValueError, match="dmax"):
        F.batch_renorm(x, None, None, rm, rv, dmax=-1.0)
    with pytest.raises(ValueError, match="more than 1 value"):
        F.batch_renorm(rand((1, 3)), None, None, rm, rv)
    with pytest.raises(ValueError, match="running_var must have shape"):
        F.batch_renorm(x, None, None, rm, np.ones(4))
    np.testing.assert_array_equal(rm, 0.0)
    np.testing.assert_array_equal(rv, 1.0)


@pytest.mark.parametrize("cls, shape", [(nn.BatchRenorm1d, (6, 3)), (nn.BatchRenorm1d, (6, 3, 4)),
                                        (nn.BatchRenorm2d, (4, 3, 3, 3)),
                                        (nn.BatchRenorm3d, (2, 3, 2, 2, 2))])
def test_batch_renorm_layers(cls, shape):
    layer = cls(3, momentum=0.2, rmax=1.5, dmax=0.5, dtype=np.float64)
    assert list(layer.state_dict()) == list(nn.BatchNorm2d(3).state_dict())
    layer.running_mean[:] = rand(3, scale=0.3)
    layer.running_var[:] = np.abs(rand(3)) + 0.5
    layer.weight.data[:] = rand(3)
    x = rand(shape, loc=1.0)
    rm0, rv0 = layer.running_mean.copy(), layer.running_var.copy()
    y = layer(x)
    y_ref, rm_ref, _ = R.batch_renorm(x, layer.weight.data, layer.bias.data, rm0, rv0, 0.2, 1e-5, 1.5, 0.5)
    np.testing.assert_allclose(y, y_ref, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(layer.running_mean, rm_ref, rtol=1e-12)
    assert int(layer.num_batches_tracked) == 1
    dy = rand(shape)
    dx = layer.backward(dy)
    ref = R.batch_renorm_backward(dy, x, layer.weight.data, rm0, rv0, 1e-5, 1.5, 0.5)
    np.testing.assert_allclose(dx, ref[0], rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(layer.weight.grad, ref[1], rtol=1e-10, atol=1e-10)
    layer.eval()
    np.testing.assert_allclose(layer(x), R.batch_norm(x, layer.weight.data, layer.bias.data,
                                                      layer.running_mean, layer.running_var,
                                                      False)[0], rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="rmax"):
        cls(3, rmax=0.9)


# ================================================================ masked statistics

MASK_CASES = [((6, 3), "sample"), ((5, 3, 7), "sample"), ((5, 3, 7), "position"),
              ((4, 2, 3, 5), "position"), ((4, 2, 3, 5), "sample"), ((3, 2, 2, 2, 3), "position")]


def make_mask(shape, kind, p=0.6):
    mshape = shape[:1] if kind == "sample" else (shape[0],) + shape[2:]
    mask = RNG.random(mshape) < p
    mask.reshape(-1)[:2] = True  # at least 2 selected
    return mask


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape, kind", MASK_CASES)
@pytest.mark.parametrize("affine", [True, False])
def test_masked_batch_norm_matches_reference(shape, kind, dtype, affine):
    C = shape[1]
    x = rand(shape, dtype, scale=2.0, loc=0.5)
    mask = make_mask(shape, kind)
    w, b = (rand(C, dtype), rand(C, dtype)) if affine else (None, None)
    rm, rv = rand(C, dtype), (np.abs(rand(C)) + 0.5).astype(dtype)
    y_ref, rm_ref, rv_ref = R.masked_batch_norm(f64(x), f64(w), f64(b), mask, f64(rm), f64(rv), 0.1)
    y, saved = F.batch_norm(x, w, b, rm, rv, True, 0.1, mask=mask)
    assert y.dtype == dtype
    np.testing.assert_allclose(y, y_ref, **tol(dtype))
    np.testing.assert_allclose(rm, rm_ref, **tol(dtype))
    np.testing.assert_allclose(rv, rv_ref, **tol(dtype))
    dy = rand(shape, dtype)
    dx, dw, db = F.batch_norm_backward(dy, saved)
    ref = R.masked_batch_norm_backward(f64(dy), f64(x), f64(w), mask)
    np.testing.assert_allclose(dx, ref[0], **tol(dtype))
    if affine:
        np.testing.assert_allclose(dw, ref[1], **tol(dtype))
        np.testing.assert_allclose(db, ref[2], **tol(dtype))


@pytest.mark.parametrize("kind", ["sample", "position"])
def test_masked_batch_norm_matches_torch_autograd(kind):
    torch = torch_or_skip()
    shape = (5, 3, 2, 3)
    x, w, b = rand(shape, loc=1.0), rand(3), rand(3)
    mask = make_mask(shape, kind)
    xt, wt, bt = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    m = torch.tensor(mask).reshape(mask.shape + (1,) * (3 - mask.ndim)).expand(5, 2, 3)
    sel = xt.permute(0, 2, 3, 1)[m]  # (K, C)
    mu, var = sel.mean(0), sel.var(0, unbiased=False)
    cs = (1, 3, 1, 1)
    yt = (xt - mu.reshape(cs)) / torch.sqrt(var.reshape(cs) + 1e-5) * wt.reshape(cs) + bt.reshape(cs)
    dy = rand(shape)
    yt.backward(torch.tensor(dy))
    y, saved = F.batch_norm(x, w, b, mask=mask)
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-10, atol=1e-10)
    for g, gt in zip(F.batch_norm_backward(dy, saved), (xt, wt, bt)):
        np.testing.assert_allclose(g, gt.grad.numpy(), rtol=1e-10, atol=1e-10)


def test_masked_batch_norm_finite_differences():
    x, w, b = rand((4, 2, 3)), rand(2), rand(2)
    mask = np.array([[1, 0, 1], [1, 1, 0], [0, 0, 0], [1, 0, 1]], bool)
    holder = {}

    def f(x, w, b):
        y, holder["saved"] = F.batch_norm(x, w, b, mask=mask)
        return y

    fd_check(f, lambda dy: F.batch_norm_backward(dy, holder["saved"]), [x, w, b])


def test_mask_all_true_is_batch_norm_and_eval_ignores_mask():
    x, w, b = rand((4, 3, 5)), rand(3), rand(3)
    y, s = F.batch_norm(x, w, b, mask=np.ones(4, bool))
    y2, s2 = F.batch_norm(x, w, b)
    np.testing.assert_allclose(y, y2, rtol=1e-12, atol=1e-12)
    dy = rand(x.shape)
    for g, g2 in zip(F.batch_norm_backward(dy, s), F.batch_norm_backward(dy, s2)):
        np.testing.assert_allclose(g, g2, rtol=1e-10, atol=1e-10)
    rm, rv = rand(3), np.abs(rand(3)) + 0.5
    mask = make_mask(x.shape, "position")
    np.testing.assert_array_equal(F.batch_norm(x, w, b, rm, rv, False, mask=mask)[0],
                                  F.batch_norm(x, w, b, rm, rv, False)[0])


def test_masked_statistics_ignore_padding_large_mean_float32():
    """Selected values around 1e4, padding a huge constant: the statistics see only the former."""
    x = (1e4 + RNG.standard_normal((6, 2, 50))).astype(np.float32)
    mask = np.ones((6, 50), bool)
    mask[:, 40:] = False
    mask[0, 0] = False  # the first position (a naive shift) is padding
    x[:, :, 40:] = 3e8
    x[0, :, 0] = 3e8
    y, _ = F.batch_norm(x, mask=mask)
    y_ref = R.masked_batch_norm(f64(x), None, None, mask)[0]
    np.testing.assert_allclose(y[np.broadcast_to(mask[:, None], x.shape)],
                               y_ref[np.broadcast_to(mask[:, None], x.shape)], rtol=1e-3, atol=1e-3)


def test_masked_batch_norm_deterministic_across_thread_counts():
    import numba
    x = rand((8, 3, 20000), np.float32, loc=3.0)
    mask = RNG.random((8, 20000)) < 0.5
    dy = rand(x.shape, np.float32)
    results = []
    for n in sorted({1, numba.config.NUMBA_NUM_THREADS}):
        numba.set_num_threads(n)
        try:
            y, s = F.batch_norm(x, mask=mask)
            results.append((y, *F.batch_norm_backward(dy, s)[:1]))
        finally:
            numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    for a, b in zip(results[0], results[-1]):
        np.testing.assert_array_equal(a, b)


def test_mask_errors_change_nothing():
    x = rand((4, 2, 3))
    rm, rv = np.zeros(2), np.ones(2)
    one = np.zeros((4, 3), bool)
    one[1, 1] = True
    with pytest.raises(ValueError, match="more than 1 selected value"):
        F.batch_norm(x, None, None, rm, rv, True, mask=one)
    with pytest.raises(ValueError, match="mask must have shape"):
        F.batch_norm(x, None, None, rm, rv, True, mask=np.ones((4, 2), bool))
    with pytest.raises(TypeError, match="mask must have dtype bool"):
        F.batch_norm(x, None, None, rm, rv, True, mask=np.ones(4, np.int32))
    with pytest.raises(ValueError, match="mask must be on x's device"):
        F.batch_norm(x, None, None, rm, rv, True, mask=[True] * 4)
    np.testing.assert_array_equal(rm, 0.0)
    np.testing.assert_array_equal(rv, 1.0)


def test_batch_norm_layers_take_a_mask():
    layer = nn.BatchNorm2d(3, dtype=np.float64)
    x = rand((4, 3, 2, 2), loc=1.0)
    mask = make_mask(x.shape, "position")
    y = layer(x, mask=mask)
    y_ref, rm_ref, rv_ref = R.masked_batch_norm(x, np.ones(3), np.zeros(3), mask, np.zeros(3), np.ones(3))
    np.testing.assert_allclose(y, y_ref, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(layer.running_var, rv_ref, rtol=1e-12)
    dy = rand(x.shape)
    np.testing.assert_allclose(layer.backward(dy), R.masked_batch_norm_backward(dy, x, np.ones(3), mask)[0],
                               rtol=1e-10, atol=1e-10)
    layer.eval()
    np.testing.assert_array_equal(layer.forward(x, mask), layer(x))


def test_sync_batch_norm_takes_the_mask():
    pytest.importorskip("mpi4py", reason="SyncBatchNorm needs mpi4py")
    from mpi4py import MPI

    x = rand((5, 3, 4), loc=1.0)
    mask = make_mask(x.shape, "position")
    sync = nn.SyncBatchNorm(3, comm=MPI.COMM_SELF, dtype=np.float64)
    plain = nn.BatchNorm1d(3, dtype=np.float64)
    np.testing.assert_allclose(sync(x, mask=mask), plain(x, mask=mask), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(sync.running_var, plain.running_var, rtol=1e-12)
    dy = rand(x.shape)
    np.testing.assert_allclose(sync.backward(dy), plain.backward(dy), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(sync.weight.grad, plain.weight.grad, rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="more than 1 selected"):
        sync(x, mask=np.zeros((5, 4), bool))


# ================================================================ frozen BatchNorm and parameters

def torchvision_frozen_bn(x, w, b, rm, rv, eps=1e-5):
    """torchvision.ops.misc.FrozenBatchNorm2d.forward, in PyTorch float32."""
    torch = torch_or_skip()
    w, b, rm, rv = (torch.tensor(a).reshape(1, -1, 1, 1) for a in (w, b, rm, rv))
    scale = w * (rv + eps).rsqrt()
    bias = b - rm * scale
    return (torch.tensor(x) * scale + bias).numpy(), scale.reshape(-1).numpy()


def test_frozen_batch_norm_matches_torchvision_formula():
    C = 4
    layer = nn.FrozenBatchNorm2d(C)
    state = {"weight": rand(C, np.float32), "bias": rand(C, np.float32),
             "running_mean": rand(C, np.float32), "running_var": (np.abs(rand(C)) + 0.5).astype(np.float32)}
    layer.load_state_dict(state)
    assert list(layer.state_dict()) == ["weight", "bias", "running_mean", "running_var"]
    assert layer.parameters() == []
    x = rand((3, C, 5, 5), np.float32, loc=1.0)
    y_ref, scale = torchvision_frozen_bn(x, *state.values())
    for mode in (True, False):  # the same in train and eval
        layer.train(mode)
        np.testing.assert_allclose(layer(x), y_ref, rtol=1e-5, atol=1e-5)
    dy = rand(x.shape, np.float32)
    np.testing.assert_allclose(layer.backward(dy), dy * scale.reshape(1, C, 1, 1), rtol=1e-6, atol=1e-6)


def test_frozen_batch_norm_loads_a_batch_norm_state_dict_and_skips_the_reduction(monkeypatch):
    bn = nn.BatchNorm2d(3)
    bn(rand((4, 3, 2, 2), np.float32, loc=2.0))  # running stats and num_batches_tracked move
    model = nn.Sequential(nn.FrozenBatchNorm2d(3), nn.ReLU())
    model.load_state_dict({"0." + k: v for k, v in bn.state_dict().items()})  # num_batches_tracked dropped
    x = rand((2, 3, 4, 4), np.float32)
    bn.eval()
    np.testing.assert_allclose(model(x), np.maximum(bn(x), 0), rtol=1e-6, atol=1e-6)
    import numbanorm.cpu.channel_norm as cn

    def no_sums(*a):
        raise AssertionError("a frozen BatchNorm's backward must not reduce dy")

    monkeypatch.setattr(cn, "backward_sums", no_sums)
    monkeypatch.setattr(cn, "backward", no_sums)
    layer = model[0]
    y = layer(x)
    dx = layer.backward(np.ones_like(y))
    scale = layer.weight / np.sqrt(layer.running_var + 1e-5)
    np.testing.assert_allclose(dx, np.broadcast_to(scale.reshape(1, 3, 1, 1), x.shape), rtol=1e-6)
    with pytest.raises(ValueError, match="unexpected keys"):
        layer.load_state_dict({**layer.state_dict(), "extra": np.zeros(1)})


def test_requires_grad_freezes_parameters():
    model = nn.Sequential(nn.BatchNorm1d(3, dtype=np.float64), nn.LayerNorm(3, dtype=np.float64))
    assert all(p.requires_grad for p in model.parameters())
    assert model[0].requires_grad_(False) is model[0]
    x = rand((5, 3))
    model(x)
    dx = model.backward(rand((5, 3)))
    assert model[0].weight.grad is None and model[0].bias.grad is None
    assert model[1].weight.grad is not None
    # dx is unchanged by freezing
    ref = nn.Sequential(nn.BatchNorm1d(3, dtype=np.float64), nn.LayerNorm(3, dtype=np.float64))
    ref(x)
    RNG2 = np.random.default_rng(0)
    dy = RNG2.standard_normal((5, 3))
    model(x)
    np.testing.assert_allclose(model.backward(dy), ref.backward(dy), rtol=1e-12)
    assert dx.shape == x.shape


def test_frozen_eval_batch_norm_backward_computes_no_reduction(monkeypatch):
    bn = nn.BatchNorm2d(2, dtype=np.float64).eval().requires_grad_(False)
    x = rand((2, 2, 3, 3))
    bn(x)
    import numbanorm.cpu.channel_norm as cn
    monkeypatch.setattr(cn, "backward_sums", lambda *a: (_ for _ in ()).throw(AssertionError("reduced")))
    dy = rand(x.shape)
    np.testing.assert_allclose(bn.backward(dy), dy / np.sqrt(1 + 1e-5), rtol=1e-12)
    assert bn.weight.grad is None


@pytest.mark.parametrize("make", [lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9),
                                  lambda ps: optim.Adam(ps, lr=0.1)])
def test_optimizers_skip_parameters_that_do_not_require_grad(make):
    bn = nn.BatchNorm1d(3, dtype=np.float64)
    opt = make(bn.parameters())
    bn.weight.requires_grad = False
    bn(rand((4, 3)))
    bn.backward(rand((4, 3)))
    assert bn.weight.grad is None
    bn.weight.grad = np.ones(3)  # set by hand: still skipped
    w0, b0 = bn.weight.data.copy(), bn.bias.data.copy()
    opt.step()
    np.testing.assert_array_equal(bn.weight.data, w0)
    assert not np.array_equal(bn.bias.data, b0)


# ================================================================ fusion

def trained_bn(cls, C, shape, affine=True):
    bn = cls(C, affine=affine)
    for _ in range(3):
        bn(rand(shape, np.float32, scale=2.0, loc=1.0))
    if affine:
        bn.weight.data[:] = rand(C, np.float32)
        bn.bias.data[:] = rand(C, np.float32)
    return bn.eval()


@pytest.mark.parametrize("conv_bias, affine, kw", [
    (True, True, dict(stride=2, padding=1)), (False, True, dict(stride=2, padding=1)),
    (True, False, dict(stride=2, padding=1)),
    (True, True, dict(padding=2, dilation=2, groups=1, padding_mode="replicate"))])
def test_fuse_conv_bn_eval_matches_torch(conv_bias, affine, kw):
    torch = torch_or_skip()
    from torch.nn.utils.fusion import fuse_conv_bn_eval as torch_fuse

    conv = nn.Conv2d(3, 5, 3, bias=conv_bias, **kw).eval()
    bn = trained_bn(nn.BatchNorm2d, 5, (4, 5, 3, 3), affine)
    fused = nn.utils.fuse_conv_bn_eval(conv, bn)
    tconv = torch.nn.Conv2d(3, 5, 3, bias=conv_bias, **kw).eval()
    tbn = torch.nn.BatchNorm2d(5, affine=affine).eval()
    tconv.load_state_dict({k: torch.tensor(v) for k, v in conv.state_dict().items()})
    tbn.load_state_dict({k: torch.tensor(v) for k, v in bn.state_dict().items()})
    tfused = torch_fuse(tconv, tbn)
    np.testing.assert_allclose(fused.weight.data, tfused.weight.detach().numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(fused.bias.data, tfused.bias.detach().numpy(), rtol=1e-6, atol=1e-6)
    x = rand((2, 3, 7, 7), np.float32)
    np.testing.assert_allclose(fused(x), bn(conv(x)), rtol=1e-5, atol=1e-5)
    assert fused.stride == conv.stride and fused.padding == conv.padding and not fused.training
    assert fused.dilation == conv.dilation and fused.padding_mode == conv.padding_mode


def test_fuse_linear_bn_eval_matches_torch():
    torch = torch_or_skip()
    from torch.nn.utils.fusion import fuse_linear_bn_eval as torch_fuse

    lin = nn.Linear(6, 4).eval()
    bn = trained_bn(nn.BatchNorm1d, 4, (8, 4))
    fused = nn.utils.fuse_linear_bn_eval(lin, bn)
    tlin, tbn = torch.nn.Linear(6, 4).eval(), torch.nn.BatchNorm1d(4).eval()
    tlin.load_state_dict({k: torch.tensor(v) for k, v in lin.state_dict().items()})
    tbn.load_state_dict({k: torch.tensor(v) for k, v in bn.state_dict().items()})
    tfused = torch_fuse(tlin, tbn)
    np.testing.assert_allclose(fused.weight.data, tfused.weight.detach().numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(fused.bias.data, tfused.bias.detach().numpy(), rtol=1e-6, atol=1e-6)
    x = rand((5, 6), np.float32)
    np.testing.assert_allclose(fused(x), bn(lin(x)), rtol=1e-5, atol=1e-5)


def test_fuse_bn_eval_folds_the_demo_cnn_and_leaves_it_unchanged():
    from numbanorm import demo

    model = demo.build_model("batch")
    for _ in range(2):
        model(rand((8, 1, 28, 28), np.float32, loc=0.5))
    before = {k: v.copy() for k, v in model.state_dict().items()}
    fused = nn.utils.fuse_bn_eval(model)
    assert model.training  # the input model is not touched
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[k])
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused) and len(fused) == len(model) - 2
    assert not fused.training
    x = rand((4, 1, 28, 28), np.float32)
    model.eval()
    y = model(x)
    np.testing.assert_allclose(fused(x), y, rtol=1e-5, atol=1e-5 * np.abs(y).max())
    # the copy is independent of the original
    fused[0].weight.data[:] = 0
    assert np.abs(model[0].weight.data).max() > 0


def test_fuse_bn_eval_keeps_unfusable_layers_and_nested_sequentials():
    inner = nn.Sequential(nn.Conv2d(2, 3, 1), trained_bn(nn.BatchNorm2d, 3, (2, 3, 2, 2)))
    model = nn.Sequential(nn.BatchNorm2d(2).eval(), inner, nn.ReLU(), nn.Flatten(),
                          nn.Linear(12, 4), nn.ReLU(), trained_bn(nn.BatchNorm1d, 4, (5, 4)))
    fused = nn.utils.fuse_bn_eval(model)
    assert [type(m).__name__ for m in fused] == ["BatchNorm2d", "Sequential", "ReLU", "Flatten",
                                                 "Linear", "ReLU", "BatchNorm1d"]
    assert len(fused[1]) == 1
    model.eval()
    x = rand((3, 2, 2, 2), np.float32)
    np.testing.assert_allclose(fused(x), model(x), rtol=1e-5, atol=1e-5)


def test_fusion_errors():
    conv, bn = nn.Conv2d(2, 3, 1), nn.BatchNorm2d(3)
    with pytest.raises(ValueError, match="eval mode only"):
        nn.utils.fuse_conv_bn_eval(conv, bn)
    with pytest.raises(ValueError, match="does not match"):
        nn.utils.fuse_conv_bn_eval(conv.eval(), nn.BatchNorm2d(4).eval())
    with pytest.raises(ValueError, match="running statistics"):
        nn.utils.fuse_conv_bn_eval(conv.eval(), nn.BatchNorm2d(3, track_running_stats=False).eval())
    with pytest.raises(TypeError, match="Linear and a BatchNorm1d"):
        nn.utils.fuse_linear_bn_eval(conv, bn)


# ================================================================ StdConv2d

@pytest.mark.parametrize("kw", [dict(), dict(stride=2, padding=1, bias=False),
                                dict(padding=2, dilation=2, groups=2, padding_mode="reflect")])
def test_std_conv2d_matches_timm_formula_in_torch(kw):
    torch = torch_or_skip()
    conv = nn.StdConv2d(4, 6, 3, dtype=np.float64, eps=1e-5, **kw)
    assert list(conv.state_dict()) == list(nn.Conv2d(4, 6, 3, bias=kw.get("bias", True)).state_dict())
    x = rand((2, 4, 7, 7))
    y = conv(x)
    dy = rand(y.shape)
    dx = conv.backward(dy)
    xt = torch.tensor(x, requires_grad=True)
    wt = torch.tensor(conv.weight.data, requires_grad=True)
    bt = torch.tensor(conv.bias.data, requires_grad=True) if conv.bias is not None else None
    w_hat = torch.nn.functional.batch_norm(wt.reshape(1, 6, -1), None, None, training=True,
                                           momentum=0.0, eps=1e-5).reshape_as(wt)
    tconv = torch.nn.Conv2d(4, 6, 3, stride=conv.stride, padding=conv.padding, dilation=conv.dilation,
                            groups=conv.groups, padding_mode=conv.padding_mode, bias=bt is not None)
    yt = tconv._conv_forward(xt, w_hat, bt)
    yt.backward(torch.tensor(dy))
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(conv.weight.grad, wt.grad.numpy(), rtol=1e-9, atol=1e-9)
    if bt is not None:
        np.testing.assert_allclose(conv.bias.grad, bt.grad.numpy(), rtol=1e-10, atol=1e-10)


def test_std_conv2d_finite_differences_and_frozen_weight():
    conv = nn.StdConv2d(2, 3, 2, dtype=np.float64)
    x = rand((2, 2, 3, 3))

    def f(w):
        conv.weight.data = w
        return conv(x)

    w = conv.weight.data.copy()

    def grads(dy):
        conv.zero_grad()
        conv.weight.data = w
        conv(x)
        conv.backward(dy)
        return [conv.weight.grad]

    fd_check(f, grads, [w])
    conv.weight.data = w
    conv.requires_grad_(False)
    conv.zero_grad()
    conv(x)
    assert conv.backward(rand((2, 3, 2, 2))).shape == x.shape
    assert conv.weight.grad is None and conv.bias.grad is None
    with pytest.raises(ValueError, match="eps"):
        nn.StdConv2d(2, 3, 2, eps=0)
