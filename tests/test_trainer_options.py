"""The trainer layers' PyTorch options: Conv2d (groups, dilation, padding_mode), MaxPool2d /
AvgPool2d (padding, ceil_mode, count_include_pad), CrossEntropyLoss (ignore_index,
label_smoothing, reduction), Adam(amsgrad) — against PyTorch in float64 (forward and every
gradient), against finite differences with a random dy, and their errors."""
import numpy as np
import pytest

import numbanorm.nn as nn
from numbanorm import functional as F, optim

from .reference import numeric_grad
from .test_layers import check_gradients

RNG = np.random.default_rng(77)


@pytest.fixture(scope="module")
def torch():
    t = pytest.importorskip("torch", reason="PyTorch not installed: comparisons against it skipped")
    t.set_num_threads(1)
    return t


def _t(torch, a, grad=False):
    return torch.tensor(np.array(a), dtype=torch.float64, requires_grad=grad)


CONV_OPTIONS = [  # (N, C, H, W, O, kernel, stride, padding, dilation, groups, padding_mode, bias)
    (2, 4, 7, 6, 6, 3, 1, 1, 1, 2, "zeros", True),
    (1, 3, 9, 8, 3, 3, 1, 1, 1, 3, "zeros", False),       # depthwise
    (2, 2, 9, 10, 3, 3, (2, 1), 2, 2, 1, "zeros", True),  # dilation 2, padding 2
    (1, 2, 6, 7, 2, (3, 2), 1, (1, 2), 1, 1, "reflect", True),
    (2, 2, 5, 5, 4, 3, 2, 2, 1, 2, "replicate", True),
    (1, 3, 6, 5, 3, 3, 1, (2, 1), (1, 2), 1, "circular", False),
]


