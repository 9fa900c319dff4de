"""CPU kernels for the cross-entropy loss over logits (M, K) and int64 labels (M,).
The per-row math is numbanorm/_pointwise.py (shared with the GPU backend)."""
import numpy as np
from numba import njit, prange

from .._pointwise import cross_entropy_row, cross_entropy_backward_at
from . import _memory
from ._parallel import STREAM_SERIAL_BELOW, serial


@njit(parallel=True, cache=True)
def _forward(logits, labels, ignore_index, smoothing, probs, losses, status, serial):
    if serial:
        for r in range(logits.shape[0]):
            cross_entropy_row(r, logits, labels, ignore_index, smoothing, probs, losses, status)
    else:
        for r in prange(logits.shape[0]):
            cross_entropy_row(r, logits, labels, ignore_index, smoothing, probs, losses, status)


@njit(parallel=True, cache=True)
def _backward(probs, labels, ignore_index, smoothing, row_scale, dlogits, serial):
    if serial:
        for e in range(probs.size):
            cross_entropy_backward_at(e, probs, labels, ignore_index, smoothing, row_scale, dlogits)
    else:
        for e in prange(probs.size):
            cross_entropy_backward_at(e, probs, labels, ignore_index, smoothing, row_scale, dlogits)


def forward(logits, labels, ignore_index, smoothing):
    """-> (losses float64 (M,), status uint8 (M,) (0 counted, 1 bad label, 2 ignored), both on
    the host, probs (M, K))."""
    M = logits.shape[0]
    probs = _memory.empty_like(logits)
    losses = np.empty(M)
    status = np.empty(M, np.uint8)
    _forward(logits, labels, ignore_index, smoothing, probs, losses, status,
             serial(logits, STREAM_SERIAL_BELOW))
    return losses, status, probs


def backward(probs, labels, ignore_index, smoothing, row_scale):
    """dlogits = (softmax - (1-smoothing)*onehot - smoothing/K) * row_scale[r] (float64 (M,))."""
    dlogits = _memory.empty_like(probs)
    _backward(probs, labels, ignore_index, smoothing, row_scale, dlogits,
              serial(probs, STREAM_SERIAL_BELOW))
    return dlogits
