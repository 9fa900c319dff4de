"""Parameter initialisation with PyTorch's default rules, from a seedable NumPy Generator.

Every layer constructor takes `rng=None`: None draws from this module's generator (seed it with
`numbanorm.nn.init.manual_seed(0)` for a reproducible run), an int seeds a fresh generator,
a np.random.Generator is used as is.
"""
import math

import numpy as np

_rng = np.random.default_rng()


def manual_seed(seed):
    """Reseed the module-level generator that layers use when given no rng."""
    global _rng
    _rng = np.random.default_rng(seed)
    return _rng


def get_rng(rng=None):
    """The np.random.Generator to draw from (see the module docstring)."""
    if rng is None:
        return _rng
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        return np.random.default_rng(int(rng))
    raise TypeError(f"rng must be None, an int seed or a numpy.random.Generator, got {type(rng).__name__}")


def uniform(shape, bound, dtype=np.float32, rng=None):
    """U(-bound, bound) of the given shape and dtype."""
    return get_rng(rng).uniform(-bound, bound, size=shape).astype(dtype)


def kaiming_uniform(shape, fan_in, a=math.sqrt(5), dtype=np.float32, rng=None):
    """torch.nn.init.kaiming_uniform_ (leaky_relu gain, fan_in mode): bound = gain*sqrt(3/fan_in)
    with gain = sqrt(2 / (1 + a^2)). PyTorch's default for Linear/Conv weights is a = sqrt(5),
    which gives bound = 1/sqrt(fan_in)."""
    gain = math.sqrt(2.0 / (1.0 + a * a))
    bound = gain * math.sqrt(3.0 / fan_in) if fan_in > 0 else 0.0
    return uniform(shape, bound, dtype, rng)


def bias_uniform(shape, fan_in, dtype=np.float32, rng=None):
    """PyTorch's default bias init for Linear/Conv: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
    return uniform(shape, bound, dtype, rng)
