"""Linear and Flatten: PyTorch's constructor arguments, defaults, initialisation and state_dict
keys; the math is numbanorm.functional.linear."""
import math

import numpy as np

from .. import _validate as check
from .. import functional as F
from . import init
from .module import OpModule, float_dtype, wants_grad


class Linear(OpModule):
    """y = x @ weight.T + bias; x (*, in_features) -> (*, out_features).
    weight (out, in) ~ kaiming_uniform(a=sqrt(5)); bias (out,) ~ U(+-1/sqrt(in_features))."""

    def __init__(self, in_features, out_features, bias=True, device="cpu", dtype=np.float32, rng=None):
        super().__init__(device)
        self.in_features = check.positive_int("in_features", in_features)
        self.out_features = check.positive_int("out_features", out_features)
        self.dtype = dtype = float_dtype(dtype)
        rng = init.get_rng(rng)
        fan_in = self.in_features
        self.weight = self._param(init.kaiming_uniform((self.out_features, fan_in), fan_in, dtype=dtype, rng=rng))
        self.bias = self._param(init.bias_uniform((self.out_features,), fan_in, dtype, rng)) if bias else None

    def forward(self, x):
        self._check_input(x, None, self.dtype)
        if len(x.shape) == 0 or tuple(x.shape)[-1] != self.in_features:
            raise ValueError(f"Linear expected x with last dimension {self.in_features} (in_features), "
                             f"got shape {tuple(x.shape)}")
        y, saved = F.linear(x, self.weight.data, None if self.bias is None else self.bias.data)
        self._keep(saved)
        return y

    _takes_input_grad = True

    def backward(self, dy, input_grad=True):
        """dx (None when input_grad=False); the weight and bias gradients are accumulated."""
        dx, dweight, dbias = F.linear_backward(dy, self._pending(), input_grad,
                                               wants_grad(self.weight) or wants_grad(self.bias))
        self._release()
        if wants_grad(self.weight):
            self._accumulate_grad(self.weight, dweight)
        if wants_grad(self.bias):
            self._accumulate_grad(self.bias, dbias)
        return dx

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Flatten(OpModule):
    """(N, d1, d2, ...) -> (N, d1 * d2 * ...) (start_dim=1, end_dim=-1 as PyTorch's default).
    A view: no data is copied."""

    def __init__(self, start_dim=1, end_dim=-1):
        super().__init__("cpu")
        self.start_dim, self.end_dim = int(start_dim), int(end_dim)

    def forward(self, x):
        self._check_input(x)
        xs = tuple(int(d) for d in x.shape)
        nd = len(xs)
        s = self.start_dim + nd if self.start_dim < 0 else self.start_dim
        e = self.end_dim + nd if self.end_dim < 0 else self.end_dim
        if nd == 0 or not 0 <= s <= e < nd:
            raise ValueError(f"Flatten(start_dim={self.start_dim}, end_dim={self.end_dim}) does not fit "
                             f"x of shape {xs}")
        y = x.reshape(xs[:s] + (math.prod(xs[s:e + 1]),) + xs[e + 1:])
        self._keep(F.Saved(op="flatten", shape=tuple(int(d) for d in y.shape), x_shape=xs))
        return y

    def backward(self, dy):
        saved = self._pending()
        self._check_input(dy, name="dy")
        if tuple(dy.shape) != saved.shape:
            raise ValueError(f"Flatten.backward: dy must have shape {saved.shape} (the forward output's), "
                             f"got {tuple(dy.shape)}")
        self._release()
        return dy.reshape(saved.x_shape)

    def extra_repr(self):
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"
