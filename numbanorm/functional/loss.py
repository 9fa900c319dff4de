"""Cross-entropy of logits against integer class labels (PyTorch's cross_entropy).

Shapes: logits (N, K) float, labels (N,) integers in [0, K) or ignore_index. Per row,
  loss_r = (1 - s) * (lse_r - z[r, label]) + s * (lse_r - mean_k z[r, k]),  s = label_smoothing
reduced by 'mean' (over the rows not ignored; NaN when there are none), 'sum' or 'none'
(the (N,) per-row losses). Labels may be a NumPy array when the logits are on the GPU.
"""
import numbers

import numpy as np

from .. import _backend
from .. import _validate as check
from ._common import Saved, check_saved

REDUCTIONS = ("mean", "sum", "none")


def _labels(be, labels, N):
    """labels as int64 on the logits' backend, checked."""
    device = _backend.device_of(labels)
    if device in (None, "cpu"):  # host labels (any array-like) are copied to a GPU backend
        labels = np.asarray(labels)
    elif device != be.name:
        raise ValueError(f"labels are on {device} but logits on {be.name}")
    if not np.issubdtype(np.dtype(labels.dtype), np.integer):
        raise TypeError(f"labels must have an integer dtype, got {np.dtype(labels.dtype)}")
    if tuple(labels.shape) != (N,):
        raise ValueError(f"labels must have shape ({N},) to match logits, got {tuple(labels.shape)}")
    if isinstance(labels, np.ndarray):
        return be.from_host(np.ascontiguousarray(labels, dtype=np.int64))
    return be.cast(be.contiguous(be.wrap(labels)), np.int64)


def cross_entropy(logits, labels, reduction="mean", ignore_index=-100, label_smoothing=0.0):
    """-> (loss, saved): a Python float for 'mean'/'sum', an (N,) array of the logits' dtype on
    their backend for 'none'."""
    be, a = _backend.select(logits=logits)
    logits = a["logits"]
    dtype = check.float_array("logits", logits)
    check.ndim("logits", logits, (2,), "(N, K)")
    N, K = (int(d) for d in logits.shape)
    if K == 0:
        raise ValueError("logits must have at least one class (logits.shape[1] > 0)")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, numbers.Integral):
        raise TypeError(f"ignore_index must be an int, got {type(ignore_index).__name__}")
    smoothing = check.real("label_smoothing", label_smoothing, 0.0, 1.0)
    labels = _labels(be, labels, N)
    logits = be.contiguous(logits)
    losses, status, probs = be.loss.forward(logits, labels, int(ignore_index), smoothing)
    bad = int(np.count_nonzero(status == 1))
    if bad:
        first = int(np.flatnonzero(status == 1)[0])
        raise ValueError(f"labels must be in [0, {K}) (K = logits.shape[1]) or ignore_index "
                         f"({ignore_index}); {bad} are not (the first at row {first})")
    count = int(np.count_nonzero(status == 0))
    if reduction == "none":
        loss = be.from_host(losses.astype(dtype))
    else:
        total = float(np.sum(losses))
        loss = total if reduction == "sum" else (total / count if count else float("nan"))
    saved = Saved(op="cross_entropy", backend=be, shape=(N,), dtype=dtype, probs=probs,
                  labels=labels, reduction=reduction, count=count, ignore_index=int(ignore_index),
                  smoothing=smoothing)
    return loss, saved


def cross_entropy_backward(dloss, saved):
    """dlogits (N, K) of cross_entropy for an upstream gradient dloss: a number for 'mean' and
    'sum', an (N,) array for 'none'. saved is not changed."""
    check_saved(saved, "cross_entropy")
    be = saved.backend
    N = saved.shape[0]
    if saved.reduction == "none":
        if _backend.device_of(dloss) is None:
            raise TypeError(f"dloss must be an array of shape ({N},) for reduction='none', "
                            f"got {type(dloss).__name__}")
        host = dloss if isinstance(dloss, np.ndarray) else be.to_host(be.wrap(dloss))
        if tuple(host.shape) != (N,):
            raise ValueError(f"dloss must have shape ({N},) for reduction='none', got {tuple(host.shape)}")
        row_scale = np.ascontiguousarray(host, dtype=np.float64)
    else:
        if isinstance(dloss, bool) or not isinstance(dloss, numbers.Real):
            if getattr(dloss, "shape", None) == ():
                dloss = float(dloss)
            else:
                raise TypeError(f"dloss must be a number for reduction={saved.reduction!r}, "
                                f"got {type(dloss).__name__}")
        scale = float(dloss) / (saved.count if saved.reduction == "mean" and saved.count else 1)
        row_scale = np.full(N, scale)
    return be.loss.backward(saved.probs, saved.labels, saved.ignore_index, saved.smoothing,
                            be.from_host(row_scale))
