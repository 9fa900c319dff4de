"""CNN building blocks with PyTorch's names, defaults, initialisation and state_dict keys:
Conv2d, MaxPool2d, AvgPool2d, ReLU, Linear, Flatten, Dropout, Sequential, CrossEntropyLoss.

Each layer keeps what its backward needs from the last forward (one backward per forward).
The math lives in the backend kernels, numbanorm/cpu/layers.py and numbanorm/cuda/layers.py
(same function names and signatures), chosen by the input's device: the layer logic below is
written once for both.
"""
import importlib
import math
import numbers

import numpy as np

from .. import _backend
from . import init
from .module import Module, Parameter, float_dtype


def _kernels(device):
    """numbanorm.cpu.layers or numbanorm.cuda.layers (imported on first use)."""
    _backend.get(device)  # raises a clear error when CUDA is asked for but not usable
    return importlib.import_module(f"numbanorm.{device}.layers")


def _positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {value}")
    return int(value)


def _pair(name, value, minimum=1):
    """An int or a 2-tuple of ints -> (h, w), each >= minimum."""
    items = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
    if len(items) != 2:
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    out = []
    for v in items:
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
        if v < minimum:
            raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
        out.append(int(v))
    return tuple(out)


class _Layer(Module):
    """Shared plumbing: input checks, the backend kernels, the saved state for backward."""

    def __init__(self, device):
        super().__init__(device)
        object.__setattr__(self, "_saved", None)

    def _input(self, x, ndims=None, dtype=None, name="x"):
        """Check x (device, float dtype, ndim) and return (kernels, x as a contiguous array)."""
        dev = _backend.device_of(x)
        if dev is None:
            raise TypeError(f"{type(self).__name__}: {name} must be a numpy.ndarray or a CUDA array, "
                            f"got {type(x).__module__}.{type(x).__qualname__}")
        if dev != self.device and any(p is not None for p in self._parameters.values()):
            raise ValueError(f"{type(self).__name__} is on {self.device!r} but {name} is on {dev!r}; "
                             f"move one of them (module.to(device))")
        kernels = _kernels(dev)
        x = kernels.contiguous(x)
        xdtype = np.dtype(x.dtype)
        if xdtype not in (np.float32, np.float64):
            raise TypeError(f"{type(self).__name__}: {name} must have dtype float32 or float64, got {xdtype}")
        if dtype is not None and xdtype != dtype:
            raise TypeError(f"{type(self).__name__}: {name} must have dtype {dtype} (the layer's dtype), "
                            f"got {xdtype}")
        if ndims is not None and len(x.shape) not in ndims:
            want = " or ".join(f"{d}-D" for d in ndims)
            raise ValueError(f"{type(self).__name__}: {name} must be {want}, got shape {tuple(x.shape)}")
        return kernels, x

    def _save(self, **saved):
        object.__setattr__(self, "_saved", saved)

    def _take_saved(self, dy):
        saved = self._saved
        if saved is None:
            raise ValueError(f"{type(self).__name__}.backward called before forward (or twice for one forward)")
        object.__setattr__(self, "_saved", None)
        if tuple(dy.shape) != saved["y_shape"]:
            raise ValueError(f"{type(self).__name__}.backward: dy must have shape {saved['y_shape']} "
                             f"(the forward output's), got {tuple(dy.shape)}")
        return saved

    def _param(self, array):
        return Parameter(_backend.transfer(array, self.device))


# ---------------------------------------------------------------- Conv2d

