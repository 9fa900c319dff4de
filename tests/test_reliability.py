"""Reliability of the norm layers and ops: a rejected call changes nothing (saved state,
running statistics, parameters), one input check for every layer, debug mode catching inputs
modified in place between forward and backward, PyTorch's count of empty batches, atomic
saves and all-or-nothing load_state_dict."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import numbanorm
from numbanorm import functional as F
from numbanorm import nn

ROOT = Path(__file__).resolve().parent.parent
rng = np.random.default_rng(0)


def rand(shape, dtype=np.float32):
    return rng.standard_normal(shape).astype(dtype)


# (layer factory, input shape) for every norm layer type
LAYERS = {
    "BatchNorm1d": (lambda: nn.BatchNorm1d(3), (4, 3)),
    "BatchNorm2d": (lambda: nn.BatchNorm2d(3), (4, 3, 5, 5)),
    "BatchNorm3d": (lambda: nn.BatchNorm3d(3), (2, 3, 2, 3, 4)),
    "InstanceNorm1d": (lambda: nn.InstanceNorm1d(3, affine=True), (4, 3, 6)),
    "InstanceNorm2d": (lambda: nn.InstanceNorm2d(3, affine=True, track_running_stats=True), (4, 3, 5, 5)),
    "InstanceNorm3d": (lambda: nn.InstanceNorm3d(3), (2, 3, 2, 3, 4)),
    "LayerNorm": (lambda: nn.LayerNorm((5, 5)), (4, 3, 5, 5)),
    "GroupNorm": (lambda: nn.GroupNorm(3, 6), (4, 6, 5)),
    "SyncBatchNorm-eval": (lambda: nn.SyncBatchNorm(3).eval(), (4, 3, 5)),
}


def snapshot(layer):
    """Every parameter, gradient and buffer, copied."""
    state = {k: np.array(v, copy=True) for k, v in layer.state_dict().items()}
    state.update({f"{k}.grad": (None if p.grad is None else np.array(p.grad, copy=True))
                  for k, p in layer.named_parameters()})
    return state


def assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        if a[k] is None or b[k] is None:
            assert a[k] is None and b[k] is None, k
        else:
            assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k], equal_nan=True), k


# ---------------------------------------------------------------- item 1: rejected backward

@pytest.mark.parametrize("name", list(LAYERS))
def test_rejected_backward_keeps_saved_state(name):
    """A backward rejected for a wrong dy (shape, dtype, a list) changes nothing: the corrected
    backward then gives bitwise what a backward without the rejected calls gives."""
    make, shape = LAYERS[name]
    x, dy = rand(shape), rand(shape)
    clean = make()
    clean(x)
    want_dx = clean.backward(dy)
    layer = make()
    layer(x)
    before = snapshot(layer)
    bad_dys = [(ValueError, rand(shape[:-1] + (shape[-1] + 1,))), (TypeError, dy.astype(np.float64)),
               (TypeError, dy.tolist())]
    for error, bad in bad_dys:
        with pytest.raises(error, match="dy"):
            layer.backward(bad)
        assert_same(snapshot(layer), before)
    dx = layer.backward(dy)
    assert np.array_equal(dx, want_dx)
    assert_same(snapshot(layer), snapshot(clean))
    with pytest.raises(ValueError, match="before forward \\(or twice"):
        layer.backward(dy)


# ---------------------------------------------------------------- item 2: one input check

@pytest.mark.parametrize("name", list(LAYERS))
def test_every_layer_rejects_a_list_like_the_functional_api(name):
    make, shape = LAYERS[name]
    layer = make().train(name != "SyncBatchNorm-eval")
    before = snapshot(layer)
    with pytest.raises(TypeError, match="^x must be a numpy.ndarray or a CUDA array .*got builtins.list"):
        layer(rand(shape).tolist())
    assert_same(snapshot(layer), before)
    with pytest.raises(TypeError, match="^x must be a numpy.ndarray or a CUDA array .*got builtins.list"):
        F.batch_norm(rand((4, 3)).tolist())


# ---------------------------------------------------------------- item 3: debug mode

@pytest.fixture
def debug():
    was = numbanorm.debug_enabled()
    numbanorm.set_debug(True)
    yield
    numbanorm.set_debug(was)


@pytest.mark.parametrize("name", list(LAYERS))
@pytest.mark.parametrize("what", ["x", "weight"])
def test_debug_mode_catches_inputs_modified_before_backward(debug, name, what):
    make, shape = LAYERS[name]
    layer = make()
    if what == "weight" and layer.weight is None:
        pytest.skip("this layer has no weight")
    x = rand(shape)
    layer(x)
    target = x if what == "x" else layer.weight.data
    original = target.reshape(-1)[0]
    target.reshape(-1)[0] = original + 1.0
    with pytest.raises(RuntimeError, match=f"^{what} saved by the .* forward was modified in place"):
        layer.backward(rand(shape))
    # the rejected backward kept the saved state; restoring the input makes it valid again
    target.reshape(-1)[0] = original
    layer.backward(rand(shape))


@pytest.mark.parametrize("op", ["batch", "layer", "group", "instance"])
def test_debug_mode_functional_ops(debug, op):
    x = rand((4, 4, 6))
    forward = {"batch": lambda: F.batch_norm(x, training=True),
               "layer": lambda: F.layer_norm(x, (6,)),
               "group": lambda: F.group_norm(x, 2),
               "instance": lambda: F.instance_norm(x)}[op]
    backward = getattr(F, f"{op}_norm_backward")
    y, saved = forward()
    backward(rand(y.shape), saved)  # unchanged: fine
    x[1, 2, 3] = 7.0
    with pytest.raises(RuntimeError, match="^x saved by"):
        backward(rand(y.shape), saved)


def test_without_debug_mode_a_modified_input_is_not_checked():
    """Debug off (the default): no fingerprints, the backward runs (the documented rule is
    the caller's to keep)."""
    assert not numbanorm.debug_enabled()
    x = rand((4, 3))
    y, saved = F.batch_norm(x)
    assert saved.fingerprints is None
    x += 1.0
    F.batch_norm_backward(rand((4, 3)), saved)


def test_debug_mode_from_the_environment():
    code = ("import numpy as np, numbanorm\n"
            "from numbanorm import nn\n"
            "assert numbanorm.debug_enabled()\n"
            "x = np.ones((4, 3), np.float32); x[0] = 2\n"
            "m = nn.LayerNorm(3); m(x); x[1, 1] = 5\n"
            "try:\n"
            "    m.backward(np.ones_like(x))\n"
            "except RuntimeError as e:\n"
            "    print('caught:', e)\n")
    env = dict(os.environ, NUMBANORM_DEBUG="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "caught: x saved by the row forward was modified in place" in res.stdout


# ---------------------------------------------------------------- item 4: empty batches count

@pytest.mark.parametrize("momentum", [0.1, None])
def test_empty_training_batch_counts_like_pytorch(momentum):
    """PyTorch's BatchNorm increments num_batches_tracked for an empty training batch (and
    leaves the running statistics alone); so do we, and the next cumulative-average step
    uses the count."""
    bn = nn.BatchNorm2d(3, momentum=momentum)
    bn(np.zeros((0, 3, 4, 4), np.float32))
    bn(np.zeros((2, 3, 0, 4), np.float32))
    assert int(bn.num_batches_tracked) == 2
    assert np.array_equal(bn.running_mean, np.zeros(3, np.float32))
    assert np.array_equal(bn.running_var, np.ones(3, np.float32))
    torch = pytest.importorskip("torch")
    tb = torch.nn.BatchNorm2d(3, momentum=momentum)
    tb(torch.zeros(0, 3, 4, 4))
    tb(torch.zeros(2, 3, 0, 4))
    assert int(tb.num_batches_tracked) == 2
    x = rand((5, 3, 2, 2)) + 3
    bn(x)
    tb(torch.from_numpy(x))
    np.testing.assert_allclose(bn.running_mean, tb.running_mean.numpy(), rtol=1e-6)
    np.testing.assert_allclose(bn.running_var, tb.running_var.numpy(), rtol=1e-6)


# ---------------------------------------------------------------- load_state_dict, saves

def _state_modules():
    return {
        **{name: make for name, (make, _) in LAYERS.items()},
        "SyncBatchNorm": lambda: nn.SyncBatchNorm(3),
        "LayerNorm-no-bias": lambda: nn.LayerNorm(4, bias=False),
        "Conv2d": lambda: nn.Conv2d(2, 3, 3),
        "Linear": lambda: nn.Linear(4, 2),
        "Sequential": lambda: nn.Sequential(nn.Conv2d(1, 3, 3, bias=False), nn.BatchNorm2d(3), nn.ReLU(),
                                            nn.Flatten(), nn.Linear(12, 4), nn.LayerNorm(4),
                                            nn.Linear(4, 2)),
    }


class Unreadable:
    """np.asarray of this raises, like a corrupt checkpoint entry."""

    def __array__(self, *args, **kwargs):
        raise OSError("checkpoint entry unreadable (simulated)")


@pytest.mark.parametrize("name", list(_state_modules()))
@pytest.mark.parametrize("bad", ["shape", "dtype", "unreadable", "unexpected", "missing"])
def test_load_state_dict_with_one_bad_entry_changes_nothing(name, bad):
    """Every entry but one is valid and different from the module's; the bad one is last (so a
    loader writing as it goes would have written the others): the module stays bitwise as it
    was, and the error names the entry."""
    module = _state_modules()[name]()
    if not module.state_dict():
        pytest.skip("no state")
    before = snapshot(module)
    new = {k: (v + 1.5).astype(v.dtype) for k, v in module.state_dict().items()}
    last = list(new)[-1]
    error, match = {"shape": (ValueError, f"{last} must have shape"),
                    "dtype": (TypeError, f"{last} must be numeric"),
                    "unreadable": (OSError, "unreadable"),
                    "unexpected": (ValueError, "unexpected keys \\['extra'\\]"),
                    "missing": (ValueError, "missing keys")}[bad]
    if bad == "shape":
        new[last] = np.zeros(new[last].shape + (2,), new[last].dtype)
    elif bad == "dtype":
        new[last] = np.full(new[last].shape, "x")
    elif bad == "unreadable":
        new[last] = Unreadable()
    elif bad == "unexpected":
        new["extra"] = np.zeros(1)
    else:
        if last.endswith("num_batches_tracked"):  # allowed to be absent: drop another key
            last = list(new)[0]
        del new[last]
    with pytest.raises(error, match=match):
        module.load_state_dict(new)
    assert_same(snapshot(module), before)


def test_saves_are_atomic_a_crash_mid_save_leaves_the_old_file(tmp_path, monkeypatch):
    """demo.write_state_dict (the model save) interrupted half-way through writing: the previous
    file is intact and no temp file is left."""
    from numbanorm import demo

    path = tmp_path / "model.npz"
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    demo.write_state_dict(path, model)
    old_bytes = path.read_bytes()
    model[0].weight.data += 1.0

    real_savez = np.savez

    def crash_mid_write(f, **arrays):
        f.write(b"PK\x03\x04 half a zip")  # some bytes reach the file, then the process dies
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", crash_mid_write)
    with pytest.raises(KeyboardInterrupt):
        demo.write_state_dict(path, model)
    monkeypatch.setattr(np, "savez", real_savez)
    assert path.read_bytes() == old_bytes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.npz"]
    with np.load(path) as z:
        assert not np.array_equal(z["0.weight"], model[0].weight.data)


# ---------------------------------------------------------------- type hints, backward docs

def _public_api():

    from numbanorm import datasets
    from numbanorm import distributed as D

    funcs = [getattr(F, n) for n in F.__all__ if n.endswith(("_norm", "_norm_backward")) or n == "channel_inputs"]
    assert len(funcs) == 9
    funcs += [getattr(D, n) for n in ("sync_batch_norm", "sync_batch_norm_backward", "allreduce_gradients",
                                      "broadcast_parameters", "shard_range", "shard", "abort_on_error",
                                      "run_or_abort", "save_on_root", "is_root", "merge_stats",
                                      "set_timeout", "get_timeout")]
    funcs += [getattr(datasets, n) for n in ("load_mnist", "load_digits", "download_mnist", "read_idx",
                                            "parse_idx", "read_idx_bytes", "find_mnist_file")]
    funcs += [numbanorm.set_debug, numbanorm.debug_enabled]
    ctors = [getattr(nn, n).__init__ for n in ("BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "InstanceNorm1d",
                                               "InstanceNorm2d", "InstanceNorm3d", "LayerNorm", "GroupNorm",
                                               "SyncBatchNorm")]
    return funcs, ctors


def test_public_api_has_type_hints():
    import inspect

    funcs, ctors = _public_api()
    missing = []
    for fn in funcs + ctors:
        sig = inspect.signature(fn)
        for p in sig.parameters.values():
            if p.name not in ("self", "comm", "module", "data", "args", "kwargs", "fn") and \
                    p.annotation is inspect.Parameter.empty:
                missing.append(f"{fn.__qualname__}({p.name})")
        if fn not in ctors and fn.__name__ not in ("abort_on_error", "run_or_abort", "shard",
                                                    "broadcast_parameters") \
                and sig.return_annotation is inspect.Signature.empty:
            missing.append(f"{fn.__qualname__} -> ?")
    assert not missing, missing


def test_every_public_backward_says_what_it_takes_returns_and_consumes():
    from numbanorm import distributed as D

    backwards = [getattr(F, n) for n in F.__all__ if n.endswith("_norm_backward")] + [D.sync_batch_norm_backward]
    backwards += [getattr(nn, n).backward for n in ("BatchNorm2d", "InstanceNorm2d", "LayerNorm", "GroupNorm",
                                                    "SyncBatchNorm")]
    assert len(backwards) == 10
    for fn in backwards:
        doc = (fn.__doc__ or "").lower()
        assert "dy" in doc and "dx" in doc and "consume" in doc, fn.__qualname__
