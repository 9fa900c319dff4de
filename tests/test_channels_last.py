"""Channels-last x (NLC 3-D, NHWC 4-D, NDHWC 5-D memory) for BatchNorm (on the (N*S, C) view),
GroupNorm and InstanceNorm (on each sample's (S, C) matrix): computed without a layout copy,
y and dx in x's memory order, against the float64 reference, finite differences, the NCHW
path and PyTorch's channels_last; bitwise the same for any thread count."""
import numba
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


# (N*S, C) shapes that fill whole row-block tasks and leave partial blocks and tasks (C odd:
# rows per task not a multiple of the 64-row sum blocks), run by the parallel kernels;
# (3000, 130): wide rows (two register groups of column vectors, the last one masked), whose
# sums take longer tasks than the elementwise passes (187 rows); C = 3 and 37: one masked vector
BLOCK_SHAPES = [(8, 64, 10, 12), (5, 37, 9, 21), (6000, 48), (3000, 130), (8, 3, 40, 35),
                (11000, 3)]


def _batch_norm_run(x, dy, w, b):
    rm, rv = np.zeros(x.shape[1], w.dtype), np.ones(x.shape[1], w.dtype)
    y, saved = F.batch_norm(x, w, b, rm, rv, True)
    return (y, *F.batch_norm_backward(dy, saved), rm, rv), saved


@pytest.mark.parametrize("shape", BLOCK_SHAPES)
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_batch_norm_channels_last_blocks(shape, dtype):
    """The row-block kernels of the (N*S, C) view (channels-last, and plain (N, C) input):
    large-mean data against the float64 reference, and bitwise the same for 1 thread and for
    all (the tasks and their merge order depend on the shape only)."""
    rng = np.random.default_rng(8)
    loc = 1e3 if dtype == np.float16 else 1e4  # float16's spacing at 1e4 is 8
    base = (loc + rng.standard_normal(shape)).astype(dtype)
    x = channels_last(base) if len(shape) > 2 else base
    dy = rng.standard_normal(shape).astype(dtype)
    dy = channels_last(dy) if len(shape) > 2 else dy
    pdtype = np.float32
    C = shape[1]
    w, b = (1 + rng.random(C)).astype(pdtype), rng.standard_normal(C).astype(pdtype)
    original = numba.get_num_threads()
    results = []
    try:
        for threads in (1, original):
            numba.set_num_threads(threads)
            out, saved = _batch_norm_run(x, dy, w, b)
            results.append(out)
    finally:
        numba.set_num_threads(original)
    assert x.size >= 1 << 15  # the parallel kernels, not the serial small-input ones
    assert len(shape) == 2 or saved.channels_last
    for a, b_ in zip(*results):
        np.testing.assert_array_equal(a, b_)
    y, dx, dw, db, rm, rv = results[0]
    x64, dy64, w64, b64 = (a.astype(np.float64) for a in (x, dy, w, b))
    tol = 2e-3 if dtype == np.float16 else 2e-5
    want_y, want_rm, want_rv = ref.batch_norm(x64, w64, b64, np.zeros(C), np.ones(C))
    np.testing.assert_allclose(y.astype(np.float64), want_y, rtol=tol, atol=tol * 4)
    np.testing.assert_allclose(rm, want_rm, rtol=1e-6)
    np.testing.assert_allclose(rv, want_rv, rtol=1e-5)
    for got, want in zip((dx, dw, db), ref.batch_norm_backward(dy64, x64, w64)):
        scale = np.max(np.abs(want))
        np.testing.assert_allclose(got.astype(np.float64), want, rtol=tol, atol=tol * 4 * scale)


def test_batch_norm_channels_last_finite_differences():
    """Central differences of sum(y * dy), random dy, float64, on a channels-last shape whose
    (N*S, C) view has whole 8-row sum blocks and a partial one."""
    rng = np.random.default_rng(9)
    x = channels_last(rng.standard_normal((3, 5, 3, 7)))
    w, b = rng.standard_normal(5), rng.standard_normal(5)
    forward = lambda: F.batch_norm(x, w, b, None, None, True)  # noqa: E731
    y, saved = forward()
    assert saved.channels_last
    dy = rng.standard_normal(y.shape)
    grads = F.batch_norm_backward(dy, saved)
    for k, arr in enumerate((x, w, b)):
        num = np.zeros(arr.shape)
        for i in np.ndindex(arr.shape):
            old = arr[i]
            arr[i] = old + 1e-6
            lp = np.sum(forward()[0] * dy)
            arr[i] = old - 1e-6
            lm = np.sum(forward()[0] * dy)
            arr[i] = old
            num[i] = (lp - lm) / 2e-6
        np.testing.assert_allclose(grads[k], num, rtol=1e-5, atol=1e-7, err_msg=f"gradient {k}")


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


# ---------------------------------------------------------------- GroupNorm, InstanceNorm

