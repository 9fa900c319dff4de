"""Row norms on the GPU keep a row in shared memory between their two passes when it fits
(numbanorm.cuda.config.ROW_CACHE_BYTES): both paths against the float64 reference and the CPU,
and bitwise equal to each other. Tiny byte budgets pick the path at simulator-sized shapes."""
import numpy as np
import pytest

from numbanorm import cuda_support

pytest.importorskip("numba.cuda")
if not cuda_support.cuda_available():
    pytest.skip("CUDA (or the CUDA simulator) is not usable here", allow_module_level=True)

from numba import cuda  # noqa: E402

import numbanorm.cuda as ncuda  # noqa: E402
from numbanorm import functional as F  # noqa: E402
from numbanorm.cuda import row_norm  # noqa: E402

from . import reference as ref  # noqa: E402


@pytest.fixture(autouse=True)
def small_launches(monkeypatch):
    monkeypatch.setattr(ncuda.config, "THREADS", 32)
    monkeypatch.setattr(ncuda.config, "TARGET_BLOCKS", 2)  # 3+ rows: blocks grid-stride over rows


# (budget in bytes, forward cached, backward cached) for rows of M = 40 elements
PATHS = {"both": (640, True, True), "forward only": (320, True, False), "neither": (0, False, False)}


def test_plan_follows_the_budget(monkeypatch):
    for name, (budget, fwd, bwd) in PATHS.items():
        monkeypatch.setattr(ncuda.config, "ROW_CACHE_BYTES", budget)
        assert row_norm.plan(5, 40)[2:] == (fwd, bwd), name
    monkeypatch.setattr(ncuda.config, "ROW_CACHE_BYTES", 1 << 30)  # capped below 48 KB per block
    t, _, fwd, bwd = row_norm.plan(5, 4096)
    assert (fwd, bwd) == (True, False) and 16 * t + 8 * 4096 <= 48 * 1024
    assert row_norm.plan(5, 7000)[2] is False


def run(op, x, dy, w, b):
    d = lambda a: None if a is None else cuda.to_device(a)
    if op == "layer":
        y, saved = F.layer_norm(d(x), x.shape[-1:], d(w), d(b))
        grads = F.layer_norm_backward(d(dy), saved)
    else:
        y, saved = F.group_norm(d(x), 2, d(w), d(b))
        grads = F.group_norm_backward(d(dy), saved)
    return [y.copy_to_host()] + [g.copy_to_host() for g in grads if g is not None]


@pytest.mark.parametrize("op", ["layer", "group"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cached_and_uncached_rows_agree(op, dtype, monkeypatch):
    rng = np.random.default_rng(3)
    # layer: 5 rows of 40; group: (3, 4, 20) in 2 groups = 6 rows of 40; a large mean throughout
    shape, C = ((5, 40), 40) if op == "layer" else ((3, 4, 20), 4)
    x = (1e4 + rng.standard_normal(shape)).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    w = (1 + 0.1 * rng.standard_normal(C)).astype(dtype)
    b = rng.standard_normal(C).astype(dtype)
    results = {}
    for name, (budget, *_) in PATHS.items():
        monkeypatch.setattr(ncuda.config, "ROW_CACHE_BYTES", budget)
        results[name] = run(op, x, dy, w, b)
    for name in PATHS:
        for got, want in zip(results[name], results["neither"]):
            np.testing.assert_array_equal(got, want, err_msg=name)
    cpu = (F.layer_norm(x, (40,), w, b) if op == "layer" else F.group_norm(x, 2, w, b))
    cpu_grads = (F.layer_norm_backward if op == "layer" else F.group_norm_backward)(dy, cpu[1])
    x64, dy64, w64, b64 = (a.astype(np.float64) for a in (x, dy, w, b))
    if op == "layer":
        y_ref = ref.layer_norm(x64, (40,), w64, b64)
        g_ref = ref.layer_norm_backward(dy64, x64, (40,), w64)
    else:
        y_ref = ref.group_norm(x64, 2, w64, b64)
        g_ref = ref.group_norm_backward(dy64, x64, 2, w64)
    tol = dict(rtol=1e-4, atol=2e-3) if dtype == np.float32 else dict(rtol=1e-8, atol=1e-8)
    for got, c, r in zip(results["both"], [cpu[0], *cpu_grads], [y_ref, *g_ref]):
        np.testing.assert_allclose(got, c, **tol)
        np.testing.assert_allclose(got, r, **tol)
