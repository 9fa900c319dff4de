"""numbanorm.functional (CPU backend) against the float64 reference, finite differences,
memory layouts, numerics, bad input, empty batches and determinism."""
import numba
import numpy as np
import pytest

from numbanorm import functional as F

from . import reference as R
from .reference import f64, numeric_grad, tol

RNG = np.random.default_rng(1234)


def rand(shape, dtype=np.float64, scale=1.0, loc=0.0):
    return (loc + scale * RNG.standard_normal(shape)).astype(dtype)


# ------------------------------------------------------------------ ops as (forward, backward, reference)

BN_SHAPES = [(4, 3), (5, 3, 7), (4, 3, 5, 6), (2, 3, 2, 3, 4), (64, 2, 1), (3, 40000 // 3, 1)]
ROW_SHAPES = [(4, 6, 5), (2, 8, 3, 4), (3, 4, 2, 2, 3), (1, 6, 33)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", BN_SHAPES)
@pytest.mark.parametrize("affine", [True, False])
def test_batch_norm_training_matches_reference(shape, dtype, affine):
    C = shape[1]
    x = rand(shape, dtype, scale=2.0, loc=0.5)
    w, b = (rand(C, dtype), rand(C, dtype)) if affine else (None, None)
    rm, rv = rand(C, dtype), np.abs(rand(C, dtype)) + 0.5
    rm0, rv0 = rm.copy(), rv.copy()
    y, saved = F.batch_norm(x, w, b, rm, rv, training=True, momentum=0.3, eps=1e-3)
    ref_y, ref_rm, ref_rv = R.batch_norm(f64(x), f64(w), f64(b), f64(rm0), f64(rv0), True, 0.3, 1e-3)
    assert y.dtype == dtype and y.shape == shape
    np.testing.assert_allclose(y, ref_y, **tol(dtype))
    np.testing.assert_allclose(rm, ref_rm, **tol(dtype))
    np.testing.assert_allclose(rv, ref_rv, **tol(dtype))
    dy = rand(shape, dtype)
    dx, dw, db = F.batch_norm_backward(dy, saved)
    ref_dx, ref_dw, ref_db = R.batch_norm_backward(f64(dy), f64(x), f64(w), eps=1e-3)
    np.testing.assert_allclose(dx, ref_dx, **tol(dtype))
    if affine:
        assert dw.dtype == dtype and db.dtype == dtype
        np.testing.assert_allclose(dw, ref_dw, **tol(dtype))
        np.testing.assert_allclose(db, ref_db, **tol(dtype))
    else:
        assert dw is None and db is None


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(4, 3), (4, 3, 5, 6)])
def test_batch_norm_eval_matches_reference(shape, dtype):
    C = shape[1]
    x, w, b = rand(shape, dtype), rand(C, dtype), rand(C, dtype)
    rm, rv = rand(C, dtype), np.abs(rand(C, dtype)) + 0.5
    rm0, rv0 = rm.copy(), rv.copy()
    y, saved = F.batch_norm(x, w, b, rm, rv, training=False)
    ref_y, _, _ = R.batch_norm(f64(x), f64(w), f64(b), f64(rm), f64(rv), False)
    np.testing.assert_allclose(y, ref_y, **tol(dtype))
    assert np.array_equal(rm, rm0) and np.array_equal(rv, rv0)  # eval never updates
    dy = rand(shape, dtype)
    dx, dw, db = F.batch_norm_backward(dy, saved)
    for got, want in zip((dx, dw, db), R.batch_norm_eval_backward(f64(dy), f64(x), f64(w), f64(rm), f64(rv))):
        np.testing.assert_allclose(got, want, **tol(dtype))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,normalized", [((4, 6, 5), (5,)), ((4, 6, 5), (6, 5)), ((7, 33), (33,)),
                                               ((2, 3, 4, 5), (3, 4, 5)), ((3, 2000), (2000,))])
