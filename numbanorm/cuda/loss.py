"""GPU kernels for the cross-entropy loss over logits (M, K) and int64 labels (M,). The per-row
math is numbanorm/_pointwise.py (shared with the CPU backend). The only device-to-host copy of a
training step: the M per-row losses and statuses, for the loss value and the label check."""
import numpy as np
from numba import cuda

from .._pointwise import cross_entropy_backward_at, cross_entropy_row
from ._common import device_array, float_signatures, launch_1d, size, to_host

KERNEL_SIGNATURES = {}  # kernel name -> argument signatures (see _common)


@cuda.jit
def _forward(logits, labels, ignore_index, smoothing, probs, losses, status):
    for r in range(cuda.grid(1), logits.shape[0], cuda.gridsize(1)):
        cross_entropy_row(r, logits, labels, ignore_index, smoothing, probs, losses, status)


KERNEL_SIGNATURES["_forward"] = float_signatures(
    "{f}[:, ::1], int64[::1], int64, float64, {f}[:, ::1], float64[::1], uint8[::1]")


@cuda.jit
def _backward(probs, labels, ignore_index, smoothing, row_scale, dlogits):
    for e in range(cuda.grid(1), probs.shape[0] * probs.shape[1], cuda.gridsize(1)):
        cross_entropy_backward_at(e, probs, labels, ignore_index, smoothing, row_scale, dlogits)


KERNEL_SIGNATURES["_backward"] = float_signatures(
    "{f}[:, ::1], int64[::1], int64, float64, float64[::1], {f}[:, ::1]")


def forward(logits, labels, ignore_index, smoothing):
    """-> (losses float64 (M,), status uint8 (M,), both on the host, probs on the device).

    The host copies wait for the op's stream (the loss is a Python number and the label check
    raises before the backward): the one synchronisation of a training step."""
    M, K = logits.shape
    probs = device_array((M, K), logits.dtype)
    losses = device_array(M, np.float64)
    status = device_array(M, np.uint8)
    launch_1d(_forward, M, logits, labels, ignore_index, smoothing, probs, losses, status)
    return to_host(losses), to_host(status), probs


def backward(probs, labels, ignore_index, smoothing, row_scale):
    dlogits = device_array(tuple(probs.shape), probs.dtype)
    launch_1d(_backward, size(probs.shape), probs, labels, ignore_index, smoothing, row_scale, dlogits)
    return dlogits
