"""The layer protocol: Parameter, Module (parameters, buffers, children, state dicts, devices).

A layer implements forward(x) -> y and backward(dy) -> dx; backward adds the parameter
gradients into each Parameter's .grad (None until the first backward, like PyTorch).
"""
from collections import OrderedDict

import numpy as np

from .. import _backend
from .. import _validate as check


class Parameter:
    """A trainable array (.data) and its gradient (.grad, None until a backward sets it).

    requires_grad=False freezes it: backward leaves .grad None (and layers skip computing a
    gradient nobody needs), optimizers skip it.
    """

    __slots__ = ("data", "grad", "requires_grad")

    def __init__(self, data, requires_grad=True):
        self.data = data
        self.grad = None
        self.requires_grad = bool(requires_grad)

    def __repr__(self):
        frozen = "" if self.requires_grad else ", requires_grad=False"
        return f"Parameter(shape={tuple(self.data.shape)}, dtype={self.data.dtype}{frozen})"


def float_dtype(dtype, half=False):
    """dtype as a NumPy dtype: float32 or float64, or float16 (and bfloat16 with ml_dtypes) too
    when half (the norm layers)."""
    dtype = np.dtype(dtype)
    allowed = check.NORM_DTYPES if half else check.FLOAT_DTYPES
    if dtype not in allowed:
        names = [str(d) for d in allowed]
        raise TypeError(f"dtype must be {', '.join(names[:-1])} or {names[-1]}, got {dtype}")
    return dtype


# Buffers that stay NumPy on every device: a step counter read and incremented on the host.
HOST_BUFFERS = ("num_batches_tracked",)


class Module:
    """Base class: registers Parameter and Module attributes, and buffers via register_buffer."""

    def __init__(self, device="cpu"):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)
        object.__setattr__(self, "device", _check_device(device))

    def __setattr__(self, name, value):
        if name in self._buffers:
            self._buffers[name] = value
        elif isinstance(value, Parameter) or (value is None and name in ("weight", "bias")):
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        object.__setattr__(self, name, value)

    def register_buffer(self, name, value):
        """A persistent array that is not trained (e.g. running_mean); it goes in state_dict."""
        object.__setattr__(self, name, value)
        self._buffers[name] = value

    def _set_buffer(self, name, value):
        object.__setattr__(self, name, value)
        self._buffers[name] = value

    # -- forward / backward -------------------------------------------------------------
    def __call__(self, x, *args, **kwargs):
        return self.forward(x, *args, **kwargs)

    def forward(self, x):
        raise NotImplementedError

    def backward(self, dy):
        raise NotImplementedError

    def _accumulate_grad(self, param, grad):
        if grad is None or not param.requires_grad:
            return
        if param.grad is None:
            param.grad = grad
        else:
            _backend.get(self.device).add_(param.grad, grad)

    def _accumulate_grads(self, weight, dweight, bias, dbias):
        """_accumulate_grad of weight and bias; on the CPU in one compiled call (cpu.add_pair_)."""
        gw, gb = weight.grad, bias.grad
        if (type(gw) is np.ndarray and type(gb) is np.ndarray and weight.requires_grad
                and bias.requires_grad):
            _backend.get("cpu").add_pair_(gw, dweight, gb, dbias)
        else:
            self._accumulate_grad(weight, dweight)
            self._accumulate_grad(bias, dbias)

    # -- modes ----------------------------------------------------------------------------
    def train(self, mode=True):
        object.__setattr__(self, "training", bool(mode))
        for m in self._modules.values():
            m.train(mode)
        return self

    def eval(self):
        return self.train(False)

    # -- parameters ------------------------------------------------------------------------
    def named_parameters(self, prefix=""):
        for name, p in self._parameters.items():
            if p is not None:
                yield prefix + name, p
        for name, m in self._modules.items():
            yield from m.named_parameters(prefix + name + ".")

    def parameters(self):
        """The trainable Parameters (objects with .data and .grad), children included."""
        return [p for _, p in self.named_parameters()]

    def requires_grad_(self, requires_grad=True):
        """Set requires_grad on every parameter (children included); returns self."""
        for p in self.parameters():
            p.requires_grad = bool(requires_grad)
        return self

    def named_modules(self, prefix=""):
        """(name, module) for this module ("" for itself) and every descendant."""
        yield prefix.rstrip("."), self
        for name, m in self._modules.items():
            yield from m.named_modules(prefix + name + ".")

    def zero_grad(self):
        """Drop the stored gradients (set to None, PyTorch's default)."""
        for p in self.parameters():
            p.grad = None

    # -- state dicts ---------------------------------------------------------------------------
    def _state_items(self, prefix=""):
        for name, p in self._parameters.items():
            if p is not None:
                yield prefix + name, self, name, True
        for name, b in self._buffers.items():
            if b is not None:
                yield prefix + name, self, name, False
        for name, m in self._modules.items():
            yield from m._state_items(prefix + name + ".")

    def state_dict(self):
        """An OrderedDict of NumPy copies of parameters and buffers, under PyTorch's key names."""
        out = OrderedDict()
        for key, owner, name, is_param in self._state_items():
            value = owner._parameters[name].data if is_param else owner._buffers[name]
            out[key] = np.array(_backend.transfer(value, "cpu"), copy=True)
        return out

    def load_state_dict(self, state_dict, strict=True):
        """Copy arrays (NumPy, or anything np.asarray accepts, e.g. CPU torch tensors) into the
        parameters and buffers. Everything is checked before anything is written.

        strict: unexpected or missing keys are an error (a missing num_batches_tracked, absent
        from old PyTorch checkpoints, is allowed). Returns (missing_keys, unexpected_keys).
        """
        items = list(self._state_items())
        expected = {key for key, *_ in items}
        # keys a module accepts and drops (FrozenBatchNorm2d: a BatchNorm's num_batches_tracked)
        ignored = {(name + "." if name else "") + key for name, m in self.named_modules()
                   for key in getattr(m, "_ignored_state_keys", ())}
        unexpected = [k for k in state_dict if k not in expected and k not in ignored]
        missing = [k for k in expected if k not in state_dict]
        required_missing = [k for k in missing if not k.endswith("num_batches_tracked")]
        if strict and (unexpected or required_missing):
            raise ValueError(f"load_state_dict: missing keys {required_missing}, unexpected keys {unexpected}")
        staged = []
        for key, owner, name, is_param in items:
            if key not in state_dict:
                continue
            current = owner._parameters[name].data if is_param else owner._buffers[name]
            value = np.asarray(_backend.transfer(state_dict[key], "cpu")
                               if hasattr(state_dict[key], "copy_to_host") else state_dict[key])
            if tuple(value.shape) != tuple(current.shape):
                raise ValueError(
                    f"load_state_dict: {key} must have shape {tuple(current.shape)}, got {tuple(value.shape)}"
                )
            if not (np.issubdtype(value.dtype, np.number) or value.dtype == bool):
                raise TypeError(f"load_state_dict: {key} must be numeric, got dtype {value.dtype}")
            staged.append((owner, name, is_param, value.astype(current.dtype)))
        for owner, name, is_param, value in staged:
            new = value if name in HOST_BUFFERS else _backend.transfer(value, owner.device)
            if is_param:
                owner._parameters[name].data = new
            else:
                owner._set_buffer(name, new)
        return missing, unexpected

    # -- devices ---------------------------------------------------------------------------
    def to(self, device):
        """Move parameters, gradients and buffers to 'cpu' or 'cuda' (in place); returns self."""
        device = _check_device(device)
        for p in self._parameters.values():
            if p is not None:
                p.data = _backend.transfer(p.data, device)
                if p.grad is not None:
                    p.grad = _backend.transfer(p.grad, device)
        for name, b in list(self._buffers.items()):
            if b is not None and name not in HOST_BUFFERS:
                self._set_buffer(name, _backend.transfer(b, device))
        object.__setattr__(self, "device", device)
        for m in self._modules.values():
            m.to(device)
        return self

    def __repr__(self):
        return f"{type(self).__name__}({self.extra_repr()})"

    def extra_repr(self):
        return ""


