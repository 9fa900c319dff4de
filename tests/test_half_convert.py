"""numbanorm.cpu.half: float16 <-> float32 conversion bit-exact with NumPy's astype, bfloat16 <->
float32 with ml_dtypes'."""
import numpy as np
import pytest

from numbanorm.cpu import half


def test_every_float16_to_float32():
    h = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16)
    got = half.convert(h, np.float32)
    want = h.astype(np.float32)
    nan = np.isnan(want)
    assert np.array_equal(np.isnan(got), nan)
    assert np.array_equal(got[~nan].view(np.uint32), want[~nan].view(np.uint32))


def test_float32_to_float16_rounds_like_numpy():
    rng = np.random.default_rng(0)
    bits = rng.integers(0, 1 << 32, 1 << 18, dtype=np.uint64).astype(np.uint32)
    edges = np.array([0.0, -0.0, 65504, 65519.99, 65520, -65520, 1e9, np.inf, -np.inf, np.nan,
                      2.0**-24, 2.0**-25, 3 * 2.0**-26, 2.0**-14, 2.0**-14 * (1 - 2.0**-12),
                      1 + 2.0**-11, 1 + 3 * 2.0**-11, 6e-8, 1e-9], np.float32)
    f = np.concatenate([bits.view(np.float32), edges, edges.reshape(-1)[::-1] * -1])
    got = half.convert(f, np.float16)
    with np.errstate(over="ignore"):
        want = f.astype(np.float16)
    nan = np.isnan(want)
    assert np.array_equal(np.isnan(got), nan)
    assert np.array_equal(got[~nan].view(np.uint16), want[~nan].view(np.uint16))


def test_shapes_and_layouts_kept():
    from numbanorm import cpu

    a = np.random.default_rng(1).standard_normal((3, 4, 5, 6)).astype(np.float16)
    cl = a.transpose(0, 3, 1, 2)
    got = cpu.cast(cl, np.float32)
    assert got.strides == cl.astype(np.float32).strides
    np.testing.assert_array_equal(got, cl.astype(np.float32))
    np.testing.assert_array_equal(cpu.cast(a[:, ::2], np.float32), a[:, ::2].astype(np.float32))


def test_bfloat16_both_ways_like_ml_dtypes():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    bf16 = np.dtype(ml_dtypes.bfloat16)
    h = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(bf16)
    got, want = half.convert(h, np.float32), h.astype(np.float32)
    nan = np.isnan(want)
    assert np.array_equal(np.isnan(got), nan)
    assert np.array_equal(got[~nan].view(np.uint32), want[~nan].view(np.uint32))
    bits = np.random.default_rng(2).integers(0, 1 << 32, 1 << 18, dtype=np.uint64).astype(np.uint32)
    edges = np.array([0.0, -0.0, 3.4e38, -3.4e38, 3.3895e38, np.inf, -np.inf, np.nan, 1e-40, 1e-45,
                      1.00390625, 1.01171875, 1 + 2.0**-8 + 2.0**-9], np.float32)
    f = np.concatenate([bits.view(np.float32), edges])
    got = half.convert(f, bf16)
    with np.errstate(invalid="ignore"):
        want = f.astype(bf16)
    nan = np.isnan(f)
    assert np.isnan(got[nan].astype(np.float32)).all()
    assert np.array_equal(got[~nan].view(np.uint16), want[~nan].view(np.uint16))
