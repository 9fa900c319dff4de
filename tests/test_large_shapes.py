"""Every norm, forward and backward, against tests/reference.py at shapes past every parallel
threshold of the CPU kernels (planes over 16,384 elements, row counts that do not divide into
tasks, many channels, long rows): an off-by-one in a parallel branch's task count fails here."""
import numpy as np
import pytest

from numbanorm import functional as F

from . import reference as ref

rng = np.random.default_rng(7)


def close(got, want, tol=1e-9):
    want = np.asarray(want, np.float64)
    err = float(np.max(np.abs(np.asarray(got, np.float64) - want))) if want.size else 0.0
    assert err <= tol * (1 + float(np.max(np.abs(want)))), err


def close_each(got, want):
    """close() for each pair of arrays of two sequences of the same length."""
    for g, w in zip(got, want, strict=True):
        close(g, w)


def data(shape, C_axis=1):
    x = rng.standard_normal(shape) * 2 + 3
    dy = rng.standard_normal(shape)
    C = shape[C_axis]
    return x, dy, rng.standard_normal(C), rng.standard_normal(C)


CHANNEL_SHAPES = [(2, 3, 130, 130), (3000, 37), (64, 513), (5, 300, 7, 11), (1, 2, 40000), (3, 1, 17, 1000),
                  (37, 6, 9, 11)]  # the last: whole samples per task in the sums


@pytest.mark.parametrize("shape", CHANNEL_SHAPES, ids=str)
def test_batch_norm_large(shape):
    x, dy, w, b = data(shape)
    rm, rv = rng.standard_normal(shape[1]), rng.uniform(0.5, 2, shape[1])
    rm_ours, rv_ours = rm.copy(), rv.copy()
    y, saved = F.batch_norm(x, w, b, rm_ours, rv_ours, training=True, momentum=0.3)
    y_ref, rm_ref, rv_ref = ref.batch_norm(x, w, b, rm, rv, True, 0.3)
    close_each((y, rm_ours, rv_ours), (y_ref, rm_ref, rv_ref))
    close_each(F.batch_norm_backward(dy, saved), ref.batch_norm_backward(dy, x, w))
    # eval mode
    y, saved = F.batch_norm(x, w, b, rm, rv, training=False)
    close(y, ref.batch_norm(x, w, b, rm, rv, False)[0])
    close_each(F.batch_norm_backward(dy, saved), ref.batch_norm_eval_backward(dy, x, w, rm, rv))


@pytest.mark.parametrize("shape,normalized", [((3000, 37), (37,)), ((4, 20000), (20000,)),
                                              ((7, 3, 130, 130), (130, 130)), ((2, 9001), (9001,)),
                                              ((513, 3, 33), (3, 33)),
                                              ((130, 2100), (2100,))], ids=str)
def test_layer_norm_large(shape, normalized):
    x = rng.standard_normal(shape) * 2 + 3
    dy = rng.standard_normal(shape)
    w, b = rng.standard_normal(normalized), rng.standard_normal(normalized)
    y, saved = F.layer_norm(x, normalized, w, b)
    close(y, ref.layer_norm(x, normalized, w, b))
    close_each(F.layer_norm_backward(dy, saved), ref.layer_norm_backward(dy, x, normalized, w))


@pytest.mark.parametrize("shape,groups", [((2, 6, 130, 130), 3), ((3000, 36, 1), 4), ((2, 512, 9, 9), 32),
                                          ((5, 64, 7, 7), 64), ((1, 4, 20000), 1)], ids=str)
def test_group_norm_large(shape, groups):
    x, dy, w, b = data(shape)
    y, saved = F.group_norm(x, groups, w, b)
    close(y, ref.group_norm(x, groups, w, b))
    close_each(F.group_norm_backward(dy, saved), ref.group_norm_backward(dy, x, groups, w))


@pytest.mark.parametrize("shape", [(2, 3, 130, 130), (3000, 5, 7), (2, 700, 25), (1, 2, 40000)], ids=str)
def test_instance_norm_large(shape):
    x, dy, w, b = data(shape)
    rm, rv = rng.standard_normal(shape[1]), rng.uniform(0.5, 2, shape[1])
    rm_ours, rv_ours = rm.copy(), rv.copy()
    y, saved = F.instance_norm(x, w, b, rm_ours, rv_ours, momentum=0.2)
    y_ref, rm_ref, rv_ref = ref.instance_norm(x, w, b, rm, rv, momentum=0.2)
    close_each((y, rm_ours, rv_ours), (y_ref, rm_ref, rv_ref))
    close_each(F.instance_norm_backward(dy, saved), ref.instance_norm_backward(dy, x, w))


