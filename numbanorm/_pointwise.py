"""Element-wise math written once and compiled by both backends.

Functions on scalars or on one index of arrays, registered with `numba.extending.register_jitable`
(a generic-target overload): numbanorm/cpu calls them inside `prange` loops of `njit` kernels,
numbanorm/cuda inside grid-stride loops of `cuda.jit` kernels, and the CUDA simulator runs them as
plain Python. So a formula (an optimizer update, the dropout hash, a softmax row) has exactly one
definition. Only `math.*` functions here: they compile on every target.
"""
import math

import numpy as np
from numba import float64
from numba.extending import register_jitable

# ---------------------------------------------------------------- dropout's counter-based hash

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_ONE = np.uint64(1)
_S30, _S27, _S31, _S40 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(40)


@register_jitable
def hash_uniform(seed, i):
    """A uniform float in [0, 1) from (seed, element index): splitmix64 of seed + (i+1)*golden.
    Counter-based, so a dropout mask is the same for any thread count and on CPU and GPU."""
    z = np.uint64(seed) + (np.uint64(i) + _ONE) * _GOLDEN
    z = (z ^ (z >> _S30)) * _MIX1
    z = (z ^ (z >> _S27)) * _MIX2
    z = z ^ (z >> _S31)
    return float64(z >> _S40) * (1.0 / 16777216.0)


@register_jitable
def dropout_at(i, x, p, scale, seed, y, mask):
    keep = hash_uniform(seed, i) >= p
    mask[i] = 1 if keep else 0
    y[i] = x[i] * scale if keep else 0.0


@register_jitable
def dropout_backward_at(i, dy, mask, scale, dx):
    dx[i] = dy[i] * scale if mask[i] else 0.0


# ---------------------------------------------------------------- relu

@register_jitable
def relu_at(i, x, y):
    """y = max(x, 0); NaN passes through, as in PyTorch."""
    v = x[i]
    y[i] = v if (v > 0 or v != v) else 0.0


@register_jitable
def relu_backward_at(i, dy, y, dx):
    """PyTorch's threshold_backward: dy where the output is > 0."""
    dx[i] = dy[i] if y[i] > 0 else 0.0


# ---------------------------------------------------------------- optimizers (torch.optim's rules)

@register_jitable
def sgd_at(i, p, g, buf, lr, momentum, dampening, weight_decay, nesterov, first):
    """torch.optim.SGD on element i: d = g + wd*p; buf = d (first step) or
    momentum*buf + (1-dampening)*d; d = d + momentum*buf (Nesterov) or buf; p -= lr*d.
    The buffer is re-read after storing, so its rounding matches PyTorch's."""
    d = float64(g[i]) + weight_decay * float64(p[i])
    if momentum != 0.0:
        if first:
            b = d
        else:
            b = momentum * float64(buf[i]) + (1.0 - dampening) * d
        buf[i] = b
        b = float64(buf[i])
        d = d + momentum * b if nesterov else b
    p[i] = p[i] - lr * d


@register_jitable
def adam_at(i, p, g, m, v, vmax, lr, beta1, beta2, eps, weight_decay, bc1, bc2_sqrt, amsgrad):
    """torch.optim.Adam on element i (L2 weight decay added to the gradient):
    m = lerp(m, d, 1-b1); v = b2*v + (1-b2)*d^2; vmax = max(vmax, v) with amsgrad;
    p -= lr/bc1 * m / (sqrt(v or vmax)/sqrt(bc2) + eps)."""
    d = float64(g[i]) + weight_decay * float64(p[i])
    m[i] = m[i] + (1.0 - beta1) * (d - m[i])
    v[i] = beta2 * v[i] + (1.0 - beta2) * d * d
    second = float64(v[i])
    if amsgrad:
        if v[i] > vmax[i]:
            vmax[i] = v[i]
        second = float64(vmax[i])
    denom = math.sqrt(second) / bc2_sqrt + eps
    p[i] = p[i] - (lr / bc1) * float64(m[i]) / denom


# ---------------------------------------------------------------- cross-entropy, one row

@register_jitable
def cross_entropy_row(r, logits, labels, ignore_index, smoothing, probs, losses, status):
    """Row r: probs = softmax(logits[r]) (max-shifted), and the row's loss
    (1 - smoothing) * (lse - z[label]) + smoothing * (lse - mean(z)) in float64. status[r]:
    0 a counted row, 1 a label neither ignored nor in [0, K), 2 an ignored row (loss 0)."""
    K = logits.shape[1]
    m = float64(logits[r, 0])
    total = 0.0
    for k in range(K):
        z = float64(logits[r, k])
        total += z
        if z > m or z != z:
            m = z
    s = 0.0
    for k in range(K):
        s += math.exp(float64(logits[r, k]) - m)
    lse = m + math.log(s)
    for k in range(K):
        probs[r, k] = math.exp(float64(logits[r, k]) - lse)
    lab = labels[r]
    losses[r] = 0.0
    if lab == ignore_index:
        status[r] = 2
    elif lab < 0 or lab >= K:
        status[r] = 1
    else:
        status[r] = 0
        losses[r] = (1.0 - smoothing) * (lse - float64(logits[r, lab])) + smoothing * (lse - total / K)


@register_jitable
def cross_entropy_backward_at(e, probs, labels, ignore_index, smoothing, row_scale, dlogits):
    """Element e of (M, K): (softmax - (1-smoothing)*onehot - smoothing/K) * row_scale[r]; 0 for
    an ignored row."""
    K = probs.shape[1]
    r = e // K
    k = e - r * K
    lab = labels[r]
    if lab == ignore_index:
        dlogits[r, k] = 0.0
        return
    g = float64(probs[r, k]) - smoothing / K
    if k == lab:
        g -= 1.0 - smoothing
    dlogits[r, k] = g * row_scale[r]
