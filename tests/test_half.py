"""float16 inputs to every norm op and layer (CPU): x, dy, y, dx in float16, parameters and
running statistics float32 (mixed precision) or float16, against the float64 reference
evaluated on the same float16 values, and against PyTorch's CPU float16 norms where it runs;
bfloat16 (ml_dtypes) through the same kernels.
"""
import numpy as np
import pytest

from numbanorm import _validate as check
from numbanorm import functional as F
from numbanorm import nn

from . import reference as ref
from .reference import f64

HALF = np.float16
BFLOAT16 = check.BFLOAT16  # None without ml_dtypes (the optional bfloat16 extra)
SIXTEEN_BIT = [HALF] + [pytest.param(BFLOAT16, id="bfloat16", marks=pytest.mark.skipif(
    BFLOAT16 is None, reason="ml_dtypes (the bfloat16 extra) is not installed"))]
PARAM_DTYPES = [np.float32, np.float16]


def assert_half_close(got, want, atol=0.0):
    """got (float16) is the float16 rounding of the float64 want, up to one float16 ulp (or atol,
    where that is larger: the float32 arithmetic's error on an output near 0 such as
    xhat * w + b ~ 0 is ~1e-7, more than the ulp of a float16 that small)."""
    assert got.dtype in (HALF, BFLOAT16) and got.shape == want.shape
    if got.dtype == HALF:
        ulp = np.spacing(np.abs(want).astype(HALF)).astype(np.float64)
    else:  # bfloat16: float32's top half, so its ulp is float32's times 2**16 (normal numbers)
        ulp = np.spacing(np.abs(want).astype(BFLOAT16).astype(np.float32)).astype(np.float64) * 2.0**16
    ulp = np.maximum(ulp, atol)
    assert np.all(np.abs(got.astype(np.float64) - want) <= ulp), np.max(np.abs(got - want) / ulp)


def assert_grad_close(got, want, dtype, tol=2e-3):
    assert got.dtype == dtype and got.shape == want.shape
    scale = np.max(np.abs(want))
    np.testing.assert_allclose(got.astype(np.float64), want, rtol=tol, atol=tol * scale)


def inputs(shape, pdtype, loc=0.0, seed=0):
    rng = np.random.default_rng(seed)
    x = (loc + rng.standard_normal(shape)).astype(HALF)
    dy = rng.standard_normal(shape).astype(HALF)
    C = shape[1]
    w = (1 + 0.5 * rng.standard_normal(C)).astype(pdtype)
    b = rng.standard_normal(C).astype(pdtype)
    return x, dy, w, b


@pytest.mark.parametrize("pdtype", PARAM_DTYPES)
@pytest.mark.parametrize("shape", [(8, 5), (4, 6, 7), (3, 4, 5, 6)])
@pytest.mark.parametrize("loc", [0.0, 1e3])
def test_batch_norm_half(pdtype, shape, loc):
    x, dy, w, b = inputs(shape, pdtype, loc)
    rm, rv = np.zeros(shape[1], pdtype), np.ones(shape[1], pdtype)
    y, saved = F.batch_norm(x, w, b, rm, rv, True, 0.1, 1e-5)
    y_ref, rm_ref, rv_ref = ref.batch_norm(f64(x), f64(w), f64(b), np.zeros(shape[1]), np.ones(shape[1]))
    assert_half_close(y, y_ref)
    assert rm.dtype == pdtype and rv.dtype == pdtype
    np.testing.assert_allclose(f64(rm), rm_ref, rtol=2e-3)
    np.testing.assert_allclose(f64(rv), rv_ref, rtol=2e-3)
    dx, dw, db = F.batch_norm_backward(dy, saved)
    dx_ref, dw_ref, db_ref = ref.batch_norm_backward(f64(dy), f64(x), f64(w))
    assert_grad_close(dx, dx_ref, HALF)
    assert_grad_close(dw, dw_ref, pdtype)
    assert_grad_close(db, db_ref, pdtype)
    # eval mode with the (updated) running statistics
    y, saved = F.batch_norm(x, w, b, rm, rv, False, 0.1, 1e-5)
    y_ref = ref.batch_norm(f64(x), f64(w), f64(b), f64(rm), f64(rv), training=False)[0]
    assert_half_close(y, y_ref)
    dx, dw, db = F.batch_norm_backward(dy, saved)
    dx_ref, dw_ref, db_ref = ref.batch_norm_eval_backward(f64(dy), f64(x), f64(w), f64(rm), f64(rv))
    assert_grad_close(dx, dx_ref, HALF)
    assert_grad_close(db, db_ref, pdtype)