@pytest.mark.parametrize("op", ["batch", "layer", "group", "instance"])
def test_float32_large_shapes(op):
    """float32 past the thresholds too (the float32 kernels are separate specializations)."""
    shape = (2, 4, 130, 130)
    x64 = rng.standard_normal(shape) + 1e4 * (op == "batch")
    x = x64.astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    xd, dyd = x.astype(np.float64), dy.astype(np.float64)
    if op == "batch":
        y, s = F.batch_norm(x)
        want_y, want = ref.batch_norm(xd)[0], ref.batch_norm_backward(dyd, xd)
        got = F.batch_norm_backward(dy, s)[0]
    elif op == "layer":
        y, s = F.layer_norm(x, shape[1:])
        want_y, want = ref.layer_norm(xd, shape[1:]), ref.layer_norm_backward(dyd, xd, shape[1:])
        got = F.layer_norm_backward(dy, s)[0]
    elif op == "group":
        y, s = F.group_norm(x, 2)
        want_y, want = ref.group_norm(xd, 2), ref.group_norm_backward(dyd, xd, 2)
        got = F.group_norm_backward(dy, s)[0]
    else:
        y, s = F.instance_norm(x)
        want_y, want = ref.instance_norm(xd)[0], ref.instance_norm_backward(dyd, xd)
        got = F.instance_norm_backward(dy, s)[0]
    close(y, want_y, 2e-5)
    close(got, want[0], 2e-4)


def same_for_1_and_2_threads(run):
    """run()'s arrays with Numba at 1 and at 2 threads, asserted bitwise equal; returns them."""
    import numba

    original = numba.get_num_threads()
    results = []
    try:
        for threads in sorted({1, min(2, numba.config.NUMBA_NUM_THREADS)}):
            numba.set_num_threads(threads)
            results.append(run())
    finally:
        numba.set_num_threads(original)
    for a, c in zip(results[0], results[-1]):
        np.testing.assert_array_equal(a, c)
    return results[0]


def test_layer_norm_paired_rows_float32_large_mean_deterministic():
    """The LayerNorm backward's paired-row path (rows of >= 2048 elements, an odd row left in
    some tasks): float32 data of mean 1e4 against the float64 reference, and bitwise the same
    results for 1 and 2 threads."""
    shape = (130, 2100)
    x = (1e4 + rng.standard_normal(shape)).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    w = (1 + 0.5 * rng.standard_normal(shape[1])).astype(np.float32)
    b = rng.standard_normal(shape[1]).astype(np.float32)

    def run():
        y, saved = F.layer_norm(x, shape[1:], w, b)
        return (y, *F.layer_norm_backward(dy, saved))
    y, dx, dw, db = same_for_1_and_2_threads(run)
    xd, dyd, wd = (a.astype(np.float64) for a in (x, dy, w))
    close(y, ref.layer_norm(xd, shape[1:], wd, b.astype(np.float64)), 2e-6)
    for got, want in zip((dx, dw, db), ref.layer_norm_backward(dyd, xd, shape[1:], wd)):
        close(got, want, 2e-6)


def test_batch_norm_whole_sample_tasks_float32_large_mean_deterministic():
    """BatchNorm sums over tasks of whole samples (C * S small: here 16 x 196, 5 samples per
    task, the last task short), training and eval (whose backward also writes dx per task):
    float32 data of mean 1e4 against the float64 reference, and bitwise the same results for
    1 and 2 threads."""
    shape = (71, 16, 14, 14)
    x = (1e4 + rng.standard_normal(shape)).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    w = (1 + 0.5 * rng.standard_normal(shape[1])).astype(np.float32)
    b = rng.standard_normal(shape[1]).astype(np.float32)
    rm = (1e4 + 0.1 * rng.standard_normal(shape[1])).astype(np.float32)
    rv = rng.uniform(0.5, 2, shape[1]).astype(np.float32)

    def run():
        y, saved = F.batch_norm(x, w, b)
        _, saved_eval = F.batch_norm(x, w, b, rm, rv, training=False)
        return (y, *F.batch_norm_backward(dy, saved), *F.batch_norm_backward(dy, saved_eval))
    y, dx, dw, db, *eval_grads = same_for_1_and_2_threads(run)
    xd, dyd, wd = (a.astype(np.float64) for a in (x, dy, w))
    close(y, ref.batch_norm(xd, wd, b.astype(np.float64))[0], 2e-6)
    for got, want in zip((dx, dw, db), ref.batch_norm_backward(dyd, xd, wd)):
        close(got, want, 2e-6)
    rmd, rvd = rm.astype(np.float64), rv.astype(np.float64)
    for got, want in zip(eval_grads, ref.batch_norm_eval_backward(dyd, xd, wd, rmd, rvd)):
        close(got, want, 2e-6)
