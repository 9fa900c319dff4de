"""CPU kernels for the optimizer updates (in place, on flat C-contiguous arrays of one shape).
The per-element rules are numbanorm/_pointwise.py (shared with the GPU backend)."""
from numba import njit, prange

from .._pointwise import sgd_at, adam_at
from ._parallel import STREAM_SERIAL_BELOW, serial



@njit(parallel=True, cache=True)
def _sgd(p, g, buf, lr, momentum, dampening, weight_decay, nesterov, first, serial):
    if serial:
        for i in range(p.size):
            sgd_at(i, p, g, buf, lr, momentum, dampening, weight_decay, nesterov, first)
    else:
        for i in prange(p.size):
            sgd_at(i, p, g, buf, lr, momentum, dampening, weight_decay, nesterov, first)


@njit(parallel=True, cache=True)
def _adam(p, g, m, v, vmax, lr, beta1, beta2, eps, weight_decay, bc1, bc2_sqrt, amsgrad, serial):
    if serial:
        for i in range(p.size):
            adam_at(i, p, g, m, v, vmax, lr, beta1, beta2, eps, weight_decay, bc1, bc2_sqrt, amsgrad)
    else:
        for i in prange(p.size):
            adam_at(i, p, g, m, v, vmax, lr, beta1, beta2, eps, weight_decay, bc1, bc2_sqrt, amsgrad)


def sgd_step(p, g, buf, lr, momentum, dampening, weight_decay, nesterov, first):
    """One torch.optim.SGD update of p with gradient g; buf the momentum buffer (unused when
    momentum == 0)."""
    _sgd(p.reshape(-1), g.reshape(-1), buf.reshape(-1), lr, momentum, dampening, weight_decay,
         nesterov, first, serial(p, STREAM_SERIAL_BELOW))


def adam_step(p, g, m, v, vmax, lr, beta1, beta2, eps, weight_decay, bc1, bc2_sqrt, amsgrad):
    """One torch.optim.Adam update of p; m, v (and vmax with amsgrad) the moment buffers."""
    _adam(p.reshape(-1), g.reshape(-1), m.reshape(-1), v.reshape(-1), vmax.reshape(-1), lr,
          beta1, beta2, eps, weight_decay, bc1, bc2_sqrt, amsgrad, serial(p, STREAM_SERIAL_BELOW))
