"""Optimizers with torch.optim's update rules: SGD (momentum, dampening, Nesterov, weight decay)
and Adam (L2 weight decay added to the gradient, optional amsgrad).

    opt = SGD(model.parameters(), lr=0.1, momentum=0.9)
    opt.zero_grad(); model.backward(crit.backward()); opt.step()

Each update is numbanorm.functional.sgd_step / adam_step on one parameter (one kernel on the
parameter's device, CPU or GPU); state buffers live beside the parameter. A parameter whose
.grad is None, or that does not require grad, is skipped, as in PyTorch.
"""
import numbers

import numpy as np

from . import _backend
from . import functional as F
from .nn.module import Parameter


def _hyper(name, value, low=0.0, high=None, closed_high=False):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    ok = value >= low and (high is None or (value <= high if closed_high else value < high))
    if not ok:
        span = f"[{low}, {high}{']' if closed_high else ')'}" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be in {span}, got {value!r}")
    return float(value)


class Optimizer:
    """Holds the parameter list, the hyper-parameters (self.defaults) and per-parameter state."""

    def __init__(self, params, defaults):
        params = list(params)
        if not params:
            raise ValueError("optimizer got an empty parameter list")
        for i, p in enumerate(params):
            if not isinstance(p, Parameter):
                raise TypeError(f"params[{i}] must be a numbanorm.nn.Parameter, got {type(p).__name__}")
        self.params = params
        self.defaults = dict(defaults)
        self.state = {}  # index in self.params -> dict of buffers / counters

    def __getattr__(self, name):  # opt.lr etc. read the hyper-parameters
        defaults = self.__dict__.get("defaults", {})
        if name in defaults:
            return defaults[name]
        raise AttributeError(name)

    def zero_grad(self):
        """Drop the gradients (set to None, PyTorch's default set_to_none=True)."""
        for p in self.params:
            p.grad = None

    def _live(self):
        """(index, parameter) for every parameter with a gradient, all checked first."""
        live = []
        for i, p in enumerate(self.params):
            if p.grad is None or not p.requires_grad:
                continue
            if _backend.device_of(p.grad) != _backend.device_of(p.data):
                raise ValueError(f"params[{i}]: gradient and parameter are on different devices")
            if tuple(p.grad.shape) != tuple(p.data.shape):
                raise ValueError(f"params[{i}]: grad shape {tuple(p.grad.shape)} != parameter shape "
                                 f"{tuple(p.data.shape)}")
            live.append((i, p))
        return live

    @staticmethod
    def _zeros_like(p):
        return _backend.get(_backend.device_of(p.data)).full(tuple(p.data.shape), 0.0, p.data.dtype)

    def state_dict(self):
        """{"state": {index: {name: NumPy copy or number}}, "param_groups": [hyper-params + "params"]}
        (PyTorch's layout, one parameter group)."""
        state = {i: {k: (np.array(_backend.transfer(v, "cpu"), copy=True) if hasattr(v, "shape") and v.shape != () else v)
                     for k, v in s.items()} for i, s in self.state.items()}
        group = dict(self.defaults, params=list(range(len(self.params))))
        return {"state": state, "param_groups": [group]}

    def load_state_dict(self, state_dict):
        groups = state_dict["param_groups"]
        if len(groups) != 1 or len(groups[0]["params"]) != len(self.params):
            raise ValueError(f"load_state_dict: expected one param group of {len(self.params)} parameters")
        new_state = {}
        for i, s in state_dict["state"].items():
            i = int(i)
            p = self.params[i]
            dev = _backend.device_of(p.data)
            entry = {}
            for k, v in s.items():
                if hasattr(v, "shape") and tuple(v.shape) == tuple(p.data.shape):
                    v = _backend.transfer(np.ascontiguousarray(np.asarray(_backend.transfer(v, "cpu")), dtype=p.data.dtype), dev)
                elif hasattr(v, "shape"):
                    v = float(np.asarray(v))  # e.g. a 0-d tensor 'step'
                entry[k] = v
            new_state[i] = entry
        self.defaults.update({k: v for k, v in groups[0].items() if k != "params"})
        self.state = new_state


class SGD(Optimizer):
    """torch.optim.SGD: g = grad + weight_decay * p; with momentum, buf = g on the first step,
    then buf = momentum * buf + (1 - dampening) * g, and g = g + momentum * buf (nesterov) or buf;
    p -= lr * g."""

    def __init__(self, params, lr, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False):
        defaults = dict(lr=_hyper("lr", lr), momentum=_hyper("momentum", momentum),
                        dampening=_hyper("dampening", dampening),
                        weight_decay=_hyper("weight_decay", weight_decay), nesterov=bool(nesterov))
        if nesterov and (defaults["momentum"] <= 0 or defaults["dampening"] != 0):
            raise ValueError("Nesterov momentum requires a momentum > 0 and zero dampening")
        super().__init__(params, defaults)

    def step(self):
        d = self.defaults
        for i, p in self._live():
            st = self.state.setdefault(i, {})
            first = "momentum_buffer" not in st
            if d["momentum"] != 0 and first:
                st["momentum_buffer"] = self._zeros_like(p)
            F.sgd_step(p.data, p.grad, st.get("momentum_buffer"), d["lr"], d["momentum"],
                       d["dampening"], d["weight_decay"], d["nesterov"], first)


class Adam(Optimizer):
    """torch.optim.Adam: g = grad + weight_decay * p; m = b1*m + (1-b1)*g; v = b2*v + (1-b2)*g^2;
    with amsgrad vmax = max(vmax, v) replaces v below;
    p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False):
        b1, b2 = betas
        defaults = dict(lr=_hyper("lr", lr), betas=(_hyper("betas[0]", b1, 0.0, 1.0), _hyper("betas[1]", b2, 0.0, 1.0)),
                        eps=_hyper("eps", eps), weight_decay=_hyper("weight_decay", weight_decay),
                        amsgrad=bool(amsgrad))
        super().__init__(params, defaults)

    def step(self):
        d = self.defaults
        b1, b2 = d["betas"]
        for i, p in self._live():
            st = self.state.get(i)
            if st is None:
                st = self.state[i] = {"step": 0.0, "exp_avg": self._zeros_like(p),
                                      "exp_avg_sq": self._zeros_like(p)}
                if d["amsgrad"]:
                    st["max_exp_avg_sq"] = self._zeros_like(p)
            st["step"] += 1.0
            F.adam_step(p.data, p.grad, st["exp_avg"], st["exp_avg_sq"], st["step"], d["lr"], b1,
                        b2, d["eps"], d["weight_decay"], st.get("max_exp_avg_sq"))