class Conv2d(_Layer):
    """2-D convolution (cross-correlation, as PyTorch), groups=1, dilation=1, zero padding.

    x (N, C_in, H, W) -> y (N, C_out, OH, OW), OH = (H + 2*pad_h - KH) // stride_h + 1.
    weight (C_out, C_in, KH, KW) ~ kaiming_uniform(a=sqrt(5)); bias (C_out,) ~ U(+-1/sqrt(fan_in)),
    fan_in = C_in * KH * KW.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True,
                 dtype=np.float32, device="cpu", rng=None):
        super().__init__(device)
        self.in_channels = _positive_int("in_channels", in_channels)
        self.out_channels = _positive_int("out_channels", out_channels)
        self.kernel_size = _pair("kernel_size", kernel_size)
        self.stride = _pair("stride", stride)
        self.padding = _pair("padding", padding, minimum=0)
        self.dtype = dtype = float_dtype(dtype)
        rng = init.get_rng(rng)
        fan_in = self.in_channels * self.kernel_size[0] * self.kernel_size[1]
        shape = (self.out_channels, self.in_channels) + self.kernel_size
        self.weight = self._param(init.kaiming_uniform(shape, fan_in, dtype=dtype, rng=rng))
        self.bias = self._param(init.bias_uniform((self.out_channels,), fan_in, dtype, rng)) if bias else None

    def forward(self, x):
        kernels, x = self._input(x, (4,), self.dtype)
        N, C, H, W = (int(d) for d in x.shape)
        if C != self.in_channels:
            raise ValueError(f"Conv2d expected {self.in_channels} input channels (x.shape[1]), got {C}")
        (KH, KW), (ph, pw) = self.kernel_size, self.padding
        if H + 2 * ph < KH or W + 2 * pw < KW:
            raise ValueError(f"Conv2d: padded input ({H + 2 * ph}, {W + 2 * pw}) is smaller than "
                             f"kernel_size {self.kernel_size}")
        y, cols = kernels.conv2d_forward(x, self.weight.data,
                                         None if self.bias is None else self.bias.data,
                                         self.stride, self.padding)
        self._save(kernels=kernels, x_shape=tuple(x.shape), cols=cols, y_shape=tuple(y.shape))
        return y

    _takes_input_grad = True

    def backward(self, dy, input_grad=True):
        """dx (None when input_grad=False: skips the dcols gemm and col2im, e.g. for a first
        layer whose input is data); the weight and bias gradients are accumulated."""
        s = self._take_saved(dy)
        dy = s["kernels"].contiguous(dy)
        dx, dweight, dbias = s["kernels"].conv2d_backward(dy, s["x_shape"], s["cols"], self.weight.data,
                                                          self.stride, self.padding, input_grad)
        self._accumulate_grad(self.weight, dweight)
        if self.bias is not None:
            self._accumulate_grad(self.bias, dbias)
        return dx

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, bias={self.bias is not None}")


# ---------------------------------------------------------------- pooling

class _Pool2d(_Layer):
    def __init__(self, kernel_size, stride=None):
        super().__init__("cpu")
        self.kernel_size = _pool_size("kernel_size", kernel_size)
        self.stride = self.kernel_size if stride is None else _pool_size("stride", stride)

    def _check(self, x):
        kernels, x = self._input(x, (4,))
        H, W = int(x.shape[2]), int(x.shape[3])
        if H < self.kernel_size or W < self.kernel_size:
            raise ValueError(f"{type(self).__name__}: input plane ({H}, {W}) is smaller than "
                             f"kernel_size {self.kernel_size}")
        return kernels, x

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}"


def _pool_size(name, value):
    h, w = _pair(name, value)
    if h != w:
        raise ValueError(f"{name} must be square here (an int or (k, k)), got {value!r}")
    return h


class MaxPool2d(_Pool2d):
    """Max over k x k windows, no padding, floor mode. (N, C, H, W) -> (N, C, OH, OW),
    OH = (H - k) // stride + 1. The gradient goes to the first maximum of each window."""

    def forward(self, x):
        kernels, x = self._check(x)
        y, idx = kernels.max_pool2d_forward(x, self.kernel_size, self.stride)
        self._save(kernels=kernels, idx=idx, x_shape=tuple(x.shape), y_shape=tuple(y.shape))
        return y

    def backward(self, dy):
        s = self._take_saved(dy)
        return s["kernels"].max_pool2d_backward(s["kernels"].contiguous(dy), s["idx"], s["x_shape"],
                                                self.kernel_size, self.stride)


class AvgPool2d(_Pool2d):
    """Mean over k x k windows, no padding, floor mode (PyTorch defaults)."""

    def forward(self, x):
        kernels, x = self._check(x)
        y = kernels.avg_pool2d_forward(x, self.kernel_size, self.stride)
        self._save(kernels=kernels, x_shape=tuple(x.shape), y_shape=tuple(y.shape))
        return y

    def backward(self, dy):
        s = self._take_saved(dy)
        return s["kernels"].avg_pool2d_backward(s["kernels"].contiguous(dy), s["x_shape"],
                                                self.kernel_size, self.stride)


# ---------------------------------------------------------------- elementwise

class ReLU(_Layer):
    """y = max(x, 0), any shape. backward: dx = dy where y > 0."""

    def __init__(self):
        super().__init__("cpu")

    def forward(self, x):
        kernels, x = self._input(x)
        y = kernels.relu_forward(x)
        self._save(kernels=kernels, y=y, y_shape=tuple(y.shape))
        return y

    def backward(self, dy):
        s = self._take_saved(dy)
        return s["kernels"].relu_backward(s["kernels"].contiguous(dy), s["y"])