@pytest.mark.parametrize("case", CONV_OPTIONS)
def test_conv2d_options_match_torch(torch, case):
    N, C, H, W, O, k, s, p, d, g, mode, bias = case
    ours = nn.Conv2d(C, O, k, stride=s, padding=p, dilation=d, groups=g, bias=bias,
                     padding_mode=mode, dtype=np.float64, rng=3)
    theirs = torch.nn.Conv2d(C, O, k, stride=s, padding=p, dilation=d, groups=g, bias=bias,
                             padding_mode=mode).double()
    theirs.load_state_dict({k_: torch.from_numpy(v) for k_, v in ours.state_dict().items()})
    x = RNG.standard_normal((N, C, H, W))
    xt = _t(torch, x, grad=True)
    yt = theirs(xt)
    y = ours.forward(x)
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-12, atol=1e-12)
    dy = RNG.standard_normal(y.shape)
    yt.backward(torch.from_numpy(dy))
    dx = ours.backward(dy)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ours.weight.grad, theirs.weight.grad.numpy(), rtol=1e-11, atol=1e-12)
    if bias:
        np.testing.assert_allclose(ours.bias.grad, theirs.bias.grad.numpy(), rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("case", [CONV_OPTIONS[0], CONV_OPTIONS[2], CONV_OPTIONS[3]])
def test_conv2d_options_finite_differences(case):
    N, C, H, W, O, k, s, p, d, g, mode, bias = case
    conv = nn.Conv2d(C, O, k, stride=s, padding=p, dilation=d, groups=g, bias=bias,
                     padding_mode=mode, dtype=np.float64, rng=4)
    params = [conv.weight] + ([conv.bias] if bias else [])
    check_gradients(conv, RNG.standard_normal((N, C, H, W)), params)


POOL_OPTIONS = [  # (shape, kernel, stride, padding, ceil_mode, count_include_pad)
    ((2, 3, 7, 6), 3, 2, 1, False, True),
    ((1, 2, 7, 7), 2, 2, 1, True, True),
    ((2, 2, 8, 5), (3, 2), (2, 1), (1, 1), True, False),
    ((1, 1, 5, 6), 3, 3, 0, True, True),
    ((1, 2, 6, 6), (2, 3), None, (1, 0), False, False),
]


@pytest.mark.parametrize("case", POOL_OPTIONS)
@pytest.mark.parametrize("kind", ["max", "avg"])
def test_pool_options_match_torch(torch, case, kind):
    shape, k, s, p, ceil, cip = case
    if kind == "max":
        ours = nn.MaxPool2d(k, s, p, ceil_mode=ceil)
        theirs = torch.nn.MaxPool2d(k, s, p, ceil_mode=ceil)
    else:
        ours = nn.AvgPool2d(k, s, p, ceil_mode=ceil, count_include_pad=cip)
        theirs = torch.nn.AvgPool2d(k, s, p, ceil_mode=ceil, count_include_pad=cip)
    x = RNG.standard_normal(shape)
    xt = _t(torch, x, grad=True)
    yt = theirs(xt)
    y = ours.forward(x)
    assert y.shape == tuple(yt.shape)
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-13, atol=1e-13)
    dy = RNG.standard_normal(y.shape)
    yt.backward(torch.from_numpy(dy))
    np.testing.assert_allclose(ours.backward(dy), xt.grad.numpy(), rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("case", POOL_OPTIONS[:3])
def test_avg_pool_options_finite_differences(case):
    shape, k, s, p, ceil, cip = case
    check_gradients(nn.AvgPool2d(k, s, p, ceil_mode=ceil, count_include_pad=cip),
                    RNG.standard_normal(shape))


XENT_OPTIONS = [  # (reduction, ignore_index, label_smoothing)
    ("mean", -100, 0.0), ("sum", -100, 0.0), ("none", -100, 0.0), ("mean", 2, 0.0),
    ("mean", -100, 0.1), ("sum", 1, 0.25), ("none", 0, 0.3), ("mean", 3, 0.2),
]


@pytest.mark.parametrize("reduction,ignore_index,smoothing", XENT_OPTIONS)
def test_cross_entropy_options_match_torch(torch, reduction, ignore_index, smoothing):
    N, K = 7, 4
    logits = RNG.standard_normal((N, K)) * 3
    labels = RNG.integers(0, K, N)
    labels[1] = ignore_index if ignore_index >= 0 else labels[1]
    labels[4] = -100 if ignore_index == -100 else labels[4]
    crit = nn.CrossEntropyLoss(reduction=reduction, ignore_index=ignore_index, label_smoothing=smoothing)
    lt = _t(torch, logits, grad=True)
    tloss = torch.nn.functional.cross_entropy(lt, torch.from_numpy(labels), reduction=reduction,
                                              ignore_index=ignore_index, label_smoothing=smoothing)
    loss = crit.forward(logits, labels)
    np.testing.assert_allclose(loss, tloss.detach().numpy(), rtol=1e-13, atol=1e-13)
    dloss = RNG.standard_normal(N) if reduction == "none" else 0.7
    tloss.backward(torch.tensor(np.asarray(dloss), dtype=torch.float64))
    np.testing.assert_allclose(crit.backward(dloss), lt.grad.numpy(), rtol=1e-12, atol=1e-13)


def test_cross_entropy_smoothing_finite_differences():
    logits = RNG.standard_normal((5, 3))
    labels = np.array([0, 2, 1, 1, 0])
    _, saved = F.cross_entropy(logits, labels, "sum", 1, 0.2)
    g = F.cross_entropy_backward(1.0, saved)
    fd = numeric_grad(lambda: F.cross_entropy(logits, labels, "sum", 1, 0.2)[0], logits)
    np.testing.assert_allclose(g, fd, rtol=1e-7, atol=1e-8)


def test_cross_entropy_all_ignored_mean_is_nan_like_torch(torch):
    logits = RNG.standard_normal((3, 2))
    labels = np.full(3, -100)
    loss, saved = F.cross_entropy(logits, labels)
    assert np.isnan(loss) and np.isnan(float(torch.nn.functional.cross_entropy(
        torch.from_numpy(logits), torch.from_numpy(labels))))
    np.testing.assert_array_equal(F.cross_entropy_backward(1.0, saved), np.zeros((3, 2)))


def test_adam_amsgrad_matches_torch(torch):
    w0 = RNG.standard_normal((4, 3))
    p = nn.Parameter(w0.copy())
    tp = torch.nn.Parameter(torch.from_numpy(w0.copy()))
    opt = optim.Adam([p], lr=0.05, weight_decay=0.01, amsgrad=True)
    topt = torch.optim.Adam([tp], lr=0.05, weight_decay=0.01, amsgrad=True)
    for step in range(6):
        g = RNG.standard_normal((4, 3)) * (3.0 if step % 2 else 0.1)  # v shrinks: amsgrad matters
        p.grad = g.copy()
        tp.grad = torch.from_numpy(g.copy())
        opt.step()
        topt.step()
        np.testing.assert_allclose(p.data, tp.detach().numpy(), rtol=1e-12, atol=1e-13)


def test_option_errors_are_clear():
    with pytest.raises(ValueError, match="groups"):
        nn.Conv2d(4, 6, 3, groups=4)
    with pytest.raises(ValueError, match="padding_mode"):
        nn.Conv2d(1, 1, 3, padding_mode="mirror")
    with pytest.raises(ValueError, match="dilation"):
        nn.Conv2d(1, 1, 3, dilation=0)
    with pytest.raises(ValueError, match="too large for padding_mode='reflect'"):
        nn.Conv2d(1, 1, 3, padding=3, padding_mode="reflect").forward(np.zeros((1, 1, 3, 3), np.float32))
    with pytest.raises(ValueError, match="at most half of kernel_size"):
        nn.MaxPool2d(2, padding=2).forward(np.zeros((1, 1, 4, 4)))
    with pytest.raises(ValueError, match="weight.shape\\[1\\]"):
        F.conv2d(np.zeros((1, 4, 5, 5)), np.zeros((2, 3, 3, 3)), groups=2)
    with pytest.raises(ValueError, match="label_smoothing"):
        nn.CrossEntropyLoss(label_smoothing=1.5).forward(np.zeros((2, 3)), np.array([0, 1]))
    with pytest.raises(TypeError, match="dloss must be an array"):
        crit = nn.CrossEntropyLoss(reduction="none")
        crit.forward(np.zeros((2, 3)), np.array([0, 1]))
        crit.backward(1.0)
