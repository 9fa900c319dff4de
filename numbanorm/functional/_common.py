"""What every functional op shares: the one saved-state type and the checks a backward makes.

A forward returns (y, saved); saved is a `Saved` naming the op that made it (`saved.op`) and
holding what the matching backward needs. A backward validates dy against saved before it
computes anything, and never changes saved: a rejected call can be corrected and retried.
"""
import math

from .. import _backend
from .. import _validate as check


class Saved:
    """What a backward needs from its forward: `op` (the forward's name), `backend`, the output
    `shape` and `dtype`, plus op-specific fields given by keyword (arrays stay on the backend)."""

    op = backend = family = shape = dtype = x = mean = rstd = weight = None
    has_weight = has_bias = training = False
    param_shape = groups = channels_per_group = spatial = None

    def __init__(self, **fields):
        self.__dict__.update(fields)


def prod(dims):
    """The product of a shape's dims as a Python int (1 for an empty shape)."""
    return math.prod(int(d) for d in dims)


def check_saved(saved, *ops):
    """saved must come from one of the forwards named by ops."""
    if not isinstance(saved, Saved) or saved.op not in ops:
        made_by = saved.op if isinstance(saved, Saved) else type(saved).__name__
        raise TypeError(f"saved must be the second value returned by {' or '.join(ops)}, "
                        f"got one from {made_by}")


def grad_output(dy, saved):
    """dy as the forward's backend computes on it, checked against the forward's output."""
    be_dy, a = _backend.select(dy=dy)
    if be_dy is not saved.backend:
        raise ValueError(f"dy is on {be_dy.name} but the forward ran on {saved.backend.name}")
    check.grad_output(a["dy"], saved.shape, saved.dtype)
    return a["dy"]
