"""numbanorm.cpu._panels, the explicit-vector column loops of every channels-last kernel, against
NumPy float64 on their own: every dtype, column counts that fill one vector, leave a masked
tail, and span several register groups (C = 200: 13 float32 vectors, 25 float64 ones), and row
counts around the 64-row sum blocks."""
import numpy as np
import pytest
from numba import njit

from numbanorm._validate import BFLOAT16
from numbanorm.cpu import _panels
from numbanorm.cpu.half import bits

DTYPES = [np.float32, np.float64, np.float16] + ([BFLOAT16] if BFLOAT16 is not None else [])


@njit
def _all_four(x, g, center, m, a, b, d, y, dx, s):
    """The four passes on one (R, C) matrix; s: (4, C) float64 sums, added into."""
    _panels.affine(x, y, m, a, b)
    _panels.input_grad(x, g, dx, m, a, b, d)
    _panels.moment_sums(x, center, s[0], s[1])
    _panels.grad_sums(x, g, center, s[2], s[3])


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_panels_against_float64(dtype):
    rng = np.random.default_rng(11)
    work = np.float64 if dtype == np.float64 else np.float32
    # rounding of one work-type operation, then of the stored 16-bit value
    tol = {np.float32: 2e-6, np.float64: 1e-14}.get(dtype, 1e-2 if dtype == BFLOAT16 else 2e-3)
    for R, C in [(1, 1), (5, 3), (64, 16), (65, 17), (130, 64), (3, 130), (70, 200)]:
        x = (rng.standard_normal((R, C)) * 2 + 5).astype(dtype)
        g = rng.standard_normal((R, C)).astype(dtype)
        center = x[0].astype(work)  # a value of each column: exact in the work type
        m, a, b, d = (rng.standard_normal(C).astype(work) for _ in range(4))
        y, dx = np.empty_like(x), np.empty_like(x)
        s = np.full((4, C), 0.5)  # the sums are added into what is there
        _all_four(bits(x), bits(g), center, m, a, b, d, bits(y), bits(dx), s)
        x64, g64 = x.astype(np.float64), g.astype(np.float64)
        m64, a64, b64, d64 = (v.astype(np.float64) for v in (m, a, b, d))
        want_y = (x64 - m64) * a64 + b64
        want_dx = a64 * g64 + b64 * (x64 - m64) + d64
        for got, want in ((y, want_y), (dx, want_dx)):
            scale = 1 + np.abs(want).max()
            np.testing.assert_allclose(got.astype(np.float64), want, rtol=tol, atol=tol * scale)
        diff = x64 - center.astype(np.float64)
        for got, terms in zip(s, (diff, diff * diff, g64, g64 * diff)):
            # work-type block sums of (nearly) exact terms: rounding ~R * eps * |term|
            bound = (1e-13 if work == np.float64 else 1e-6) * (1 + R * np.abs(terms).max())
            np.testing.assert_allclose(got - 0.5, terms.sum(0), rtol=0, atol=bound)