@pytest.mark.parametrize("pdtype", PARAM_DTYPES)
@pytest.mark.parametrize("loc", [0.0, 1e3])
def test_row_norms_half(pdtype, loc):
    x, dy, w, b = inputs((3, 6, 4, 5), pdtype, loc)
    y, saved = F.group_norm(x, 3, w, b)
    assert_half_close(y, ref.group_norm(f64(x), 3, f64(w), f64(b)))
    dx, dw, db = F.group_norm_backward(dy, saved)
    for got, want, dt in zip((dx, dw, db), ref.group_norm_backward(f64(dy), f64(x), 3, f64(w)),
                             (HALF, pdtype, pdtype)):
        assert_grad_close(got, want, dt)

    rm, rv = np.zeros(6, pdtype), np.ones(6, pdtype)
    y, saved = F.instance_norm(x, w, b, rm, rv)
    y_ref, rm_ref, rv_ref = ref.instance_norm(f64(x), f64(w), f64(b), np.zeros(6), np.ones(6))
    assert_half_close(y, y_ref)
    assert rm.dtype == pdtype
    np.testing.assert_allclose(f64(rm), rm_ref, rtol=2e-3)
    np.testing.assert_allclose(f64(rv), rv_ref, rtol=2e-3)
    dx, dw, db = F.instance_norm_backward(dy, saved)
    for got, want, dt in zip((dx, dw, db), ref.instance_norm_backward(f64(dy), f64(x), f64(w)),
                             (HALF, pdtype, pdtype)):
        assert_grad_close(got, want, dt)

    x2, dy2 = x.reshape(18, 20), dy.reshape(18, 20)
    w2, b2 = np.resize(w, 20), np.resize(b, 20)
    y, saved = F.layer_norm(x2, (20,), w2, b2)
    assert_half_close(y, ref.layer_norm(f64(x2), (20,), f64(w2), f64(b2)))
    dx, dw, db = F.layer_norm_backward(dy2, saved)
    for got, want, dt in zip((dx, dw, db), ref.layer_norm_backward(f64(dy2), f64(x2), (20,), f64(w2)),
                             (HALF, pdtype, pdtype)):
        assert_grad_close(got, want, dt)


def test_half_without_params_and_empty_batch():
    x, dy, _, _ = inputs((4, 3, 5), np.float32)
    y, saved = F.batch_norm(x)
    assert_half_close(y, ref.batch_norm(f64(x))[0])
    dx, dw, db = F.batch_norm_backward(dy, saved)
    assert dx.dtype == HALF and dw is None and db is None
    w = np.ones(3, HALF)
    y, saved = F.batch_norm(np.zeros((0, 3, 5), HALF), w, w, np.zeros(3, HALF), np.ones(3, HALF))
    dx, dw, db = F.batch_norm_backward(np.zeros((0, 3, 5), HALF), saved)
    assert y.dtype == dx.dtype == HALF and dw.dtype == db.dtype == HALF and not dw.any()


def test_half_bad_params_refused_before_any_change():
    x = np.ones((4, 3, 5), HALF)
    rm, rv = np.zeros(3, np.float32), np.ones(3, np.float32)
    with pytest.raises(TypeError, match="weight must have dtype float16 or float32"):
        F.batch_norm(x, np.ones(3, np.float64), None, rm, rv)
    with pytest.raises(TypeError, match="running_mean must have dtype float16"):
        F.batch_norm(x, np.ones(3, np.float16), None, rm, rv)
    with pytest.raises(ValueError, match="weight must have shape"):
        F.batch_norm(x, np.ones(4, np.float32), None, rm, rv)
    assert not rm.any() and (rv == 1).all()
    y, saved = F.batch_norm(x, None, None, rm, rv)
    with pytest.raises(TypeError, match="dy must have dtype float16"):
        F.batch_norm_backward(np.ones((4, 3, 5), np.float32), saved)