class Dropout(_Layer):
    """Training: zero each element with probability p, scale the rest by 1/(1-p); eval: identity.

    The mask comes from a counter-based hash of (seed, element index), the seed drawn from `rng`
    each forward, so a seeded run gives the same masks on any thread count and on CPU and GPU
    (not the same masks as PyTorch's generator).
    """

    def __init__(self, p=0.5, rng=None):
        super().__init__("cpu")
        if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0.0 <= p < 1.0:
            raise ValueError(f"Dropout probability p must be in [0, 1), got {p!r}")
        self.p = float(p)
        object.__setattr__(self, "_rng", init.get_rng(rng))

    def forward(self, x):
        kernels, x = self._input(x)
        if not self.training or self.p == 0.0:
            self._save(kernels=kernels, mask=None, y_shape=tuple(x.shape))
            return x
        seed = int(self._rng.integers(0, 2**63))
        y, mask = kernels.dropout_forward(x, self.p, seed)
        self._save(kernels=kernels, mask=mask, y_shape=tuple(y.shape))
        return y

    def backward(self, dy):
        s = self._take_saved(dy)
        if s["mask"] is None:
            return dy
        return s["kernels"].dropout_backward(s["kernels"].contiguous(dy), s["mask"], self.p)

    def extra_repr(self):
        return f"p={self.p}"


class Flatten(_Layer):
    """(N, d1, d2, ...) -> (N, d1 * d2 * ...) (start_dim=1, end_dim=-1 as PyTorch's default)."""

    def __init__(self, start_dim=1, end_dim=-1):
        super().__init__("cpu")
        self.start_dim, self.end_dim = int(start_dim), int(end_dim)

    def forward(self, x):
        kernels, x = self._input(x)
        xs = tuple(int(d) for d in x.shape)
        nd = len(xs)
        s = self.start_dim + nd if self.start_dim < 0 else self.start_dim
        e = self.end_dim + nd if self.end_dim < 0 else self.end_dim
        if nd == 0 or not 0 <= s <= e < nd:
            raise ValueError(f"Flatten(start_dim={self.start_dim}, end_dim={self.end_dim}) does not fit "
                             f"x of shape {xs}")
        shape = xs[:s] + (math.prod(xs[s:e + 1]),) + xs[e + 1:]
        y = x.reshape(shape)
        self._save(kernels=kernels, x_shape=tuple(x.shape), y_shape=tuple(y.shape))
        return y

    def backward(self, dy):
        s = self._take_saved(dy)
        return s["kernels"].contiguous(dy).reshape(s["x_shape"])


# ---------------------------------------------------------------- Linear

class Linear(_Layer):
    """y = x @ weight.T + bias; x (*, in_features) -> (*, out_features).
    weight (out, in) ~ kaiming_uniform(a=sqrt(5)); bias (out,) ~ U(+-1/sqrt(in_features))."""

    def __init__(self, in_features, out_features, bias=True, dtype=np.float32, device="cpu", rng=None):
        super().__init__(device)
        self.in_features = _positive_int("in_features", in_features)
        self.out_features = _positive_int("out_features", out_features)
        self.dtype = dtype = float_dtype(dtype)
        rng = init.get_rng(rng)
        fan_in = self.in_features
        self.weight = self._param(init.kaiming_uniform((self.out_features, fan_in), fan_in, dtype=dtype, rng=rng))
        self.bias = self._param(init.bias_uniform((self.out_features,), fan_in, dtype, rng)) if bias else None

    def forward(self, x):
        kernels, x = self._input(x, None, self.dtype)
        shape = tuple(int(d) for d in x.shape)
        if len(shape) == 0 or shape[-1] != self.in_features:
            raise ValueError(f"Linear expected x with last dimension {self.in_features} (in_features), "
                             f"got shape {shape}")
        lead = shape[:-1]
        x2 = x.reshape((math.prod(int(d) for d in lead), self.in_features))
        y = kernels.linear_forward(x2, self.weight.data, None if self.bias is None else self.bias.data)
        y = y.reshape(lead + (self.out_features,))
        self._save(kernels=kernels, x2=x2, x_shape=tuple(x.shape), y_shape=tuple(y.shape))
        return y

    _takes_input_grad = True

    def backward(self, dy, input_grad=True):
        """dx (None when input_grad=False); the weight and bias gradients are accumulated."""
        s = self._take_saved(dy)
        dy2 = s["kernels"].contiguous(dy).reshape((int(s["x2"].shape[0]), self.out_features))
        dx, dweight, dbias = s["kernels"].linear_backward(dy2, s["x2"], self.weight.data, input_grad)
        self._accumulate_grad(self.weight, dweight)
        if self.bias is not None:
            self._accumulate_grad(self.bias, dbias)
        return None if dx is None else dx.reshape(s["x_shape"])

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


# ---------------------------------------------------------------- Sequential