def _check_device(device):
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    if device == "cuda":
        _backend.get("cuda")  # fails clearly when CUDA is not usable
    return device


class OpModule(Module):
    """A layer that wraps a functional op: forward keeps the op's `saved`, backward hands it to
    the op's backward. The functional backward checks dy before anything changes, and the saved
    state is released only after it succeeds: a rejected backward can be retried with a
    corrected dy. One backward per forward."""

    def __init__(self, device="cpu"):
        super().__init__(device)
        object.__setattr__(self, "_saved", None)

    def _check_input(self, x, ndims=None, dtype=None, name="x"):
        """x must be an array on this layer's device (when it has parameters), of one of the
        ranks in ndims and of dtype (when given). Raises before anything is computed."""
        dev = _backend.device_of(x)
        if dev is None:
            raise TypeError(f"{type(self).__name__}: {name} must be a numpy.ndarray or a CUDA array, "
                            f"got {type(x).__module__}.{type(x).__qualname__}")
        if dev != self.device and any(p is not None for p in self._parameters.values()):
            raise ValueError(f"{type(self).__name__} is on {self.device!r} but {name} is on {dev!r}; "
                             f"move one of them (module.to(device))")
        if ndims is not None and len(x.shape) not in ndims:
            want = " or ".join(f"{d}-D" for d in ndims)
            raise ValueError(f"{type(self).__name__}: {name} must be {want}, got shape {tuple(x.shape)}")
        if dtype is not None and np.dtype(x.dtype) != dtype:
            raise TypeError(f"{type(self).__name__}: {name} must have dtype {dtype} (the layer's dtype), "
                            f"got {np.dtype(x.dtype)}")

    def _param(self, host_array):
        """A Parameter holding host_array, moved to this layer's device."""
        return Parameter(_backend.transfer(host_array, self.device))

    def _keep(self, saved):
        object.__setattr__(self, "_saved", saved)

    def _pending(self):
        """The saved state of the last forward (not released: see _release)."""
        if self._saved is None:
            raise ValueError(f"{type(self).__name__}.backward called before forward (or twice for one forward)")
        return self._saved

    def _release(self):
        object.__setattr__(self, "_saved", None)


def wants_grad(param):
    """Whether a backward should compute the gradient of param (None: no parameter)."""
    return param is not None and param.requires_grad
