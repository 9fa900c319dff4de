"""Fully-connected layer: linear(x, weight, bias) = x @ weight.T + bias.

Shapes: x (*, F_in), weight (F_out, F_in), bias (F_out,) or None -> y (*, F_out); the kernels see
x as (M, F_in) with M = prod(leading dims).
"""
from .. import _backend
from .. import _validate as check
from ._common import Saved, check_saved, grad_output, prod


def linear(x, weight, bias=None):
    """y = x @ weight.T + bias. Returns (y, saved) for linear_backward."""
    be, a = _backend.select(x=x, weight=weight, bias=bias)
    x, weight, bias = a["x"], a["weight"], a["bias"]
    dtype = check.float_array("x", x)
    check.ndim("weight", weight, (2,), "(out_features, in_features)")
    check.same_dtype("weight", weight, dtype)
    F_out, F_in = (int(d) for d in weight.shape)
    shape = tuple(int(d) for d in x.shape)
    if len(shape) == 0 or shape[-1] != F_in:
        raise ValueError(f"x must have last dimension {F_in} (weight.shape[1], in_features), "
                         f"got shape {shape}")
    check.param("bias", bias, (F_out,), dtype)
    M = prod(shape[:-1])
    x2 = be.contiguous(x).reshape((M, F_in))
    y = be.linear.forward(x2, be.contiguous(weight), bias).reshape(shape[:-1] + (F_out,))
    saved = Saved(op="linear", backend=be, shape=tuple(y.shape), dtype=dtype, x=x2,
                  x_shape=shape, weight=weight, has_bias=bias is not None)
    return y, saved


def linear_backward(dy, saved, input_grad=True, weight_grad=True):
    """Gradients of linear: (dx, dweight, dbias); dy has the forward output's shape.
    input_grad / weight_grad False skip dx / (dweight, dbias) (returned as None). saved is not
    changed."""
    check_saved(saved, "linear")
    be = saved.backend
    dy = grad_output(dy, saved)
    M, F_out = int(saved.x.shape[0]), int(saved.weight.shape[0])
    dx, dweight, dbias = be.linear.backward(be.contiguous(dy).reshape((M, F_out)), saved.x,
                                            be.contiguous(saved.weight), bool(input_grad),
                                            bool(weight_grad))
    if not saved.has_bias:
        dbias = None
    return (None if dx is None else dx.reshape(saved.x_shape)), dweight, dbias
