"""GPU kernels for the optimizer updates (in place, flat device arrays of one shape). The
per-element rules are numbanorm/_pointwise.py (shared with the CPU backend)."""
from numba import cuda

from .._pointwise import adam_at, sgd_at
from ._common import flat, float_signatures, launch_1d, size

KERNEL_SIGNATURES = {}  # kernel name -> argument signatures (see _common)


@cuda.jit
def _sgd(p, g, buf, lr, momentum, dampening, weight_decay, nesterov, first):
    for i in range(cuda.grid(1), p.shape[0], cuda.gridsize(1)):
        sgd_at(i, p, g, buf, lr, momentum, dampening, weight_decay, nesterov, first)


KERNEL_SIGNATURES["_sgd"] = float_signatures(
    "{f}[::1], {f}[::1], {f}[::1], float64, float64, float64, float64, boolean, boolean")


@cuda.jit
def _adam(p, g, m, v, vmax, lr, beta1, beta2, eps, weight_decay, bc1, bc2_sqrt, amsgrad):
    for i in range(cuda.grid(1), p.shape[0], cuda.gridsize(1)):
        adam_at(i, p, g, m, v, vmax, lr, beta1, beta2, eps, weight_decay, bc1, bc2_sqrt, amsgrad)


KERNEL_SIGNATURES["_adam"] = float_signatures(
    "{f}[::1], {f}[::1], {f}[::1], {f}[::1], {f}[::1], float64, float64, float64, float64, float64, "
    "float64, float64, boolean")


def sgd_step(p, g, buf, lr, momentum, dampening, weight_decay, nesterov, first):
    launch_1d(_sgd, size(p.shape), flat(p), flat(g), flat(buf), lr, momentum, dampening,
              weight_decay, nesterov, first)


def adam_step(p, g, m, v, vmax, lr, beta1, beta2, eps, weight_decay, bc1, bc2_sqrt, amsgrad):
    launch_1d(_adam, size(p.shape), flat(p), flat(g), flat(m), flat(v), flat(vmax), lr, beta1,
              beta2, eps, weight_decay, bc1, bc2_sqrt, amsgrad)
