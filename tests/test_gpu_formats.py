"""float16 and channels-last inputs of the norm ops on the GPU (numbanorm.cuda).

float16: the kernels read x/dy and write y/dx in float16 themselves (float32 or float16
parameters, dweight/dbias in the parameters' dtype): no float32 copy of x or dy. Checked against
the float64 reference evaluated on the same float16 values (y within a float16 ulp of it), the
CPU backend's float16 results, with data of mean 1e3.
Channels-last: BatchNorm/GroupNorm/InstanceNorm take a device array with NLC/NHWC/NDHWC strides
without a layout copy (saved.x is x's memory); y and dx come back in that layout; the same
values as the NCHW device path, the CPU and the float64 reference, with large means, backward
included; C >= 32 takes the partial sums' column layout.
Tiny shapes: the CUDA simulator (tests/conftest.py) runs one Python thread per CUDA thread.
"""
import os
import subprocess
import sys

import numpy as np
import pytest

from numbanorm import cuda_support

pytest.importorskip("numba.cuda")
if not cuda_support.cuda_available():
    pytest.skip("CUDA (or the CUDA simulator) is not usable here", allow_module_level=True)

import numbanorm.cuda as ncuda  # noqa: E402
from numbanorm import functional as F  # noqa: E402
from numbanorm import nn  # noqa: E402

from . import reference as ref  # noqa: E402
from .reference import f64  # noqa: E402
from .test_gpu import SIMULATOR, dev, host, small_launches  # noqa: E402,F401
from .test_half import assert_grad_close, assert_half_close  # noqa: E402

HALF = np.dtype(np.float16)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def same_memory(a, b):
    """Whether device arrays a and b start at the same device address (a view, not a copy)."""
    if SIMULATOR:  # the simulator's arrays wrap NumPy arrays (np.asarray: no copy)
        return np.asarray(a).__array_interface__["data"][0] == np.asarray(b).__array_interface__["data"][0]
    return a.__cuda_array_interface__["data"][0] == b.__cuda_array_interface__["data"][0]


def to_channels_last(a):
    """A host (N, C, *spatial) array as a device array with channels-last memory (the moved view
    of a C-contiguous (N, *spatial, C) device array)."""
    return ncuda.moveaxis(dev(np.moveaxis(a, 1, -1)), -1, 1)


def is_channels_last(a):
    """a's strides are those of dense (N, *spatial, C) memory (and not of C order)."""
    shape, item = tuple(a.shape), a.dtype.itemsize
    moved = (shape[0], *shape[2:], shape[1])
    strides = [item] * len(moved)
    for i in range(len(moved) - 2, -1, -1):
        strides[i] = strides[i + 1] * moved[i + 1]
    want = (strides[0], strides[-1], *strides[1:-1])
    return tuple(a.strides) == want and not a.is_c_contiguous()


# ---------------------------------------------------------------- the ops, as one call each

def run(op, x, dy, w, b, rm, rv):
    """Forward and backward of `op` on x (host or device arrays; rm/rv updated in place)
    -> (y, dx, dw, db, saved)."""
    if op == "batch_train":
        y, saved = F.batch_norm(x, w, b, rm, rv, True, 0.3)
        grads = F.batch_norm_backward(dy, saved)
    elif op == "batch_eval":
        y, saved = F.batch_norm(x, w, b, rm, rv, False)
        grads = F.batch_norm_backward(dy, saved)
    elif op == "group":
        y, saved = F.group_norm(x, 2, w, b)
        grads = F.group_norm_backward(dy, saved)
    elif op == "instance":
        y, saved = F.instance_norm(x, w, b, rm, rv, momentum=0.3)
        grads = F.instance_norm_backward(dy, saved)
    else:  # layer: over the trailing dims
        shape = tuple(x.shape[1:])
        y, saved = F.layer_norm(x, shape, w, b)
        grads = F.layer_norm_backward(dy, saved)
    return (y, *grads, saved)


