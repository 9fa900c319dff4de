"""Optimizer updates as in-place ops on one parameter (torch.optim's rules); numbanorm.optim's
SGD and Adam call these for every parameter.

All arrays (param, grad and the state buffers) have one shape and dtype and live on one backend.
"""
from .. import _backend
from .. import _validate as check


def _arrays(**arrays):
    be, a = _backend.select(**arrays)
    p = a["param"]
    dtype = check.float_array("param", p)
    for name, arr in a.items():
        if name == "param" or arr is None:
            continue
        if tuple(arr.shape) != tuple(p.shape):
            raise ValueError(f"{name} must have the parameter's shape {tuple(p.shape)}, got {tuple(arr.shape)}")
        check.same_dtype(name, arr, dtype, "param")
        if not be.is_contiguous(arr):
            raise ValueError(f"{name} must be C-contiguous (it is updated in place)")
    if not be.is_contiguous(p):
        raise ValueError("param must be C-contiguous (it is updated in place)")
    return be, a


def sgd_step(param, grad, momentum_buffer, lr, momentum=0.0, dampening=0.0, weight_decay=0.0,
             nesterov=False, first=False):
    """One torch.optim.SGD update of param, in place: d = grad + weight_decay * param; with
    momentum, buf = d on the first step (first=True) else momentum*buf + (1-dampening)*d, and
    d = d + momentum*buf (nesterov) or buf; param -= lr * d. momentum_buffer is written (it may
    be None when momentum == 0)."""
    be, a = _arrays(param=param, grad=grad, momentum_buffer=momentum_buffer)
    if momentum != 0.0 and a["momentum_buffer"] is None:
        raise ValueError("momentum_buffer is required when momentum != 0")
    buf = a["momentum_buffer"] if a["momentum_buffer"] is not None else a["param"]
    be.optim.sgd_step(a["param"], a["grad"], buf, float(lr), float(momentum), float(dampening),
                      float(weight_decay), bool(nesterov), bool(first))


def adam_step(param, grad, exp_avg, exp_avg_sq, step, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8,
              weight_decay=0.0, max_exp_avg_sq=None):
    """One torch.optim.Adam update of param, in place; step is the 1-based count after this
    update. exp_avg / exp_avg_sq (and max_exp_avg_sq, which turns on amsgrad) are written."""
    be, a = _arrays(param=param, grad=grad, exp_avg=exp_avg, exp_avg_sq=exp_avg_sq,
                    max_exp_avg_sq=max_exp_avg_sq)
    amsgrad = a["max_exp_avg_sq"] is not None
    vmax = a["max_exp_avg_sq"] if amsgrad else a["exp_avg_sq"]
    bc1 = 1.0 - beta1 ** step
    bc2_sqrt = (1.0 - beta2 ** step) ** 0.5
    be.optim.adam_step(a["param"], a["grad"], a["exp_avg"], a["exp_avg_sq"], vmax, float(lr),
                       float(beta1), float(beta2), float(eps), float(weight_decay), bc1, bc2_sqrt,
                       amsgrad)
