"""Channels-last x for BatchNorm (NLC 3-D, NHWC 4-D, NDHWC 5-D memory): computed on the
(N*S, C) view without a layout copy, y and dx in x's memory order, against the float64
reference and the NCHW path, and against PyTorch's channels_last."""
import numpy as np
import pytest

from numbanorm import functional as F
from numbanorm import nn

from . import reference as ref


def channels_last(a):
    """a (N, C, *spatial) with channels-last memory: a transpose of a C-contiguous array."""
    return np.moveaxis(np.ascontiguousarray(np.moveaxis(a, 1, -1)), -1, 1)


def is_channels_last(a):
    return not a.flags.c_contiguous and np.moveaxis(a, 1, -1).flags.c_contiguous


@pytest.mark.parametrize("shape", [(4, 3, 7), (3, 5, 4, 6), (2, 3, 3, 4, 5)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_channels_last(shape, dtype, training):
    rng = np.random.default_rng(1)
    x = channels_last((1e3 + rng.standard_normal(shape)).astype(dtype))
    dy = channels_last(rng.standard_normal(shape).astype(dtype))
    pdtype = np.float32 if dtype == np.float16 else dtype
    C = shape[1]
    w, b = (1 + rng.random(C)).astype(pdtype), rng.standard_normal(C).astype(pdtype)
    rm, rv = np.full(C, 1e3, pdtype), np.ones(C, pdtype)
    rm2, rv2 = rm.copy(), rv.copy()
    assert is_channels_last(x)
    y, saved = F.batch_norm(x, w, b, rm, rv, training)
    dx, dw, db = F.batch_norm_backward(dy, saved)
    assert saved.channels_last and is_channels_last(y) and is_channels_last(dx)
    assert saved.x.base is not None and np.shares_memory(saved.x, x)  # no copy, float16 too
    y2, saved2 = F.batch_norm(np.ascontiguousarray(x), w, b, rm2, rv2, training)
    grads2 = F.batch_norm_backward(np.ascontiguousarray(dy), saved2)
    tol = dict(rtol=2e-3, atol=2e-3) if dtype == np.float16 else dict(rtol=1e-5, atol=1e-4)
    for got, want in zip((y, dx, dw, db, rm, rv), (y2, *grads2, rm2, rv2)):
        np.testing.assert_allclose(np.asarray(got, np.float64), np.asarray(want, np.float64), **tol)
    if training:
        x64 = x.astype(np.float64)
        np.testing.assert_allclose(y.astype(np.float64), ref.batch_norm(x64, w.astype(np.float64),
                                   b.astype(np.float64))[0], **tol)
        want = ref.batch_norm_backward(dy.astype(np.float64), x64, w.astype(np.float64))
        for got, want in zip((dx, dw, db), want):
            scale = np.max(np.abs(want))
            np.testing.assert_allclose(got.astype(np.float64), want, rtol=2e-3, atol=2e-3 * scale)
    # a dy in the other layout gives the same dx (it is copied into x's layout)
    dx_nchw = F.batch_norm_backward(np.ascontiguousarray(dy), saved)[0]
    np.testing.assert_array_equal(dx_nchw, dx)


def test_other_strides_still_copied():
    x = np.random.default_rng(2).standard_normal((4, 6, 5, 8)).astype(np.float32)[:, ::2, :, ::2]
    y, saved = F.batch_norm(x)
    assert not saved.channels_last and y.flags.c_contiguous
    np.testing.assert_allclose(y, ref.batch_norm(x.astype(np.float64))[0], rtol=1e-5, atol=1e-5)


def test_channels_last_layer_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    x = channels_last(rng.standard_normal((4, 6, 5, 7)).astype(np.float32))
    dy = channels_last(rng.standard_normal(x.shape).astype(np.float32))
    bn = nn.BatchNorm2d(6)
    y = bn.forward(x)
    dx = bn.backward(dy)
    tbn = torch.nn.BatchNorm2d(6)
    tx = torch.tensor(np.ascontiguousarray(x)).to(memory_format=torch.channels_last).requires_grad_()
    ty = tbn(tx)
    ty.backward(torch.tensor(np.ascontiguousarray(dy)).to(memory_format=torch.channels_last))
    assert ty.is_contiguous(memory_format=torch.channels_last) and is_channels_last(y)
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(bn.weight.grad, tbn.weight.grad.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(bn.running_var, tbn.running_var.numpy(), rtol=1e-5)