def reference(op, x, dy, w, b, rm, rv):
    """The float64 reference of run() -> (y, dx, dw, db, rm, rv) (rm/rv None when not updated)."""
    x, dy, w, b, rm, rv = (f64(a) for a in (x, dy, w, b, rm, rv))
    if op == "batch_train":
        y, rm2, rv2 = ref.batch_norm(x, w, b, rm, rv, True, 0.3)
        return (y, *ref.batch_norm_backward(dy, x, w), rm2, rv2)
    if op == "batch_eval":
        y = ref.batch_norm(x, w, b, rm, rv, False)[0]
        return (y, *ref.batch_norm_eval_backward(dy, x, w, rm, rv), None, None)
    if op == "group":
        return (ref.group_norm(x, 2, w, b), *ref.group_norm_backward(dy, x, 2, w), None, None)
    if op == "instance":
        y, rm2, rv2 = ref.instance_norm(x, w, b, rm, rv, 0.3)
        return (y, *ref.instance_norm_backward(dy, x, w), rm2, rv2)
    shape = tuple(x.shape[1:])
    return (ref.layer_norm(x, shape, w, b), *ref.layer_norm_backward(dy, x, shape, w), None, None)


def inputs(op, shape, dtype, pdtype, loc, seed=0):
    """x of mean loc with unit noise, dy, and parameters / running statistics of pdtype."""
    rng = np.random.default_rng(seed)
    x = (loc + rng.standard_normal(shape)).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    pshape = shape[1:] if op == "layer" else shape[1]
    w = (1 + 0.5 * rng.standard_normal(pshape)).astype(pdtype)
    b = rng.standard_normal(pshape).astype(pdtype)
    rm = np.full(pshape, loc + 0.25, pdtype)
    rv = (0.5 + rng.random(pshape)).astype(pdtype)
    return x, dy, w, b, rm, rv


# ---------------------------------------------------------------- float16

HALF_OPS = ["batch_train", "batch_eval", "group", "instance", "layer"]


@pytest.mark.parametrize("pdtype", [np.float32, np.float16])
@pytest.mark.parametrize("op", HALF_OPS)
def test_float16_on_device(op, pdtype, kernel_launches):
    """float16 x of mean 1e3: y within a float16 ulp of the float64 reference, gradients and
    running statistics close to it and to the CPU backend's float16 results; x and dy are
    computed on as they are (saved.x is x; with float32 parameters no cast kernel runs but the
    two of the float64 parameter gradients)."""
    x, dy, w, b, rm, rv = inputs(op, (3, 4, 5), HALF, pdtype, 1e3)
    d_rm, d_rv = dev(rm), dev(rv)
    dx_ = dev(x)
    yg, dxg, dwg, dbg, saved = run(op, dx_, dev(dy), dev(w), dev(b), d_rm, d_rv)
    launched = [name for name, _ in kernel_launches]
    assert saved.x.dtype == HALF and same_memory(saved.x, dx_)
    if pdtype == np.float32:  # the one cast kernels: dweight, dbias from float64 to float32
        assert launched.count("_copy_cast") == 2, launched
    want = reference(op, x, dy, w, b, rm, rv)
    got = (host(yg), host(dxg), host(dwg), host(dbg), host(d_rm), host(d_rv))
    assert_half_close(got[0], want[0], atol=1e-6)
    for g, wt, dt in zip(got[1:4], want[1:4], (HALF, pdtype, pdtype)):
        assert_grad_close(g, wt, np.dtype(dt))
    for g, wt in zip(got[4:], want[4:]):
        if wt is not None:
            assert g.dtype == np.dtype(pdtype)
            np.testing.assert_allclose(f64(g), wt, rtol=2e-3, atol=2e-3)
    # the CPU backend (float32 elementwise math) on the same inputs
    cpu = run(op, x, dy, w, b, rm, rv)
    np.testing.assert_allclose(f64(got[0]), f64(cpu[0]), rtol=1e-3, atol=2e-3)
    for g, c in zip(got[1:4], cpu[1:4]):
        assert g.dtype == c.dtype
        scale = np.max(np.abs(f64(c)))
        np.testing.assert_allclose(f64(g), f64(c), rtol=2e-3, atol=2e-3 * scale)
    if want[4] is not None:
        np.testing.assert_allclose(f64(got[4]), f64(rm), rtol=1e-3)
        np.testing.assert_allclose(f64(got[5]), f64(rv), rtol=2e-3)


