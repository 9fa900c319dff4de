"""Argument checks shared by every backend: they run before any kernel or state change, and
read only .shape and .dtype, so NumPy and device arrays are checked by the same code."""
import numbers

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
HALF = np.dtype(np.float16)
try:  # bfloat16: the optional extra `numbanorm[bfloat16]` (ml_dtypes)
    import ml_dtypes

    BFLOAT16 = np.dtype(ml_dtypes.bfloat16)
except ImportError:
    BFLOAT16 = None
HALF_DTYPES = (HALF,) if BFLOAT16 is None else (HALF, BFLOAT16)  # 16-bit data, float32 math
NORM_DTYPES = HALF_DTYPES + FLOAT_DTYPES  # the norm ops also take the 16-bit dtypes


def float_array(name, a, dtypes=FLOAT_DTYPES):
    """a must have one of dtypes (float32 or float64 unless told)."""
    dtype = a.dtype
    if type(a) is np.ndarray and dtype in dtypes:  # the common case, without np.dtype()
        return dtype
    dtype = np.dtype(dtype)
    if dtype not in dtypes:
        names = " or ".join(str(d) for d in dtypes)
        raise TypeError(f"{name} must have dtype {names}, got {dtype}")
    return dtype


def param_dtype(dtype):
    """The dtype of the parameters an op on x of `dtype` computes with (float32 for 16-bit x);
    the kernels of every backend take their parameters in it."""
    return FLOAT_DTYPES[0] if dtype in HALF_DTYPES else dtype


def half_param_dtype(x_dtype, **params):
    """The dtype of the parameters and buffers (None values ignored) of an op on x of a 16-bit
    x_dtype: float32 (the mixed-precision convention, also when none is given) or x_dtype, the
    same for all."""
    found = None
    for name, a in params.items():
        if a is None:
            continue
        dtype = np.dtype(a.dtype)
        if dtype not in (x_dtype, FLOAT_DTYPES[0]):
            raise TypeError(f"{name} must have dtype {x_dtype} or float32 (x is {x_dtype}), "
                            f"got {dtype}")
        if found is not None and dtype != found[1]:
            raise TypeError(f"{name} must have dtype {found[1]} (the dtype of {found[0]}), got {dtype}")
        found = found or (name, dtype)
    return FLOAT_DTYPES[0] if found is None else found[1]


def min_ndim(name, a, ndim, what):
    if len(a.shape) < ndim:
        raise ValueError(f"{name} must be {what} (at least {ndim}-D), got shape {tuple(a.shape)}")


def param(name, a, shape, dtype):
    """An optional parameter or buffer: None, or an array of exactly `shape` and `dtype`."""
    if a is None or (type(a) is np.ndarray and a.shape == shape and a.dtype == dtype):
        return  # the common case, checked without building tuples
    if tuple(a.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(a.shape)}")
    if np.dtype(a.dtype) != dtype:
        raise TypeError(f"{name} must have dtype {dtype} (the dtype of x), got {np.dtype(a.dtype)}")


def eps(value):
    if type(value) is float and value > 0:  # the common case, without the ABC check
        return value
    if not isinstance(value, numbers.Real) or not value > 0:
        raise ValueError(f"eps must be a positive number, got {value!r}")
    return float(value)


def momentum(value):
    if type(value) is float and 0.0 <= value <= 1.0:  # the common case, without the ABC check
        return value
    if not isinstance(value, numbers.Real) or not 0.0 <= value <= 1.0:
        raise ValueError(f"momentum must be a number in [0, 1], got {value!r}")
    return float(value)


def running_pair(running_mean, running_var):
    if (running_mean is None) != (running_var is None):
        raise ValueError("running_mean and running_var must be given together (or both None)")


def num_groups(value, channels):
    if type(value) is int and value > 0 and channels % value == 0:  # the common case
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"num_groups must be an int, got {type(value).__name__}")
    if value <= 0 or channels % value != 0:
        raise ValueError(
            f"num_groups must be a positive divisor of the number of channels ({channels}), "
            f"got {value}"
        )
    return int(value)


def normalized_shape(value):
    if type(value) is tuple and len(value) == 1 and type(value[0]) is int and value[0] >= 0:
        return value  # the common case (a layer's own normalized_shape)
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        value = (value,)
    try:
        shape = tuple(int(d) for d in value)
    except TypeError:
        raise TypeError(f"normalized_shape must be an int or a tuple of ints, got {value!r}") from None
    if not shape or any(d < 0 for d in shape):
        raise ValueError(f"normalized_shape must be non-empty and non-negative, got {shape}")
    return shape


def grad_output(dy, shape, dtype):
    """dy given to a backward must match the forward's output."""
    if type(dy) is np.ndarray and dy.shape == shape and dy.dtype == dtype:
        return  # the common case, checked without building tuples
    if tuple(dy.shape) != tuple(shape):
        raise ValueError(f"dy must have shape {tuple(shape)} (the forward output's), got {tuple(dy.shape)}")
    if np.dtype(dy.dtype) != dtype:
        raise TypeError(f"dy must have dtype {dtype} (the forward output's), got {np.dtype(dy.dtype)}")


def positive_int(name, value):
    """A positive int (bools are refused)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {value}")
    return int(value)


def pair(name, value, minimum=1):
    """An int or a pair of ints -> (h, w), each >= minimum."""
    items = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
    if len(items) != 2:
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    for v in items:
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
        if v < minimum:
            raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return int(items[0]), int(items[1])


def ndim(name, a, ndims, what):
    """a must have one of the ranks in ndims."""
    if len(a.shape) not in ndims:
        want = " or ".join(f"{d}-D" for d in ndims)
        raise ValueError(f"{name} must be {want} {what}, got shape {tuple(a.shape)}")


def same_dtype(name, a, dtype, whose="x"):
    if np.dtype(a.dtype) != dtype:
        raise TypeError(f"{name} must have dtype {dtype} (the dtype of {whose}), got {np.dtype(a.dtype)}")


def real(name, value, low=None, high=None, low_open=False, high_open=False):
    """A real number (not a bool) within [low, high] (ends open when asked)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high or value != value:
        span = (("(" if low_open else "[") + f"{low if low is not None else '-inf'}, "
                f"{high if high is not None else 'inf'}" + (")" if high_open else "]"))
        raise ValueError(f"{name} must be in {span}, got {value!r}")
    return float(value)