@pytest.mark.parametrize("affine", [True, False])
def test_layer_norm_matches_reference(shape, normalized, dtype, affine):
    x = rand(shape, dtype, scale=3.0, loc=-1.0)
    w, b = (rand(normalized, dtype), rand(normalized, dtype)) if affine else (None, None)
    y, saved = F.layer_norm(x, normalized, w, b, eps=1e-4)
    np.testing.assert_allclose(y, R.layer_norm(f64(x), normalized, f64(w), f64(b), 1e-4), **tol(dtype))
    dy = rand(shape, dtype)
    dx, dw, db = F.layer_norm_backward(dy, saved)
    ref = R.layer_norm_backward(f64(dy), f64(x), normalized, f64(w), 1e-4)
    np.testing.assert_allclose(dx, ref[0], **tol(dtype))
    if affine:
        assert dw.shape == normalized and db.shape == normalized
        np.testing.assert_allclose(dw, ref[1], **tol(dtype))
        np.testing.assert_allclose(db, ref[2], **tol(dtype))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,groups", [((4, 6, 5), 3), ((2, 8, 3, 4), 2), ((2, 8, 3, 4), 8), ((2, 8, 3, 4), 1),
                                          ((3, 4, 2, 2, 3), 4), ((5, 6), 3)])
@pytest.mark.parametrize("affine", [True, False])
def test_group_norm_matches_reference(shape, groups, dtype, affine):
    C = shape[1]
    x = rand(shape, dtype, scale=2.0, loc=3.0)
    w, b = (rand(C, dtype), rand(C, dtype)) if affine else (None, None)
    y, saved = F.group_norm(x, groups, w, b)
    np.testing.assert_allclose(y, R.group_norm(f64(x), groups, f64(w), f64(b)), **tol(dtype))
    dy = rand(shape, dtype)
    dx, dw, db = F.group_norm_backward(dy, saved)
    ref = R.group_norm_backward(f64(dy), f64(x), groups, f64(w))
    np.testing.assert_allclose(dx, ref[0], **tol(dtype))
    if affine:
        np.testing.assert_allclose(dw, ref[1], **tol(dtype))
        np.testing.assert_allclose(db, ref[2], **tol(dtype))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", ROW_SHAPES)
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("running", [True, False])
def test_instance_norm_matches_reference(shape, dtype, affine, running):
    C = shape[1]
    x = rand(shape, dtype)
    w, b = (rand(C, dtype), rand(C, dtype)) if affine else (None, None)
    rm, rv = (rand(C, dtype), np.abs(rand(C, dtype)) + 0.5) if running else (None, None)
    rm0, rv0 = (rm.copy(), rv.copy()) if running else (None, None)
    y, saved = F.instance_norm(x, w, b, rm, rv, use_input_stats=True, momentum=0.2)
    ref_y, ref_rm, ref_rv = R.instance_norm(f64(x), f64(w), f64(b), f64(rm0), f64(rv0), 0.2)
    np.testing.assert_allclose(y, ref_y, **tol(dtype))
    if running:
        np.testing.assert_allclose(rm, ref_rm, **tol(dtype))
        np.testing.assert_allclose(rv, ref_rv, **tol(dtype))
    dy = rand(shape, dtype)
    dx, dw, db = F.instance_norm_backward(dy, saved)
    ref = R.instance_norm_backward(f64(dy), f64(x), f64(w))
    np.testing.assert_allclose(dx, ref[0], **tol(dtype))
    if affine:
        np.testing.assert_allclose(dw, ref[1], **tol(dtype))
        np.testing.assert_allclose(db, ref[2], **tol(dtype))