def test_float16_without_params_and_empty_batch():
    x, dy, _, _, _, _ = inputs("batch_train", (4, 3, 5), HALF, np.float32, 1e3)
    y, saved = F.batch_norm(dev(x))
    assert_half_close(host(y), ref.batch_norm(f64(x))[0], atol=1e-6)
    dx, dw, db = F.batch_norm_backward(dev(dy), saved)
    assert host(dx).dtype == HALF and dw is None and db is None
    y, saved = F.group_norm(dev(x), 3)
    assert_half_close(host(y), ref.group_norm(f64(x), 3), atol=1e-6)
    w = dev(np.ones(3, HALF))
    y, saved = F.batch_norm(dev(np.zeros((0, 3, 5), HALF)), w, w)
    dx, dw, db = F.batch_norm_backward(dev(np.zeros((0, 3, 5), HALF)), saved)
    assert y.dtype == dx.dtype == HALF and host(dw).dtype == HALF and not host(dw).any()


def test_float16_masked_batch_norm_on_device():
    """A mask on float16 x: the masked kernels read float16 too; the CPU's result."""
    x, dy, w, b, rm, rv = inputs("batch_train", (4, 3, 5), HALF, np.float32, 1e3)
    mask = np.random.default_rng(1).random((4, 5)) < 0.6
    d_rm, d_rv = dev(rm), dev(rv)
    y, saved = F.batch_norm(x, w, b, rm, rv, mask=mask)
    grads = F.batch_norm_backward(dy, saved)
    yg, savedg = F.batch_norm(dev(x), dev(w), dev(b), d_rm, d_rv, mask=dev(mask))
    gradsg = F.batch_norm_backward(dev(dy), savedg)
    assert savedg.x.dtype == HALF
    np.testing.assert_allclose(f64(host(yg)), f64(y), rtol=1e-3, atol=2e-3)
    for g, c in zip(gradsg, grads):
        assert host(g).dtype == c.dtype
        np.testing.assert_allclose(f64(host(g)), f64(c), rtol=2e-3, atol=2e-3 * np.max(np.abs(f64(c))))
    np.testing.assert_allclose(f64(host(d_rm)), f64(rm), rtol=1e-3)
    np.testing.assert_allclose(f64(host(d_rv)), f64(rv), rtol=2e-3)


# ---------------------------------------------------------------- channels-last

CL_OPS = ["batch_train", "batch_eval", "group", "instance"]
# (shape, dtype, loc): NLC, NHWC, NDHWC; C = 32 takes the column layout of the partial sums
CL_CASES = [((4, 4, 5), np.float32, 1e4), ((2, 4, 3, 2), np.float64, 1e4),
            ((2, 4, 2, 2, 2), HALF, 1e3), ((2, 32, 2), np.float32, 1e4),
            ((2, 6, 2, 3), HALF, 1e3)]


def tolerance(dtype):
    return {np.dtype(np.float64): dict(rtol=1e-10, atol=1e-10),
            np.dtype(np.float32): dict(rtol=2e-6, atol=2e-6)}.get(np.dtype(dtype), dict(rtol=1e-3, atol=2e-3))


