"""Element-wise ops of any shape: relu and dropout.

dropout's mask comes from a counter-based hash of (seed, element index): the same seed gives the
same mask on any thread count and on CPU and GPU (not the masks of PyTorch's generator).
"""
import numbers

from .. import _backend
from .. import _validate as check
from ._common import Saved, check_saved, grad_output


def relu(x):
    """y = max(x, 0) (NaN passes through). -> (y, saved)."""
    be, a = _backend.select(x=x)
    x = a["x"]
    dtype = check.float_array("x", x)
    y = be.elementwise.relu_forward(be.contiguous(x))
    return y, Saved(op="relu", backend=be, shape=tuple(y.shape), dtype=dtype, y=y)


def relu_backward(dy, saved):
    """dx = dy where the forward's output is > 0, else 0. saved is not changed."""
    check_saved(saved, "relu")
    be = saved.backend
    return be.elementwise.relu_backward(be.contiguous(grad_output(dy, saved)), saved.y)


def dropout(x, p=0.5, training=True, seed=0):
    """Training: zero each element with probability p and scale the rest by 1 / (1 - p);
    otherwise (or p == 0) y is x itself. seed: a non-negative int choosing the mask."""
    be, a = _backend.select(x=x)
    x = a["x"]
    dtype = check.float_array("x", x)
    p = check.real("p", p, 0.0, 1.0, high_open=True)
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed < 2**64:
        raise ValueError(f"seed must be an int in [0, 2**64), got {seed!r}")
    if not training or p == 0.0:
        return x, Saved(op="dropout", backend=be, shape=tuple(x.shape), dtype=dtype, mask=None, p=p)
    y, mask = be.elementwise.dropout_forward(be.contiguous(x), p, int(seed))
    return y, Saved(op="dropout", backend=be, shape=tuple(y.shape), dtype=dtype, mask=mask, p=p)


def dropout_backward(dy, saved):
    """dx = dy * mask / (1 - p) (dy itself when the forward was the identity). saved is not
    changed."""
    check_saved(saved, "dropout")
    be = saved.backend
    dy = grad_output(dy, saved)
    if saved.mask is None:
        return dy
    return be.elementwise.dropout_backward(be.contiguous(dy), saved.mask, saved.p)