@pytest.mark.parametrize("layer_dtype", [np.float32, np.float16])
def test_half_layers(layer_dtype):
    """A float32 layer fed float16 (mixed precision) and a dtype=float16 layer."""
    x, dy, _, _ = inputs((4, 6, 3, 5), np.float32, loc=1e3)
    for y, dx in run_norm_layers(x, dy, layer_dtype):
        assert np.isfinite(y).all() and np.isfinite(dx).all()


def run_norm_layers(x, dy, layer_dtype):
    """Forward and backward of BatchNorm2d, GroupNorm(2), InstanceNorm2d (affine, running stats)
    and LayerNorm over the last dim, parameters of layer_dtype, on a 16-bit (N, 6, H, W) x:
    y and dx keep x's dtype and shape; the weight's gradient and every state_dict entry are of
    layer_dtype. Returns [(y, dx)], one per layer."""
    out = []
    for layer in (nn.BatchNorm2d(6, dtype=layer_dtype), nn.GroupNorm(2, 6, dtype=layer_dtype),
                  nn.InstanceNorm2d(6, affine=True, track_running_stats=True, dtype=layer_dtype),
                  nn.LayerNorm(x.shape[-1], dtype=layer_dtype)):
        y = layer.forward(x)
        dx = layer.backward(dy)
        assert y.dtype == dx.dtype == x.dtype and y.shape == dx.shape == x.shape
        assert layer.weight.grad.dtype == np.dtype(layer_dtype)
        for name, value in layer.state_dict().items():
            if name != "num_batches_tracked":
                assert value.dtype == np.dtype(layer_dtype), name
        out.append((y, dx))
    return out


