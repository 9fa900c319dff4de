"""Property-based tests (hypothesis, bounded example counts): every functional norm op and
every norm layer on random shapes (empty and size-1 dims included), dtypes, memory layouts,
values (NaN, inf, huge, tiny), eps / momentum / num_groups / normalized_shape, and arguments on
the wrong device or of the wrong dtype. Each call either raises ValueError/TypeError naming
the argument, with running statistics and parameters bitwise unchanged, or returns what the
float64 reference (tests/reference.py) returns."""
import re

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis", reason="the fuzz tests need hypothesis (the test extra)")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from numbanorm import functional as F  # noqa: E402
from numbanorm import nn  # noqa: E402

from . import reference as ref  # noqa: E402

FUZZ = settings(max_examples=60, deadline=None, derandomize=True, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
ARGUMENT = re.compile(r"\b(x|dy|weight|bias|running_mean|running_var|eps|momentum|num_groups|"
                      r"normalized_shape|num_features|num_channels|dtype|arrays are on different devices)\b")
OPS = ("batch_norm", "layer_norm", "group_norm", "instance_norm")


@st.composite
def arrays(draw, shape, dtype):
    """Values of several scales and offsets, sometimes with NaN/inf sprinkled in, in a random
    memory layout (C order, Fortran order, or a strided view)."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    scale = draw(st.sampled_from([1.0, 1e-20, 1e-3, 1e6]))
    offset = draw(st.sampled_from([0.0, 3.0, 1e4, -1e8]))
    a = rng.standard_normal(shape) * scale + offset
    if a.size and draw(st.booleans()) and draw(st.booleans()):
        a.reshape(-1)[rng.integers(0, a.size)] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    a = a.astype(dtype)
    layout = draw(st.sampled_from(["C", "F", "strided"]))
    if layout == "F":
        a = np.asfortranarray(a)
    elif layout == "strided":
        big = np.zeros(tuple(2 * d for d in shape), dtype)
        big[tuple(slice(None, None, 2) for _ in shape)] = a
        a = big[tuple(slice(None, None, 2) for _ in shape)]
    return a


def bad_param(kind, good):
    """good (a parameter) made wrong in one way."""
    if kind == "shape":
        return np.ones(good.size + 1, good.dtype)
    if kind == "dtype":
        return good.astype(np.float64 if good.dtype == np.float32 else np.float32)
    if kind == "device":
        from numba import cuda  # the CUDA simulator when there is no GPU (tests/conftest.py)

        return cuda.to_device(good)
    return good.tolist()


def snapshot(arrays_):
    return [None if a is None else np.array(a, copy=True) if isinstance(a, np.ndarray) else a
            for a in arrays_]


def same(before, after):
    for a, b in zip(before, after):
        if isinstance(a, np.ndarray):
            assert a.dtype == b.dtype and np.array_equal(a, b, equal_nan=True)


def condition(x, eps):
    """How much rounding the data allow: max |x| over its spread (a large mean over a small
    spread loses digits in any float implementation, the reference's included)."""
    x = np.asarray(x, np.float64)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return 1.0
    return 1.0 + float(np.max(np.abs(x))) / np.sqrt(float(np.var(x)) + eps)


def check_close(got, want, dtype, cond):
    """Where the float64 reference is finite ours is close to it; where it is NaN/inf, ours
    is not a finite number either (no silent garbage)."""
    got = np.asarray(got, np.float64)
    want = np.asarray(want, np.float64)
    assert got.shape == want.shape
    finite = np.isfinite(want)
    tol = (1e-9 + 4e-15 * cond) if dtype == np.float64 else (2e-4 + 1e-7 * cond)
    if finite.any():
        scale = 1 + np.max(np.abs(want[finite]))
        err = np.max(np.abs(got[finite] - want[finite]))
        assert err <= tol * scale, (err, scale)
    assert not np.isfinite(got[~finite]).any()


def reference(op, x, args):
    """(y, dx, dweight, dbias, running_mean, running_var) in float64 for dy = 1 + x-shaped noise."""
    x = x.astype(np.float64)
    f64 = lambda a: None if a is None else np.asarray(a, np.float64)
    w, b = f64(args.get("weight")), f64(args.get("bias"))
    rm, rv = f64(args.get("running_mean")), f64(args.get("running_var"))
    dy = args["dy"].astype(np.float64)
    eps = args["eps"]
    if op == "batch_norm" and not args["training"]:
        y, _, _ = ref.batch_norm(x, w, b, rm, rv, False, eps=eps)
        return (y, *ref.batch_norm_eval_backward(dy, x, w, rm, rv, eps), rm, rv)
    if op == "instance_norm" and not args["use_input_stats"]:
        y, _, _ = ref.batch_norm(x, w, b, rm, rv, False, eps=eps)
        return (y, *ref.batch_norm_eval_backward(dy, x, w, rm, rv, eps), rm, rv)
    if op == "batch_norm":
        y, rm, rv = ref.batch_norm(x, w, b, rm, rv, True, args["momentum"], eps)
        return (y, *ref.batch_norm_backward(dy, x, w, eps=eps), rm, rv)
    if op == "instance_norm":
        y, rm, rv = ref.instance_norm(x, w, b, rm, rv, args["momentum"], eps)
        return (y, *ref.instance_norm_backward(dy, x, w, eps), rm, rv)
    if op == "group_norm":
        y = ref.group_norm(x, args["num_groups"], w, b, eps)
        return (y, *ref.group_norm_backward(dy, x, args["num_groups"], w, eps), None, None)
    shape = args["normalized_shape"]
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    y = ref.layer_norm(x, shape, w, b, eps)
    dx, dw, db = ref.layer_norm_backward(dy, x, shape, w, eps)
    return y, dx, dw, db, None, None


FAULTS = {  # argument -> ways to get it wrong; every example breaks at most one argument
    "x": ["list", "int8", "int32", "ndim"],  # float16 x is accepted (tests/test_half.py)
    "eps": ["zero", "negative", "nan", "string"],
    "weight": ["shape", "dtype", "device", "list"],
    "bias": ["shape", "dtype", "device", "list"],
    "running_mean": ["shape", "dtype", "alone"],
    "momentum": ["big", "negative"],
    "num_groups": ["zero", "non_divisor", "float"],
    "normalized_shape": ["empty", "mismatch"],
}
MIN_NDIM = {"batch_norm": 2, "layer_norm": 1, "group_norm": 2, "instance_norm": 3}


@st.composite
def calls(draw):
    """(op, x, kwargs, faulty argument or None)."""
    op = draw(st.sampled_from(OPS))
    names = ["x", "eps", "weight", "bias"] + {
        "batch_norm": ["running_mean", "momentum"], "instance_norm": ["running_mean", "momentum"],
        "group_norm": ["num_groups"], "layer_norm": ["normalized_shape"]}[op]
    fault_arg = draw(st.sampled_from([None] * 8 + names))
    fault = draw(st.sampled_from(FAULTS[fault_arg])) if fault_arg else None
    ndim = draw(st.integers(MIN_NDIM[op], 4))
    if fault == "ndim":
        ndim = draw(st.integers(0, MIN_NDIM[op] - 1))
    shape = tuple(draw(st.lists(st.sampled_from([3, 2, 4, 5, 1, 0]), min_size=ndim, max_size=ndim)))
    dtype = draw(st.sampled_from([np.float64, np.float32]))
    x = draw(arrays(shape, dtype))
    if fault_arg == "x" and fault != "ndim":
        x = x.tolist() if fault == "list" else x.astype(fault)
    C = shape[1] if ndim >= 2 else 1
    rng = np.random.default_rng(draw(st.integers(0, 1000)))
    args = {"eps": {None: draw(st.sampled_from([1e-5, 0.1, 1e-12])), "zero": 0.0, "negative": -1e-5,
                    "nan": float("nan"), "string": "1e-5"}[fault if fault_arg == "eps" else None]}
    pshape = (C,)
    if op == "layer_norm":
        k = draw(st.integers(1, max(1, min(ndim, 2))))
        pshape = tuple(shape[ndim - k:])
        normalized = pshape[0] if len(pshape) == 1 and draw(st.booleans()) else pshape
        if fault_arg == "normalized_shape":
            normalized = () if fault == "empty" else tuple(d + 1 for d in pshape)
        args["normalized_shape"] = normalized
    for name in ("weight", "bias"):
        if draw(st.integers(0, 3)) or fault_arg == name:
            good = rng.uniform(0.5, 1.5, pshape).astype(dtype)
            args[name] = bad_param(fault, good) if fault_arg == name else good
    if op == "group_norm":
        divisors = [g for g in range(1, C + 1) if C % g == 0] or [1]
        args["num_groups"] = {None: draw(st.sampled_from(divisors)), "zero": 0, "float": 1.0,
                              "non_divisor": C + 1 if C > 0 else -1}[fault if fault_arg == "num_groups" else None]
    if op in ("batch_norm", "instance_norm"):
        if draw(st.booleans()) or fault_arg == "running_mean":
            args["running_mean"] = rng.standard_normal(C).astype(dtype)
            args["running_var"] = rng.uniform(0.5, 2, C).astype(dtype)
            if fault_arg == "running_mean":
                if fault == "alone":
                    args["running_var"] = None
                else:
                    args["running_mean"] = bad_param(fault, args["running_mean"])
        args["momentum"] = {None: draw(st.sampled_from([0.1, 0.0, 1.0, 0.5])), "big": 1.5,
                            "negative": -0.1}[fault if fault_arg == "momentum" else None]
        flag = "training" if op == "batch_norm" else "use_input_stats"
        args[flag] = draw(st.booleans())
    args["dy"] = rng.standard_normal(shape).astype(dtype)
    return op, x, args, fault_arg


@FUZZ
@given(calls())
def test_functional_ops_raise_cleanly_or_match_the_reference(call):
    op, x, args, fault_arg = call
    dy = args.pop("dy")
    state = [args.get(k) for k in ("weight", "bias", "running_mean", "running_var")]
    before = snapshot(state)
    x_before = snapshot([x])
    try:
        y, saved = getattr(F, op)(x, **args)
    except (ValueError, TypeError) as e:
        named = fault_arg or "x"  # without a fault: too few values per channel, eval without stats
        if fault_arg == "running_mean" or (fault_arg is None and "running_mean" in str(e)):
            named = "running_mean"
        if fault_arg in ("weight", "bias", "running_mean") and "different devices" in str(e):
            named = "different devices"
        if op == "layer_norm" and fault_arg == "x":  # a 0-d x leaves no normalized_shape
            named = "(x|normalized_shape)"
        assert re.search(rf"\b{named}\b", str(e)), f"{fault_arg}: {type(e).__name__}: {e}"
        same(before, snapshot(state))
        same(x_before, snapshot([x]))
        hypothesis.event(f"rejected ({fault_arg})")
        return
    assert fault_arg is None, f"{op} accepted a bad {fault_arg}: {args.get(fault_arg)!r}"
    hypothesis.event("computed")
    dtype = np.asarray(x).dtype
    assert dtype in (np.float32, np.float64) and y.dtype == dtype and y.shape == x.shape
    dx, dw, db = getattr(F, op + "_backward")(dy, saved)
    if x.size == 0:
        assert y.shape == x.shape and dx.shape == x.shape
        same(before[2:], snapshot(state[2:]))  # an empty batch leaves the running stats
        return
    with np.errstate(all="ignore"):
        want = reference(op, x, {**args, "weight": before[0], "bias": before[1],
                                 "running_mean": before[2], "running_var": before[3], "dy": dy})
    for got, w in zip((y, dx, dw, db, args.get("running_mean"), args.get("running_var")), want):
        if got is None or w is None:
            continue
        check_close(got, w, dtype, condition(x, args["eps"]))


# ---------------------------------------------------------------- layers

@st.composite
def layers(draw):
    kind = draw(st.sampled_from(["BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "InstanceNorm1d",
                                 "InstanceNorm2d", "LayerNorm", "GroupNorm", "SyncBatchNorm-eval"]))
    C = draw(st.sampled_from([3, 2, 4, 1] * 3 + [0, -1]))
    dtype = draw(st.sampled_from([np.float32, np.float64] * 3 + [np.int64]))
    eps = draw(st.sampled_from([1e-5, 1e-3] * 3 + [0.0]))
    kw = {"dtype": dtype, "eps": eps}
    if kind == "LayerNorm":
        make = lambda: nn.LayerNorm(C if C > 0 else (C,), elementwise_affine=draw(st.booleans()), **kw)
        ndim = draw(st.integers(1, 4))
    elif kind == "GroupNorm":
        groups = draw(st.sampled_from([1, 2, 3] * 2 + [0]))
        make = lambda: nn.GroupNorm(groups, C, affine=draw(st.booleans()), **kw)
        ndim = draw(st.integers(1, 4))
    else:
        kw.update(momentum=draw(st.sampled_from([0.1, None, 1.0] * 2 + [2.0])), affine=draw(st.booleans()),
                  track_running_stats=draw(st.booleans()))
        cls = nn.SyncBatchNorm if kind == "SyncBatchNorm-eval" else getattr(nn, kind)
        make = lambda: cls(C, **kw)
        ndim = draw(st.integers(1, 5))
    train = draw(st.booleans()) and kind != "SyncBatchNorm-eval"
    lead = tuple(draw(st.lists(st.integers(0, 4), min_size=ndim, max_size=ndim)))
    if ndim >= 2 and C > 0 and draw(st.integers(0, 3)):
        lead = lead[:1] + (C,) + lead[2:]
    if kind == "LayerNorm" and C > 0 and ndim >= 1 and draw(st.integers(0, 3)):
        lead = lead[:-1] + (C,)
    xdtype = draw(st.sampled_from([dtype if dtype != np.int64 else np.float32] * 4 + [np.float64, np.int32]))
    x = draw(arrays(lead, xdtype))
    return kind, make, train, x


def layer_reference(kind, layer, x, state):
    """(y, running_mean, running_var) in float64 for a fresh layer's first call on x."""
    x = x.astype(np.float64)
    f64 = lambda k: None if k not in state else state[k].astype(np.float64)
    w, b, rm, rv = f64("weight"), f64("bias"), f64("running_mean"), f64("running_var")
    if kind == "LayerNorm":
        return ref.layer_norm(x, layer.normalized_shape, w, b, layer.eps), None, None
    if kind == "GroupNorm":
        return ref.group_norm(x, layer.num_groups, w, b, layer.eps), None, None
    if kind.startswith("Instance"):
        if layer.training or not layer.track_running_stats:
            return ref.instance_norm(x, w, b, rm, rv, layer.momentum or 0.0, layer.eps)
        return ref.batch_norm(x, w, b, rm, rv, False, eps=layer.eps)
    if layer.training:  # fresh layer: momentum=None is a cumulative average with count 0 -> 1
        momentum = 1.0 if layer.momentum is None else layer.momentum
        return ref.batch_norm(x, w, b, rm, rv, True, momentum, layer.eps)
    if rm is None:  # eval without running stats: batch statistics
        return ref.batch_norm(x, w, b, None, None, True, eps=layer.eps)
    return ref.batch_norm(x, w, b, rm, rv, False, eps=layer.eps)


@settings(FUZZ, max_examples=150)  # most draws are refused early: cheap
@given(layers())
def test_layers_raise_cleanly_or_match_the_reference(case):
    """A layer either refuses (constructor or call: ValueError/TypeError naming the argument,
    state bitwise unchanged) or gives the float64 reference's output and running statistics."""
    kind, make, train, x = case
    try:
        layer = make()
    except (ValueError, TypeError) as e:
        assert ARGUMENT.search(str(e)), f"{type(e).__name__}: {e}"
        hypothesis.event("constructor rejected")
        return
    layer.train(train)
    before = {k: v.copy() for k, v in layer.state_dict().items()}
    try:
        with np.errstate(all="ignore"):
            y = layer(x)
    except (ValueError, TypeError) as e:
        assert ARGUMENT.search(str(e)) or "expected" in str(e), f"{type(e).__name__}: {e}"
        after = layer.state_dict()
        assert all(np.array_equal(before[k], after[k], equal_nan=True) for k in before)
        hypothesis.event("call rejected")
        return
    hypothesis.event("computed")
    # x's dtype; a layer with parameters or running stats refuses any other than its own
    assert y.dtype == x.dtype and y.shape == x.shape
    assert not before or y.dtype == layer.dtype
    if x.size == 0:
        return
    with np.errstate(all="ignore"):
        want_y, want_rm, want_rv = layer_reference(kind, layer, x, before)
    cond = condition(x, layer.eps)
    check_close(y, want_y, y.dtype, cond)
    if want_rm is not None and getattr(layer, "running_mean", None) is not None and (
            layer.training or kind.startswith("Instance")):
        check_close(layer.running_mean, want_rm, y.dtype, cond)
        check_close(layer.running_var, want_rv, y.dtype, cond)
    layer.backward(np.ones_like(y))  # the matching backward accepts the output's shape