@pytest.mark.parametrize("op", CL_OPS)
@pytest.mark.parametrize("shape, dtype, loc", CL_CASES)
def test_channels_last_on_device(op, shape, dtype, loc):
    """Channels-last device x: no layout copy, y/dx channels-last, the NCHW device path's values
    (running statistics too), the float64 reference's, the CPU's; a dy in either layout."""
    pdtype = np.float32 if dtype == HALF else dtype
    x, dy, w, b, rm, rv = inputs(op, shape, dtype, pdtype, loc)
    xd, dyd = to_channels_last(x), to_channels_last(dy)
    assert is_channels_last(xd) and is_channels_last(dyd)
    cl_rm, cl_rv, rm2, rv2 = dev(rm), dev(rv), dev(rm), dev(rv)
    y, dx, dw, db, saved = run(op, xd, dyd, dev(w), dev(b), cl_rm, cl_rv)
    assert saved.channels_last and same_memory(saved.x, xd)
    assert is_channels_last(y) and is_channels_last(dx)
    assert y.shape == dx.shape == shape and y.dtype == dx.dtype == dtype
    y2, dx2, dw2, db2, _ = run(op, dev(x), dev(dy), dev(w), dev(b), rm2, rv2)
    tol = tolerance(dtype)
    for got, want in zip((y, dx, dw, db, cl_rm, cl_rv), (y2, dx2, dw2, db2, rm2, rv2)):
        np.testing.assert_allclose(f64(host(got)), f64(host(want)), **tol)
    want = reference(op, x, dy, w, b, rm, rv)
    if dtype == HALF:
        assert_half_close(host(y), want[0], atol=1e-6)
    else:
        np.testing.assert_allclose(host(y), want[0], rtol=1e-5, atol=2e-5 if dtype == np.float32 else 1e-9)
    for got, wt in zip((dx, dw, db), want[1:4]):
        scale = np.max(np.abs(wt))
        np.testing.assert_allclose(f64(host(got)), wt, rtol=2e-3, atol=2e-3 * scale)
    # a dy in NCHW order is copied into x's layout: the same dx, bit for bit
    grads = {"batch_train": F.batch_norm_backward, "batch_eval": F.batch_norm_backward,
             "group": F.group_norm_backward, "instance": F.instance_norm_backward}[op](dev(dy), saved)
    np.testing.assert_array_equal(host(grads[0]), host(dx))
    # the CPU backend on the same channels-last memory
    cpu = run(op, np.moveaxis(np.ascontiguousarray(np.moveaxis(x, 1, -1)), -1, 1), dy, w, b, rm, rv)
    for got, want in zip((y, dx, dw, db), cpu[:4]):
        scale = max(1.0, np.max(np.abs(f64(want))))
        np.testing.assert_allclose(f64(host(got)), f64(want), rtol=tol["rtol"] * 10,
                                   atol=max(tol["atol"] * 10, 1e-5) * scale)


@pytest.mark.parametrize("op", ["group", "instance"])
def test_channels_last_row_cache(op, monkeypatch):
    """Channels-last rows kept in shared memory or read twice (ROW_CACHE_BYTES = 0): the same
    bits, forward and backward."""
    x, dy, w, b, rm, rv = inputs(op, (2, 4, 3, 3), np.float32, np.float32, 1e4)
    results = []
    for cache_bytes in (32 * 1024, 0):
        monkeypatch.setattr(ncuda.config, "ROW_CACHE_BYTES", cache_bytes)
        out = run(op, to_channels_last(x), to_channels_last(dy), dev(w), dev(b), dev(rm), dev(rv))
        results.append([host(a) for a in out[:4]])
    for a, c in zip(*results):
        np.testing.assert_array_equal(a, c)