ROW_NORMS = {  # name: (forward(x, w, b), backward, reference forward, reference backward)
    "group_norm": (lambda x, w, b: F.group_norm(x, 2, w, b), F.group_norm_backward,
                   lambda x, w, b: ref.group_norm(x, 2, w, b),
                   lambda dy, x, w: ref.group_norm_backward(dy, x, 2, w)),
    "group_norm_per_channel": (lambda x, w, b: F.group_norm(x, x.shape[1], w, b), F.group_norm_backward,
                               lambda x, w, b: ref.group_norm(x, x.shape[1], w, b),
                               lambda dy, x, w: ref.group_norm_backward(dy, x, x.shape[1], w)),
    "instance_norm": (lambda x, w, b: F.instance_norm(x, w, b), F.instance_norm_backward,
                      lambda x, w, b: ref.instance_norm(x, w, b)[0],
                      lambda dy, x, w: ref.instance_norm_backward(dy, x, w)),
}


@pytest.mark.parametrize("shape", [(4, 6, 7), (3, 4, 5, 6), (2, 4, 3, 4, 5), (2, 6, 3, 3), (16, 8, 15, 19)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
@pytest.mark.parametrize("op", sorted(ROW_NORMS))
def test_row_norms_channels_last(shape, dtype, op):
    forward, backward, ref_forward, ref_backward = ROW_NORMS[op]
    rng = np.random.default_rng(4)
    # large-mean data: 1e4 + noise (1e3 for float16, whose spacing at 1e4 is 8)
    loc = 1e3 if dtype == np.float16 else 1e4
    x = channels_last((loc + rng.standard_normal(shape)).astype(dtype))
    dy = channels_last(rng.standard_normal(shape).astype(dtype))
    pdtype = np.float32 if dtype == np.float16 else dtype
    C = shape[1]
    w, b = (1 + rng.random(C)).astype(pdtype), rng.standard_normal(C).astype(pdtype)
    y, saved = forward(x, w, b)
    dx, dw, db = backward(dy, saved)
    assert y.dtype == dx.dtype == dtype and dw.dtype == db.dtype == pdtype
    # no layout copy (float16 included): the kernels read x's own memory
    assert saved.channels_last and is_channels_last(y) and is_channels_last(dx)
    assert np.shares_memory(saved.x, x)
    # the float64 reference (float16: to float16 rounding)
    x64, dy64, w64, b64 = (a.astype(np.float64) for a in (x, dy, w, b))
    tol = {np.float16: 2e-3, np.float32: 2e-5, np.float64: 1e-10}[dtype]
    np.testing.assert_allclose(y.astype(np.float64), ref_forward(x64, w64, b64), rtol=tol, atol=tol * 4)
    for got, want in zip((dx, dw, db), ref_backward(dy64, x64, w64)):
        scale = np.max(np.abs(want))
        np.testing.assert_allclose(got.astype(np.float64), want, rtol=tol, atol=tol * 4 * scale)
    # the NCHW path gives the same results
    y2, saved2 = forward(np.ascontiguousarray(x), w, b)
    grads2 = backward(np.ascontiguousarray(dy), saved2)
    assert not saved2.channels_last
    close = dict(rtol=1e-3, atol=1e-3) if dtype == np.float16 else dict(rtol=tol, atol=tol)
    for got, want in zip((y, dx, dw, db), (y2, *grads2)):
        np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64), **close)
    # a dy in the other layout gives the same dx (it is copied into x's layout)
    np.testing.assert_array_equal(backward(np.ascontiguousarray(dy), saved)[0], dx)