def test_half_matches_torch():
    torch = pytest.importorskip("torch")
    x, dy, w, b = inputs((4, 6, 5, 7), np.float32, loc=3.0)
    tx = torch.tensor(x, requires_grad=True)
    tw, tb = torch.tensor(w, requires_grad=True), torch.tensor(b, requires_grad=True)
    try:
        ty = torch.nn.functional.batch_norm(tx, None, None, tw, tb, True)
    except RuntimeError as e:  # an old torch without CPU half BatchNorm
        pytest.skip(f"torch CPU float16 batch_norm not available: {e}")
    ty.backward(torch.tensor(dy))
    y, saved = F.batch_norm(x, w, b)
    dx, dw, db = F.batch_norm_backward(dy, saved)
    assert ty.dtype == torch.float16 and tw.grad.dtype == torch.float32
    np.testing.assert_allclose(f64(y), f64(ty.detach().numpy()), atol=4e-3, rtol=2e-3)
    np.testing.assert_allclose(f64(dx), f64(tx.grad.numpy()), atol=4e-3, rtol=4e-3)
    np.testing.assert_allclose(dw, tw.grad.numpy(), rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(db, tb.grad.numpy(), rtol=1e-3, atol=1e-3)

    tx16 = torch.tensor(x, requires_grad=True)
    tw16, tb16 = torch.tensor(w.astype(HALF)), torch.tensor(b.astype(HALF))
    ty = torch.nn.functional.group_norm(tx16, 3, tw16, tb16)
    y, _ = F.group_norm(x, 3, w.astype(HALF), b.astype(HALF))
    np.testing.assert_allclose(f64(y), f64(ty.detach().numpy()), atol=1e-2, rtol=4e-3)


def test_half_masked_batch_norm_matches_float32():
    """mask= reaches the float32 computation of a float16 call."""
    x, dy, w, b = inputs((4, 3, 5), np.float32, loc=2.0)
    mask = np.zeros((4, 5), bool)
    mask[:, :3] = True
    y, saved = F.batch_norm(x, w, b, mask=mask)
    y32, saved32 = F.batch_norm(x.astype(np.float32), w, b, mask=mask)
    np.testing.assert_array_equal(y, y32.astype(HALF))
    dx, dw, db = F.batch_norm_backward(dy, saved)
    dx32, dw32, db32 = F.batch_norm_backward(dy.astype(np.float32), saved32)
    np.testing.assert_array_equal(dx, dx32.astype(HALF))
    # float16 data's sums are float32 block sums (numbanorm.cpu.half.dy_sums), float32 data's
    # float64 ones: dweight agrees to float32 accumulation error, not bit for bit
    np.testing.assert_allclose(dw, dw32, rtol=1e-5, atol=1e-6)


# the parallel kernels (x above SERIAL_BELOW, several tasks), mean 1e3 + unit noise: each op's
# (forward, backward, reference forward, reference backward, parameter count)
LARGE_OPS = {
    "batch_norm-train": ((8, 16, 40, 40), lambda x, w, b: F.batch_norm(x, w, b, None, None, True),
                         F.batch_norm_backward, lambda x, w, b: ref.batch_norm(x, w, b)[0],
                         lambda dy, x, w: ref.batch_norm_backward(dy, x, w)),
    "batch_norm-train-short-rows": ((64, 32, 7, 7), lambda x, w, b: F.batch_norm(x, w, b),
                                    F.batch_norm_backward, lambda x, w, b: ref.batch_norm(x, w, b)[0],
                                    lambda dy, x, w: ref.batch_norm_backward(dy, x, w)),
    "batch_norm-1d": ((4096, 24), lambda x, w, b: F.batch_norm(x, w, b), F.batch_norm_backward,
                      lambda x, w, b: ref.batch_norm(x, w, b)[0],
                      lambda dy, x, w: ref.batch_norm_backward(dy, x, w)),
    "layer_norm": ((512, 96), lambda x, w, b: F.layer_norm(x, 96, w, b), F.layer_norm_backward,
                   lambda x, w, b: ref.layer_norm(x, (96,), w, b),
                   lambda dy, x, w: ref.layer_norm_backward(dy, x, (96,), w)),
    "group_norm": ((8, 64, 20, 20), lambda x, w, b: F.group_norm(x, 8, w, b), F.group_norm_backward,
                   lambda x, w, b: ref.group_norm(x, 8, w, b),
                   lambda dy, x, w: ref.group_norm_backward(dy, x, 8, w)),
    "instance_norm": ((8, 16, 30, 30), lambda x, w, b: F.instance_norm(x, w, b),
                      F.instance_norm_backward, lambda x, w, b: ref.instance_norm(x, w, b)[0],
                      lambda dy, x, w: ref.instance_norm_backward(dy, x, w)),
    # runs spanning many float32 summation blocks (numbanorm.cpu.half.SUM_BLOCK), not a
    # multiple of the block: rows of 20000, channels of 3000 (GroupNorm), planes of 8190
    "layer_norm-long-rows": ((8, 20000), lambda x, w, b: F.layer_norm(x, 20000, w, b),
                             F.layer_norm_backward,
                             lambda x, w, b: ref.layer_norm(x, (20000,), w, b),
                             lambda dy, x, w: ref.layer_norm_backward(dy, x, (20000,), w)),
    # rows of >= 2048 elements go in pairs in the backward (an odd row left in some tasks)
    "layer_norm-paired-rows": ((130, 2100), lambda x, w, b: F.layer_norm(x, 2100, w, b),
                               F.layer_norm_backward,
                               lambda x, w, b: ref.layer_norm(x, (2100,), w, b),
                               lambda dy, x, w: ref.layer_norm_backward(dy, x, (2100,), w)),
    "group_norm-long-channels": ((4, 8, 60, 50), lambda x, w, b: F.group_norm(x, 2, w, b),
                                 F.group_norm_backward, lambda x, w, b: ref.group_norm(x, 2, w, b),
                                 lambda dy, x, w: ref.group_norm_backward(dy, x, 2, w)),
    "batch_norm-long-planes": ((4, 4, 90, 91), lambda x, w, b: F.batch_norm(x, w, b),
                               F.batch_norm_backward, lambda x, w, b: ref.batch_norm(x, w, b)[0],
                               lambda dy, x, w: ref.batch_norm_backward(dy, x, w)),
}


@pytest.mark.parametrize("dtype", SIXTEEN_BIT)
@pytest.mark.parametrize("op", LARGE_OPS)
def test_half_large_mean_parallel_deterministic(op, dtype):
    """Large inputs take the parallel 16-bit kernels: y is the float16 (bfloat16) rounding of the
    float64 reference (mean 1e3), gradients match it, saved keeps x itself (no float32 copy),
    and the results are bitwise the same for 1 and 2 threads."""
    import numba

    shape, forward, backward, ref_forward, ref_backward = LARGE_OPS[op]
    pshape = (shape[-1],) if op.startswith("layer_norm") else (shape[1],)
    rng = np.random.default_rng(3)
    x = (1e3 + rng.standard_normal(shape)).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    w = (1 + 0.5 * rng.standard_normal(pshape)).astype(np.float32)
    b = rng.standard_normal(pshape).astype(np.float32)
    original = numba.get_num_threads()
    results = []
    try:
        for threads in sorted({1, min(2, numba.config.NUMBA_NUM_THREADS)}):
            numba.set_num_threads(threads)
            y, saved = forward(x, w, b)
            assert np.shares_memory(saved.x, x)
            results.append((y, *backward(dy, saved)))
    finally:
        numba.set_num_threads(original)
    for a, c in zip(results[0], results[-1]):
        assert a.dtype == c.dtype
        np.testing.assert_array_equal(a.view(np.uint8), c.view(np.uint8))
    y, dx, dw, db = results[0]
    assert_half_close(y, ref_forward(f64(x), f64(w), f64(b)), atol=2.0**-20)
    tol = 2e-3 if dtype == HALF else 1.6e-2  # bfloat16: 8 significant bits
    for got, want, dt in zip((dx, dw, db), ref_backward(f64(dy), f64(x), f64(w)),
                             (dtype, np.float32, np.float32)):
        assert_grad_close(got, want, dt, tol)


@pytest.mark.parametrize("dtype", SIXTEEN_BIT)
def test_half_eval_backward_large_mean_parallel_deterministic(dtype):
    """The eval-mode BatchNorm backward's one-pass kernel (numbanorm.cpu.channel_norm_eval) on
    16-bit data of mean 1e3 with running statistics near it: dx, dweight, dbias match the float64
    reference and are bitwise the same for 1 and 2 threads."""
    import numba

    rng = np.random.default_rng(4)
    shape = (8, 16, 40, 40)
    x = (1e3 + rng.standard_normal(shape)).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    w = (1 + 0.5 * rng.standard_normal(16)).astype(np.float32)
    b = rng.standard_normal(16).astype(np.float32)
    rm = (1e3 + 0.1 * rng.standard_normal(16)).astype(np.float32)  # not float16 values
    rv = (1 + 0.1 * rng.random(16)).astype(np.float32)
    original = numba.get_num_threads()
    results = []
    try:
        for threads in sorted({1, min(2, numba.config.NUMBA_NUM_THREADS)}):
            numba.set_num_threads(threads)
            _, saved = F.batch_norm(x, w, b, rm, rv, False)
            results.append(F.batch_norm_backward(dy, saved))
    finally:
        numba.set_num_threads(original)
    for a, c in zip(results[0], results[-1]):
        np.testing.assert_array_equal(a.view(np.uint8), c.view(np.uint8))
    tol = 2e-3 if dtype == HALF else 1.6e-2
    for got, want, dt in zip(results[0], ref.batch_norm_eval_backward(f64(dy), f64(x), f64(w),
                                                                      f64(rm), f64(rv)),
                             (dtype, np.float32, np.float32)):
        assert_grad_close(got, want, dt, tol)


@pytest.mark.parametrize("dtype", SIXTEEN_BIT)
def test_half_block_sums_error_bound(dtype):
    """shifted_sums / dy_sums of 16-bit data (float32 sums over blocks of SUM_BLOCK values,
    added into float64) against exact float64 sums of the same values, mean 1e3 + unit noise:
    the error stays within SUM_BLOCK * 2**-24 of the sum of magnitudes, far below float16
    rounding; a shift or center not exact in float32 is corrected for."""
    from numba import njit

    from numbanorm.cpu._parallel import FASTMATH
    from numbanorm.cpu.half import SUM_BLOCK, bits, dy_sums, shifted_sums

    @njit(fastmath=FASTMATH)
    def sums(x, g, shift, center):
        return shifted_sums(x, shift) + dy_sums(g, x, center)

    rng = np.random.default_rng(5)
    n = 100_003  # ~390 blocks, the last one partial
    x = (1e3 + rng.standard_normal(n)).astype(dtype)
    g = rng.standard_normal(n).astype(dtype)
    xv, gv = f64(x), f64(g)
    bound = SUM_BLOCK * 2.0**-24
    for shift, center in ((xv[0], xv.mean()), (1000.1, 999.9)):  # 1000.1: not a float32
        got = sums(bits(x), bits(g), shift, center)
        d = xv - shift
        e = gv * (xv - center)
        for value, exact, magnitude in zip(got, (d.sum(), (d * d).sum(), gv.sum(), e.sum()),
                                           (np.abs(d).sum(), (d * d).sum(), np.abs(gv).sum(),
                                            np.abs(e).sum())):
            assert abs(value - exact) <= bound * magnitude + 1e-9, (value, exact)


def test_half_loads_and_stores_in_jitted_code():
    """numbanorm.cpu.half's load/store/work in a jitted function, for each dtype a kernel gets."""
    from numba import njit

    from numbanorm.cpu.half import bits, load, store, work

    @njit
    def axpb(x, out):
        for i in range(x.size):
            store(out, i, load(x, i) * work(x, 2.0) + work(x, 0.5))

    for dtype in (HALF, np.float32, np.float64) + (() if BFLOAT16 is None else (BFLOAT16,)):
        x = np.array([1.0, -3.5, 6e-8, 65504.0, np.inf], dtype)
        out = np.empty_like(x)
        sixteen = dtype in (HALF, BFLOAT16)
        with np.errstate(over="ignore"):
            want = (x.astype(np.float32 if sixteen else dtype) * 2 + 0.5).astype(dtype)
        axpb(bits(x), bits(out))
        np.testing.assert_array_equal(out, want)


def test_half_arguments_by_keyword_and_position():
    x, _, w, b = inputs((4, 6, 5), np.float32)
    y, _ = F.batch_norm(x, w, b)
    np.testing.assert_array_equal(F.batch_norm(x=x, bias=b, weight=w)[0], y)
    np.testing.assert_array_equal(F.instance_norm(x, w, b)[0],
                                  F.instance_norm(x, weight=w, bias=b, eps=1e-5)[0])
    with pytest.raises(TypeError, match="multiple values for argument 'weight'"):
        F.batch_norm(x, w, weight=w)
    with pytest.raises(TypeError, match="unexpected keyword argument 'wieght'"):
        F.group_norm(x, 2, wieght=w)


@pytest.mark.skipif(BFLOAT16 is None, reason="ml_dtypes (the bfloat16 extra) is not installed")
def test_bfloat16_layers_and_torch():
    """bfloat16 layers (float32 or bfloat16 parameters) and PyTorch's CPU bfloat16 GroupNorm."""
    x, dy, w, b = inputs((4, 6, 5, 7), np.float32, loc=3.0)
    x, dy = x.astype(np.float32).astype(BFLOAT16), dy.astype(np.float32).astype(BFLOAT16)
    for layer_dtype in (np.float32, BFLOAT16):
        run_norm_layers(x, dy, layer_dtype)
    torch = pytest.importorskip("torch")
    wb, bb = w.astype(BFLOAT16), b.astype(BFLOAT16)
    t = lambda a: torch.tensor(a.astype(np.float32)).to(torch.bfloat16)
    ty = torch.nn.functional.group_norm(t(x), 3, t(wb), t(bb))
    y, _ = F.group_norm(x, 3, wb, bb)
    np.testing.assert_allclose(f64(y), ty.float().numpy(), atol=3e-2, rtol=1e-2)
    assert_half_close(y, ref.group_norm(f64(x), 3, f64(wb), f64(bb)), atol=2.0**-20)