def test_other_strides_still_copied_on_device():
    """A device x that is neither C-contiguous nor channels-last is copied to NCHW."""
    x = np.random.default_rng(2).standard_normal((2, 4, 3, 5)).astype(np.float32)
    xd = ncuda.moveaxis(dev(np.moveaxis(x, 2, -1)), -1, 2)  # (N, C, W, H) memory
    assert not xd.is_c_contiguous() and not is_channels_last(xd)
    for op in ("batch_train", "group"):
        y, saved = (F.batch_norm(xd) if op == "batch_train" else F.group_norm(xd, 2))
        assert not saved.channels_last and y.is_c_contiguous()
        want = ref.batch_norm(f64(x))[0] if op == "batch_train" else ref.group_norm(f64(x), 2)
        np.testing.assert_allclose(host(y), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("make", [lambda: nn.BatchNorm2d(4), lambda: nn.GroupNorm(2, 4),
                                  lambda: nn.InstanceNorm2d(4, affine=True, track_running_stats=True)])
@pytest.mark.parametrize("dtype", [np.float32, HALF])
def test_layers_channels_last_and_float16_on_device(make, dtype):
    """Layers on the GPU fed channels-last (and float16) device x: the CPU layer's results,
    layout kept, running statistics and parameter gradients included."""
    rng = np.random.default_rng(4)
    loc = 1e3 if dtype == HALF else 1e4
    x = (loc + rng.standard_normal((2, 4, 3, 2))).astype(dtype)
    dy = rng.standard_normal(x.shape).astype(dtype)
    cpu_layer, gpu_layer = make(), make().to("cuda")
    y, dx = cpu_layer.forward(x), cpu_layer.backward(dy)
    yg, dxg = gpu_layer.forward(to_channels_last(x)), gpu_layer.backward(to_channels_last(dy))
    assert is_channels_last(yg) and is_channels_last(dxg) and yg.dtype == dtype
    tol = dict(rtol=1e-3, atol=2e-3) if dtype == HALF else dict(rtol=1e-5, atol=1e-4)
    for got, want in ((yg, y), (dxg, dx)):
        np.testing.assert_allclose(f64(host(got)), f64(want), **tol)
    for pc, pg in zip(cpu_layer.parameters(), gpu_layer.parameters()):
        np.testing.assert_allclose(host(pg.grad), pc.grad, rtol=2e-3, atol=2e-3)
    for (k, vc), (_, vg) in zip(cpu_layer.state_dict().items(), gpu_layer.state_dict().items()):
        np.testing.assert_allclose(np.asarray(vg, np.float64), np.asarray(vc, np.float64),
                                   rtol=1e-4, atol=1e-4, err_msg=k)


# ---------------------------------------------------------------- the real target's arrays

_REAL_TARGET_VIEWS = """
import numpy as np
from numba.cuda.cudadrv.devicearray import DeviceNDArray
import numbanorm.cuda as ncuda
from numbanorm.functional._formats import from_channels_last, is_channels_last

class Memory:  # a stand-in for device memory: views must keep this very object
    pass

mem = Memory()
nhwc = DeviceNDArray((2, 3, 5, 4), (120, 40, 8, 2), np.float16, gpu_data=mem)
x = ncuda.moveaxis(nhwc, -1, 1)
assert x.shape == (2, 4, 3, 5) and x.strides == (120, 2, 40, 8) and x.gpu_data is mem
assert not x.is_c_contiguous() and is_channels_last(ncuda, x)
back = ncuda.moveaxis(x, 1, -1)
assert back.is_c_contiguous() and back.reshape(30, 4, 1).gpu_data is mem
y = from_channels_last(ncuda, back.reshape(2, 15, 4), (2, 4, 3, 5))
assert y.shape == (2, 4, 3, 5) and y.strides == x.strides and y.gpu_data is mem
nchw = DeviceNDArray((2, 4, 3, 5), (120, 30, 10, 2), np.float16, gpu_data=mem)
assert not is_channels_last(ncuda, nchw)
odd = ncuda.moveaxis(nchw, 2, -1)  # (N, C, W, H) memory: neither layout
assert not is_channels_last(ncuda, odd) and not odd.is_c_contiguous()
print("ok")
"""


def test_moveaxis_views_on_the_real_target():
    """numbanorm.cuda.moveaxis builds Numba DeviceNDArray views (the simulator's arrays are
    NumPy arrays underneath, so the tests above do not run this branch): shapes, strides, the
    same device memory, channels-last detection. No GPU needed: no memory is touched."""
    env = dict(os.environ)
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    env["CUDA_VISIBLE_DEVICES"] = ""
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
    proc = subprocess.run([sys.executable, "-c", _REAL_TARGET_VIEWS], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]