class Sequential(Module):
    """Runs its layers in order; backward runs them in reverse. Children are named "0", "1", ...
    so state_dict keys match PyTorch's ("0.weight", "1.running_mean", ...)."""

    def __init__(self, *layers):
        devices = set()
        for i, layer in enumerate(layers):
            if not isinstance(layer, Module):
                raise TypeError(f"Sequential: layer {i} must be a numbanorm.nn.Module, got {type(layer).__name__}")
            if layer._parameters or layer._buffers:
                devices.add(layer.device)
        if len(devices) > 1:
            raise ValueError(f"Sequential: layers are on different devices {sorted(devices)}; use .to(device)")
        super().__init__(devices.pop() if devices else "cpu")
        for i, layer in enumerate(layers):
            layer.to(self.device)
            setattr(self, str(i), layer)

    def __len__(self):
        return len(self._modules)

    def __getitem__(self, i):
        return list(self._modules.values())[i]

    def __iter__(self):
        return iter(self._modules.values())

    def forward(self, x):
        for layer in self._modules.values():
            x = layer.forward(x)
        return x

    _takes_input_grad = True

    def backward(self, dy, input_grad=True):
        """Backward through every layer in reverse; returns dx. input_grad=False (the input is
        data, as in a training loop) lets a first Conv2d/Linear skip computing dx; then the
        result may be None."""
        layers = list(self._modules.values())
        for i in range(len(layers) - 1, -1, -1):
            layer = layers[i]
            if i == 0 and not input_grad and getattr(layer, "_takes_input_grad", False):
                dy = layer.backward(dy, input_grad=False)
            else:
                dy = layer.backward(dy)
        return dy

    def __repr__(self):
        inner = "".join(f"\n  ({k}): {m!r}" for k, m in self._modules.items())
        return f"Sequential({inner}\n)"


# ---------------------------------------------------------------- CrossEntropyLoss

class CrossEntropyLoss(Module):
    """Softmax + negative log-likelihood of integer class labels (log-sum-exp, max-shifted).

    loss = crit.forward(logits (N, K), labels (N,) ints in [0, K)) -> Python float, the mean
    (reduction="mean") or sum over the batch; crit.backward(dloss=1.0) -> dlogits (N, K) =
    (softmax(logits) - onehot(labels)) * dloss / N (or * dloss for "sum").
    Labels may be a NumPy array when logits are on the GPU (copied over).
    """

    def __init__(self, reduction="mean"):
        super().__init__("cpu")
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
        self.reduction = reduction
        object.__setattr__(self, "_saved", None)

    def __call__(self, logits, labels):
        return self.forward(logits, labels)

    def forward(self, logits, labels):
        dev = _backend.device_of(logits)
        if dev is None:
            raise TypeError(f"CrossEntropyLoss: logits must be a numpy.ndarray or a CUDA array, "
                            f"got {type(logits).__name__}")
        kernels = _kernels(dev)
        logits = kernels.contiguous(logits)
        if np.dtype(logits.dtype) not in (np.float32, np.float64):
            raise TypeError(f"CrossEntropyLoss: logits must have dtype float32 or float64, got {logits.dtype}")
        if len(logits.shape) != 2 or int(logits.shape[1]) == 0:
            raise ValueError(f"CrossEntropyLoss: logits must be 2-D (N, K) with K > 0, got shape "
                             f"{tuple(logits.shape)}")
        N, K = int(logits.shape[0]), int(logits.shape[1])
        if _backend.device_of(labels) is None:
            labels = np.asarray(labels)
        if not np.issubdtype(np.dtype(labels.dtype), np.integer):
            raise TypeError(f"CrossEntropyLoss: labels must be integers, got dtype {labels.dtype}")
        if tuple(labels.shape) != (N,):
            raise ValueError(f"CrossEntropyLoss: labels must have shape ({N},) to match logits, "
                             f"got {tuple(labels.shape)}")
        if N == 0:
            raise ValueError("CrossEntropyLoss: empty batch (N = 0)")
        labels = kernels.labels(labels)
        total, probs, bad = kernels.cross_entropy_forward(logits, labels)
        if bad:
            raise ValueError(f"CrossEntropyLoss: {bad} labels are outside [0, {K}) (K = logits.shape[1])")
        object.__setattr__(self, "_saved", (kernels, probs, labels))
        return total / N if self.reduction == "mean" else total

    def backward(self, dloss=1.0):
        if self._saved is None:
            raise ValueError("CrossEntropyLoss.backward called before forward (or twice for one forward)")
        kernels, probs, labels = self._saved
        object.__setattr__(self, "_saved", None)
        scale = float(dloss) / (int(probs.shape[0]) if self.reduction == "mean" else 1)
        return kernels.cross_entropy_backward(probs, labels, scale)

    def extra_repr(self):
        return f"reduction={self.reduction!r}"