def test_instance_norm_without_input_stats_uses_running_stats():
    x, w, b = rand((3, 4, 5)), rand(4), rand(4)
    rm, rv = rand(4), np.abs(rand(4)) + 0.5
    y, saved = F.instance_norm(x, w, b, rm, rv, use_input_stats=False)
    np.testing.assert_allclose(y, R.batch_norm(x, w, b, rm, rv, False)[0], rtol=1e-12, atol=1e-12)
    dy = rand(x.shape)
    for got, want in zip(F.instance_norm_backward(dy, saved), R.batch_norm_eval_backward(dy, x, w, rm, rv)):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_identities_between_row_norms():
    x = rand((3, 6, 4, 5))
    w, b = rand(6), rand(6)
    gn_c, _ = F.group_norm(x, 6, w, b)
    inorm, _ = F.instance_norm(x, w, b)
    np.testing.assert_allclose(gn_c, inorm, rtol=1e-12, atol=1e-12)
    gn_1, _ = F.group_norm(x, 1)
    ln, _ = F.layer_norm(x, (6, 4, 5))
    np.testing.assert_allclose(gn_1, ln, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------ finite differences (float64)

def _fd_check(forward, backward, x, params, eps_fd=1e-6):
    """Central differences of loss = sum(forward(x, *params) * dy) against backward."""
    y, saved = forward(x, *params)
    dy = rand(y.shape)
    grads = backward(dy, saved)
    for k, arr in enumerate([x] + [p for p in params]):
        if arr is None:
            continue
        num = numeric_grad(lambda: np.sum(forward(x, *params)[0] * dy), arr, eps_fd)
        np.testing.assert_allclose(grads[k], num, rtol=1e-5, atol=1e-7, err_msg=f"gradient {k}")


def test_batch_norm_finite_differences():
    x, w, b = rand((3, 2, 2, 3)), rand(2), rand(2)
    _fd_check(lambda x, w, b: F.batch_norm(x, w, b, training=True), F.batch_norm_backward, x, [w, b])
    x2 = rand((5, 3))
    _fd_check(lambda x, w, b: F.batch_norm(x, w, b, training=True), F.batch_norm_backward, x2, [rand(3), rand(3)])


def test_batch_norm_eval_finite_differences():
    rm, rv = rand(2), np.abs(rand(2)) + 0.5
    fwd = lambda x, w, b: F.batch_norm(x, w, b, rm, rv, training=False)
    _fd_check(fwd, F.batch_norm_backward, rand((3, 2, 4)), [rand(2), rand(2)])


def test_layer_norm_finite_differences():
    fwd = lambda x, w, b: F.layer_norm(x, (3, 4), w, b)
    _fd_check(fwd, F.layer_norm_backward, rand((2, 3, 4)), [rand((3, 4)), rand((3, 4))])


def test_group_norm_finite_differences():
    fwd = lambda x, w, b: F.group_norm(x, 2, w, b)
    _fd_check(fwd, F.group_norm_backward, rand((2, 4, 3, 2)), [rand(4), rand(4)])


def test_instance_norm_finite_differences():
    fwd = lambda x, w, b: F.instance_norm(x, w, b)
    _fd_check(fwd, F.instance_norm_backward, rand((2, 3, 5)), [rand(3), rand(3)])


# ------------------------------------------------------------------ layouts

def _layouts(base):
    yield "fortran", np.asfortranarray(base)
    yield "negative-stride", base[::-1, ::-1]
    big = np.concatenate([base, base], axis=-1)
    yield "strided", big[..., ::2]


@pytest.mark.parametrize("op", ["batch", "layer", "group", "instance"])
def test_any_memory_layout_gives_the_same_result(op):
    base = rand((4, 6, 5, 3), np.float32)
    run = {
        "batch": lambda x: F.batch_norm(x),
        "layer": lambda x: F.layer_norm(x, (5, 3)),
        "group": lambda x: F.group_norm(x, 3),
        "instance": lambda x: F.instance_norm(x),
    }[op]
    backward = {"batch": F.batch_norm_backward, "layer": F.layer_norm_backward,
                "group": F.group_norm_backward, "instance": F.instance_norm_backward}[op]
    dy = rand(base.shape, np.float32)
    for name, view in _layouts(base):
        contiguous = np.ascontiguousarray(view)
        y_view, s_view = run(view)
        y_ref, s_ref = run(contiguous)
        assert np.array_equal(y_view, y_ref), name
        dyv = np.asfortranarray(dy)
        assert np.array_equal(backward(dyv, s_view)[0], backward(dy, s_ref)[0]), name


# ------------------------------------------------------------------ numerics

@pytest.mark.parametrize("op", ["batch", "layer", "group", "instance"])
def test_large_mean_float32_normalizes_correctly(op):
    x = rand((8, 4, 16, 16), np.float32, loc=1e4)
    x64 = x.astype(np.float64)
    if op == "batch":
        y, ref = F.batch_norm(x)[0], R.batch_norm(x64)[0]
    elif op == "layer":
        y, ref = F.layer_norm(x, (16, 16))[0], R.layer_norm(x64, (16, 16))
    elif op == "group":
        y, ref = F.group_norm(x, 2)[0], R.group_norm(x64, 2)
    else:
        y, ref = F.instance_norm(x)[0], R.instance_norm(x64)[0]
    # float32 output rounding is ~6e-8 relative; a naive E[x^2]-E[x]^2 in float32 is off by O(1)
    np.testing.assert_allclose(y, ref, rtol=0, atol=1e-5)


def test_large_mean_running_var_is_accurate():
    x = rand((64, 3, 8, 8), np.float32, loc=1e4)
    rm, rv = np.zeros(3, np.float32), np.ones(3, np.float32)
    F.batch_norm(x, running_mean=rm, running_var=rv, momentum=1.0)
    np.testing.assert_allclose(rv, x.astype(np.float64).var(axis=(0, 2, 3), ddof=1), rtol=1e-5)


def test_nan_poisons_only_its_channel():
    x = rand((4, 3, 5, 5), np.float32)
    x[1, 1, 2, 2] = np.nan
    y = F.batch_norm(x)[0]
    assert np.isnan(y[:, 1]).all()
    assert np.isfinite(y[:, [0, 2]]).all()
    y = F.instance_norm(x)[0]
    assert np.isnan(y[1, 1]).all()
    mask = np.ones((4, 3), bool)
    mask[1, 1] = False
    assert np.isfinite(y[mask]).all()
    y = F.layer_norm(x, (5, 5))[0]
    assert np.isnan(y[1, 1]).all() and np.isfinite(y[mask]).all()


# ------------------------------------------------------------------ determinism

@pytest.mark.parametrize("shape", [(64, 8, 40, 40), (3000, 37), (4, 64, 96, 96)])
def test_bitwise_identical_whatever_the_thread_count(shape):
    x = rand(shape, np.float32, loc=2.0)
    dy = rand(shape, np.float32)
    C = shape[1]
    ops = [
        lambda: F.batch_norm(x, np.ones(C, np.float32), np.zeros(C, np.float32)),
        lambda: F.layer_norm(x, shape[-1:]),
    ]
    if len(shape) == 4:
        ops.append(lambda: F.group_norm(x, 4, np.ones(C, np.float32), np.zeros(C, np.float32)))
    backwards = [F.batch_norm_backward, F.layer_norm_backward, F.group_norm_backward]

    def run_all():
        out = []
        for op, bwd in zip(ops, backwards):
            y, saved = op()
            out.append(y)
            out.extend(g for g in bwd(dy, saved) if g is not None)
        return out

    original = numba.get_num_threads()
    try:
        results = []
        for threads in sorted({1, original}):
            numba.set_num_threads(threads)
            results.append(run_all())
        results += [run_all() for _ in range(2)]  # and run to run
    finally:
        numba.set_num_threads(original)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert np.array_equal(a, b, equal_nan=True)


# ------------------------------------------------------------------ empty batches

def test_empty_batch_returns_empty_output_and_leaves_running_stats():
    x = np.zeros((0, 3, 4, 4), np.float32)
    rm, rv = np.full(3, 0.5, np.float32), np.full(3, 2.0, np.float32)
    w, b = np.ones(3, np.float32), np.zeros(3, np.float32)
    for y, saved, bwd in [
        (*F.batch_norm(x, w, b, rm, rv, training=True), F.batch_norm_backward),
        (*F.group_norm(x, 3, w, b), F.group_norm_backward),
        (*F.instance_norm(x, w, b, rm, rv), F.instance_norm_backward),
        (*F.layer_norm(x, (4, 4)), F.layer_norm_backward),
    ]:
        assert y.shape == x.shape and y.dtype == x.dtype
        dx, dw, db = bwd(np.zeros_like(x), saved)
        assert dx.shape == x.shape
        if dw is not None:
            assert np.array_equal(dw, np.zeros_like(dw)) and np.array_equal(db, np.zeros_like(db))
    assert np.array_equal(rm, np.full(3, 0.5, np.float32)) and np.array_equal(rv, np.full(3, 2.0, np.float32))


# ------------------------------------------------------------------ bad input

def _bn_args(**over):
    args = dict(x=rand((4, 3, 2, 2), np.float32), weight=np.ones(3, np.float32), bias=np.zeros(3, np.float32),
                running_mean=np.zeros(3, np.float32), running_var=np.ones(3, np.float32))
    args.update(over)
    return args


@pytest.mark.parametrize("over,exc,words", [
    (dict(x=np.zeros(4, np.float32)), ValueError, "x must be"),
    (dict(weight=np.ones(4, np.float32)), ValueError, "weight must have shape (3,)"),
    (dict(bias=np.ones((3, 1), np.float32)), ValueError, "bias must have shape"),
    (dict(running_mean=np.zeros(2, np.float32)), ValueError, "running_mean must have shape"),
    (dict(running_var=np.ones(5, np.float32)), ValueError, "running_var must have shape"),
    (dict(x=np.zeros((4, 3, 2, 2), np.int32)), TypeError, "float32 or float64, got int32"),
    (dict(weight=np.ones(3, np.float64)), TypeError, "weight must have dtype float32"),
    (dict(running_var=None), ValueError, "running_mean and running_var must be given together"),
    (dict(x=[[1.0, 2.0]]), TypeError, "x must be a numpy.ndarray or a CUDA array"),
    (dict(eps=0.0), ValueError, "eps must be a positive number"),
    (dict(eps=-1e-5), ValueError, "eps"),
    (dict(momentum=1.5), ValueError, "momentum must be a number in [0, 1]"),
    (dict(momentum=-0.1), ValueError, "momentum"),
    (dict(x=np.zeros((1, 3), np.float32)), ValueError, "Expected more than 1 value per channel when training"),
    (dict(x=np.zeros((1, 3, 1, 1), np.float32)), ValueError, "N=1, spatial size=1"),
])
def test_batch_norm_rejects_bad_input_before_touching_state(over, exc, words):
    args = _bn_args(**over)
    rm = args["running_mean"].copy() if isinstance(args["running_mean"], np.ndarray) else None
    with pytest.raises(exc) as err:
        F.batch_norm(**args)
    assert words in str(err.value)
    if rm is not None:
        assert np.array_equal(args["running_mean"], rm)


def test_batch_norm_eval_without_running_stats_is_an_error():
    with pytest.raises(ValueError, match="training=False needs running_mean and running_var"):
        F.batch_norm(rand((4, 3), np.float32), training=False)


def test_row_norms_reject_bad_input():
    x = rand((2, 6, 4), np.float32)
    with pytest.raises(ValueError, match="positive divisor of the number of channels \\(6\\), got 4"):
        F.group_norm(x, 4)
    with pytest.raises(ValueError, match="got 0"):
        F.group_norm(x, 0)
    with pytest.raises(TypeError, match="num_groups must be an int"):
        F.group_norm(x, 2.0)
    with pytest.raises(ValueError, match="trailing dims must equal normalized_shape \\(5,\\)"):
        F.layer_norm(x, 5)
    with pytest.raises(ValueError, match="trailing dims"):
        F.layer_norm(x, (2, 6, 4, 1))
    with pytest.raises(ValueError, match="weight must have shape \\(4,\\)"):
        F.layer_norm(x, 4, weight=np.ones(5, np.float32))
    with pytest.raises(ValueError, match="x must be \\(N, C, \\*spatial\\)"):
        F.instance_norm(rand((2, 6), np.float32))
    with pytest.raises(ValueError, match="more than 1 spatial element"):
        F.instance_norm(rand((2, 6, 1), np.float32))
    with pytest.raises(ValueError, match="use_input_stats=False needs running_mean"):
        F.instance_norm(x, use_input_stats=False)
    with pytest.raises(TypeError, match="x must have dtype float16 or (bfloat16 or )?float32 or float64, got int32"):
        F.layer_norm(x.astype(np.int32), 4)


@pytest.mark.parametrize("forward,backward", [
    (lambda x: F.batch_norm(x), F.batch_norm_backward),
    (lambda x: F.layer_norm(x, 4), F.layer_norm_backward),
    (lambda x: F.group_norm(x, 3), F.group_norm_backward),
    (lambda x: F.instance_norm(x), F.instance_norm_backward),
])
def test_backward_rejects_wrong_dy(forward, backward):
    x = rand((2, 6, 4), np.float32)
    _, saved = forward(x)
    with pytest.raises(ValueError, match="dy must have shape \\(2, 6, 4\\)"):
        backward(np.zeros((2, 6, 5), np.float32), saved)
    with pytest.raises(TypeError, match="dy must have dtype float32"):
        backward(np.zeros((2, 6, 4), np.float64), saved)
    with pytest.raises(TypeError, match="saved must be"):
        backward(np.zeros((2, 6, 4), np.float32), "not saved")