@pytest.mark.parametrize("op", sorted(ROW_NORMS))
def test_row_norms_channels_last_finite_differences(op):
    """Central differences of sum(y * dy), random dy, float64, x perturbed in its own memory."""
    forward, backward = ROW_NORMS[op][:2]
    rng = np.random.default_rng(5)
    x = channels_last(rng.standard_normal((2, 4, 3, 2)))
    w, b = rng.standard_normal(4), rng.standard_normal(4)
    y, saved = forward(x, w, b)
    dy = rng.standard_normal(y.shape)
    grads = backward(dy, saved)
    assert saved.channels_last
    for k, arr in enumerate((x, w, b)):
        flat = np.moveaxis(arr, 1, -1).reshape(-1) if arr.ndim > 1 else arr  # views, not copies
        index = np.moveaxis(np.arange(arr.size).reshape(np.moveaxis(arr, 1, -1).shape), -1, 1) \
            if arr.ndim > 1 else np.arange(arr.size)
        num = np.zeros(arr.shape)
        for i in range(flat.size):
            old = flat[i]
            flat[i] = old + 1e-6
            lp = np.sum(forward(x, w, b)[0] * dy)
            flat[i] = old - 1e-6
            lm = np.sum(forward(x, w, b)[0] * dy)
            flat[i] = old
            num[np.nonzero(index == i)] = (lp - lm) / 2e-6
        np.testing.assert_allclose(grads[k], num, rtol=1e-5, atol=1e-7, err_msg=f"gradient {k}")


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("op", sorted(ROW_NORMS))
def test_row_norms_channels_last_thread_count(op, dtype):
    """Bitwise the same y, dx, dweight, dbias for 1 thread and for all, and run to run
    (a shape large enough for the parallel kernels, S = 13 * 11 not a multiple of the row
    blocks)."""
    forward, backward = ROW_NORMS[op][:2]
    rng = np.random.default_rng(6)
    shape = (16, 16, 13, 11)  # 36608 elements: above SERIAL_BELOW
    x = channels_last((3 + rng.standard_normal(shape)).astype(dtype))
    dy = channels_last(rng.standard_normal(shape).astype(dtype))
    w, b = (1 + rng.random(16)).astype(np.float32), rng.standard_normal(16).astype(np.float32)
    original = numba.get_num_threads()
    results = []
    try:
        for threads in (1, original, original):
            numba.set_num_threads(threads)
            y, saved = forward(x, w, b)
            results.append((y.copy(), *backward(dy, saved)))
    finally:
        numba.set_num_threads(original)
    assert saved.channels_last
    for other in results[1:]:
        for a, b_ in zip(results[0], other):
            np.testing.assert_array_equal(a, b_)


@pytest.mark.parametrize("op", ["GroupNorm", "InstanceNorm2d"])
def test_row_norm_layers_match_torch_channels_last(op):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(7)
    # zero-mean data: torch's channels-last CPU GroupNorm loses ~1e-3 at mean 50 (against the
    # float64 reference; ours 2e-7), large means are checked against the reference above
    x = channels_last((0.5 + 2 * rng.standard_normal((3, 8, 5, 6))).astype(np.float32))
    dy = channels_last(rng.standard_normal(x.shape).astype(np.float32))
    if op == "GroupNorm":
        layer, tlayer = nn.GroupNorm(4, 8), torch.nn.GroupNorm(4, 8)
    else:
        layer = nn.InstanceNorm2d(8, affine=True, track_running_stats=True)
        tlayer = torch.nn.InstanceNorm2d(8, affine=True, track_running_stats=True)
    w, b = (1 + rng.random(8)).astype(np.float32), rng.standard_normal(8).astype(np.float32)
    layer.weight.data[...] = w
    layer.bias.data[...] = b
    with torch.no_grad():
        tlayer.weight.copy_(torch.tensor(w))
        tlayer.bias.copy_(torch.tensor(b))
    y = layer.forward(x)
    dx = layer.backward(dy)
    tx = torch.tensor(np.ascontiguousarray(x)).to(memory_format=torch.channels_last).requires_grad_()
    ty = tlayer(tx)
    ty.backward(torch.tensor(np.ascontiguousarray(dy)).to(memory_format=torch.channels_last))
    assert is_channels_last(y) and is_channels_last(dx)
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(layer.weight.grad, tlayer.weight.grad.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(layer.bias.grad, tlayer.bias.grad.numpy(), rtol=1e-4, atol=1e-4)
    if op != "GroupNorm":
        np.testing.assert_allclose(layer.running_mean, tlayer.running_mean.numpy(), rtol=1e-5)
        np.testing.assert_allclose(layer.running_var, tlayer.running_var.numpy(), rtol=1e-4)


def test_instance_norm_3d_layer_channels_last():
    """InstanceNorm3d on NDHWC memory: the layer keeps the layout and matches NCHW, running
    statistics included."""
    rng = np.random.default_rng(8)
    x = channels_last(rng.standard_normal((2, 3, 4, 5, 6)).astype(np.float32))
    dy = channels_last(rng.standard_normal(x.shape).astype(np.float32))
    layers = [nn.InstanceNorm3d(3, affine=True, track_running_stats=True) for _ in range(2)]
    ys = [layers[0].forward(x), layers[1].forward(np.ascontiguousarray(x))]
    dxs = [layers[0].backward(dy), layers[1].backward(np.ascontiguousarray(dy))]
    assert is_channels_last(ys[0]) and is_channels_last(dxs[0])
    np.testing.assert_allclose(ys[0], ys[1], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dxs[0], dxs[1], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(layers[0].running_var, layers[1].running_var, rtol=1e-6)
    np.testing.assert_allclose(layers[0].weight.grad, layers[1].weight.grad, rtol=1e-5, atol=1e-5)


def test_row_norm_other_strides_still_copied():
    x = np.random.default_rng(9).standard_normal((4, 6, 5, 8)).astype(np.float32)[:, ::2, :, ::2]
    y, saved = F.group_norm(x, 3)
    assert not saved.channels_last and y.flags.c_contiguous
    np.testing.assert_allclose(y, ref.group_norm(x.astype(np.float64), 3), rtol=1e-5, atol=1e-5)
