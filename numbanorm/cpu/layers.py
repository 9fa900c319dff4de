"""CPU kernels for the CNN layers (conv, pooling, relu, dropout, linear, cross-entropy) and
the optimizer updates. numbanorm/cuda/layers.py has the same functions with the same
signatures; numbanorm/nn/layers.py and numbanorm/optim.py call whichever the device picks.

Shape legend: N batch, C input channels, O output channels, H/W input height/width,
OH/OW output height/width, P = OH * OW, KH/KW kernel size, K = C * KH * KW, F features.

Convolution is im2col + float32 BLAS gemms, one per sample (NumPy's batched matmul):
  cols (N, K [+1], P): cols[n, c*KH*KW + i*KW + j, oh*OW + ow] = x[n, c, oh*s-pad+i, ow*s-pad+j],
  plus a row of ones when there is a bias; y[n] = [weight2 | bias] @ cols[n] (already NCHW).
Backward: dweight.T (and dbias, the ones row) = sum_n cols[n] @ dy[n].T;
  dcols[n] = weight2.T @ dy[n]; col2im adds dcols back into dx.

Determinism: every parallel loop gives each task its own output elements (a plane, a row, a
channel) and sums in a fixed order, so results do not depend on the thread count. No atomics.
"""
import numpy as np
from numba import njit, prange

from . import _memory

SERIAL_BELOW = 32768  # elements: smaller elementwise ops run serially (thread wake-up costs more)


# ---------------------------------------------------------------- conv2d

@njit(cache=True)
def _valid_range(O, stride, pad, k, size):
    """[lo, hi): the output positions o with 0 <= o * stride - pad + k < size."""
    lo = 0
    if pad - k > 0:
        lo = min(O, (pad - k + stride - 1) // stride)
    top = size - 1 + pad - k
    hi = 0 if top < 0 else min(O, top // stride + 1)
    return lo, max(lo, hi)


@njit(parallel=True, cache=True)
def _im2col(x, KH, KW, sh, sw, ph, pw, OH, OW, cols):
    """cols[n, (c*KH + i)*KW + j, oh*OW + ow] = x[n, c, oh*sh - ph + i, ow*sw - pw + j] (0 in
    the padding); a row K = C*KH*KW, when cols has one, is filled with ones (the bias row)."""
    N, C, H, W = x.shape
    K = C * KH * KW
    P = OH * OW
    for t in prange(N * C):
        n = t // C
        c = t % C
        if c == 0 and cols.shape[1] > K:
            for p in range(P):
                cols[n, K, p] = 1.0
        for i in range(KH):
            for j in range(KW):
                row = (c * KH + i) * KW + j
                lo, hi = _valid_range(OW, sw, pw, j, W)
                for oh in range(OH):
                    ih = oh * sh - ph + i
                    base = oh * OW
                    if ih < 0 or ih >= H:
                        for ow in range(OW):
                            cols[n, row, base + ow] = 0.0
                        continue
                    for ow in range(lo):
                        cols[n, row, base + ow] = 0.0
                    off = j - pw
                    for ow in range(lo, hi):
                        cols[n, row, base + ow] = x[n, c, ih, ow * sw + off]
                    for ow in range(hi, OW):
                        cols[n, row, base + ow] = 0.0


@njit(parallel=True, cache=True)
def _col2im(dcols, KH, KW, sh, sw, ph, pw, OH, OW, dx):
    """dx[n, c] = sum of the dcols entries im2col read from it; one task per (n, c) plane."""
    N, C, H, W = dx.shape
    for t in prange(N * C):
        n = t // C
        c = t % C
        for ih in range(H):
            for iw in range(W):
                dx[n, c, ih, iw] = 0.0
        for i in range(KH):
            for j in range(KW):
                row = (c * KH + i) * KW + j
                lo, hi = _valid_range(OW, sw, pw, j, W)
                off = j - pw
                for oh in range(OH):
                    ih = oh * sh - ph + i
                    if ih < 0 or ih >= H:
                        continue
                    base = oh * OW
                    for ow in range(lo, hi):
                        dx[n, c, ih, ow * sw + off] += dcols[n, row, base + ow]


def conv_out_size(size, k, stride, pad):
    return (size + 2 * pad - k) // stride + 1


def conv2d_forward(x, weight, bias, stride, padding):
    """x (N, C, H, W), weight (O, C, KH, KW), bias (O,) or None, stride and padding (h, w)
    pairs -> (y (N, O, OH, OW), cols kept for the backward).

    cols is (N, K + 1, P) with a row of ones when there is a bias, so one batched gemm
    y[n] = [weight | bias] @ cols[n] also adds the bias.
    """
    N, C, H, W = x.shape
    O, _, KH, KW = weight.shape
    (sh, sw), (ph, pw) = stride, padding
    OH, OW = conv_out_size(H, KH, sh, ph), conv_out_size(W, KW, sw, pw)
    K, P = C * KH * KW, OH * OW
    Kb = K + (bias is not None)
    cols = _memory.empty((N, Kb, P), x.dtype)
    _im2col(x, KH, KW, sh, sw, ph, pw, OH, OW, cols)
    w2 = weight.reshape(O, K)
    if bias is not None:
        w2 = np.concatenate((w2, bias.reshape(O, 1)), axis=1)
    y = _memory.empty((N, O, OH, OW), x.dtype)
    np.matmul(w2, cols, out=y.reshape(N, O, P))
    return y, cols


def conv2d_backward(dy, x_shape, cols, weight, stride, padding, need_dx=True):
    """dy (N, O, OH, OW) -> (dx (N, C, H, W) or None, dweight, dbias (O,) or None)."""
    N, O, OH, OW = dy.shape
    _, C, KH, KW = weight.shape
    K, P = C * KH * KW, OH * OW
    Kb = cols.shape[1]
    dy3 = dy.reshape(N, O, P)
    # dweight.T per sample: cols[n] @ dy[n].T (this operand order runs faster in OpenBLAS than
    # dy[n] @ cols[n].T), then summed over the batch in float64 (NumPy's fixed-order reduction)
    parts = np.matmul(cols, dy3.transpose(0, 2, 1), out=_memory.empty((N, Kb, O), dy.dtype))
    dwT = parts.sum(axis=0, dtype=np.float64).astype(dy.dtype)  # (Kb, O)
    dweight = np.ascontiguousarray(dwT[:K].T).reshape(weight.shape)
    dbias = np.ascontiguousarray(dwT[K]) if Kb > K else None
    dx = None
    if need_dx:
        dcols = np.matmul(weight.reshape(O, K).T, dy3, out=_memory.empty((N, K, P), dy.dtype))
        dx = _memory.empty(x_shape, dy.dtype)
        _col2im(dcols, KH, KW, stride[0], stride[1], padding[0], padding[1], OH, OW, dx)
    return dx, dweight, dbias


# ---------------------------------------------------------------- pooling

@njit(parallel=True, cache=True)
def _max_pool(x, k, s, y, idx):
    """y[n, c, oh, ow] = max of the k x k window; idx = its flat offset in the (H, W) plane.
    Ties go to the first maximum; a NaN in the window wins (the last NaN), as in PyTorch.
    The NaN test is a count, so the common no-NaN path has one branch per element."""
    N, C, H, W = x.shape
    _, _, OH, OW = y.shape
    for t in prange(N * C):
        n = t // C
        c = t % C
        xp = x[n, c]
        yp = y[n, c]
        ip = idx[n, c]
        for oh in range(OH):
            for ow in range(OW):
                h0 = oh * s
                w0 = ow * s
                best = xp[h0, w0]
                arg = h0 * W + w0
                nans = 0
                for i in range(k):
                    for j in range(k):
                        v = xp[h0 + i, w0 + j]
                        nans += v != v
                        if v > best:
                            best = v
                            arg = (h0 + i) * W + w0 + j
                if nans:
                    for i in range(k):
                        for j in range(k):
                            v = xp[h0 + i, w0 + j]
                            if v != v:
                                best = v
                                arg = (h0 + i) * W + w0 + j
                yp[oh, ow] = best
                ip[oh, ow] = arg


@njit(parallel=True, cache=True)
def _max_pool_backward(dy, idx, dx):
    """dx zero except at each window's argmax, where dy is added (one task per plane)."""
    N, C, OH, OW = dy.shape
    _, _, H, W = dx.shape
    for t in prange(N * C):
        n = t // C
        c = t % C
        for h in range(H):
            for w in range(W):
                dx[n, c, h, w] = 0.0
        for oh in range(OH):
            for ow in range(OW):
                a = idx[n, c, oh, ow]
                dx[n, c, a // W, a % W] += dy[n, c, oh, ow]


def pool_out_size(size, k, stride):
    return (size - k) // stride + 1


def max_pool2d_forward(x, k, s):
    """x (N, C, H, W) -> (y (N, C, OH, OW), idx int32 argmax offsets within each plane)."""
    N, C, H, W = x.shape
    OH, OW = pool_out_size(H, k, s), pool_out_size(W, k, s)
    y = _memory.empty((N, C, OH, OW), x.dtype)
    idx = _memory.empty((N, C, OH, OW), np.int32)
    _max_pool(x, k, s, y, idx)
    return y, idx


def max_pool2d_backward(dy, idx, x_shape, k, s):
    dx = _memory.empty(x_shape, dy.dtype)
    _max_pool_backward(dy, idx, dx)
    return dx


@njit(parallel=True, cache=True)
def _avg_pool(x, k, s, y):
    N, C, H, W = x.shape
    _, _, OH, OW = y.shape
    inv = 1.0 / (k * k)
    for t in prange(N * C):
        n = t // C
        c = t % C
        for oh in range(OH):
            for ow in range(OW):
                acc = 0.0
                for i in range(k):
                    for j in range(k):
                        acc += x[n, c, oh * s + i, ow * s + j]
                y[n, c, oh, ow] = acc * inv


@njit(parallel=True, cache=True)
def _avg_pool_backward(dy, k, s, dx):
    N, C, OH, OW = dy.shape
    _, _, H, W = dx.shape
    inv = 1.0 / (k * k)
    for t in prange(N * C):
        n = t // C
        c = t % C
        for h in range(H):
            for w in range(W):
                dx[n, c, h, w] = 0.0
        for oh in range(OH):
            for ow in range(OW):
                g = dy[n, c, oh, ow] * inv
                for i in range(k):
                    for j in range(k):
                        dx[n, c, oh * s + i, ow * s + j] += g


def avg_pool2d_forward(x, k, s):
    """x (N, C, H, W) -> y (N, C, OH, OW), the mean of each k x k window (no padding)."""
    N, C, H, W = x.shape
    y = _memory.empty((N, C, pool_out_size(H, k, s), pool_out_size(W, k, s)), x.dtype)
    _avg_pool(x, k, s, y)
    return y


def avg_pool2d_backward(dy, x_shape, k, s):
    dx = _memory.empty(x_shape, dy.dtype)
    _avg_pool_backward(dy, k, s, dx)
    return dx


# ---------------------------------------------------------------- relu

@njit(parallel=True, cache=True)
def _relu_p(x, y):
    for i in prange(x.size):
        v = x[i]
        y[i] = v if v > 0 else (v if v != v else 0.0)  # NaN passes through, as PyTorch


@njit(cache=True)
def _relu_s(x, y):
    for i in range(x.size):
        v = x[i]
        y[i] = v if v > 0 else (v if v != v else 0.0)


@njit(parallel=True, cache=True)
def _relu_backward_p(dy, y, dx):
    for i in prange(dy.size):
        dx[i] = dy[i] if y[i] > 0 else 0.0


@njit(cache=True)
def _relu_backward_s(dy, y, dx):
    for i in range(dy.size):
        dx[i] = dy[i] if y[i] > 0 else 0.0


def relu_forward(x):
    """y = max(x, 0) (any shape, C-contiguous)."""
    y = _memory.empty_like(x)
    (_relu_p if x.size >= SERIAL_BELOW else _relu_s)(x.reshape(-1), y.reshape(-1))
    return y


def relu_backward(dy, y):
    """dx = dy where the forward output y > 0, else 0 (PyTorch's threshold_backward)."""
    dx = _memory.empty_like(dy)
    (_relu_backward_p if dy.size >= SERIAL_BELOW else _relu_backward_s)(
        dy.reshape(-1), y.reshape(-1), dx.reshape(-1))
    return dx


# ---------------------------------------------------------------- dropout

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31, _S40 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(40)


def hash_uniform_py(seed, i):
    """A uniform float in [0, 1) from (seed, element index): splitmix64 of seed + (i+1)*golden.
    Counter-based, so the mask is the same for any thread count and on CPU and GPU."""
    z = np.uint64(seed) + (np.uint64(i) + np.uint64(1)) * _GOLDEN
    z = (z ^ (z >> _S30)) * _MIX1
    z = (z ^ (z >> _S27)) * _MIX2
    z = z ^ (z >> _S31)
    return np.float64(z >> _S40) * (1.0 / 16777216.0)


_hash_uniform = njit(cache=True)(hash_uniform_py)


@njit(parallel=True, cache=True)
def _dropout(x, p, scale, seed, y, mask):
    for i in prange(x.size):
        keep = _hash_uniform(seed, i) >= p
        mask[i] = keep
        y[i] = x[i] * scale if keep else 0.0


@njit(parallel=True, cache=True)
def _dropout_backward(dy, mask, scale, dx):
    for i in prange(dy.size):
        dx[i] = dy[i] * scale if mask[i] else 0.0


def dropout_forward(x, p, seed):
    """Zero each element with probability p and scale the rest by 1/(1-p).
    Returns (y, mask uint8 of x's shape). seed: a uint64 drawn by the layer per forward."""
    y = _memory.empty_like(x)
    mask = _memory.empty(x.shape, np.uint8)
    _dropout(x.reshape(-1), p, 1.0 / (1.0 - p), np.uint64(seed), y.reshape(-1), mask.reshape(-1))
    return y, mask


def dropout_backward(dy, mask, p):
    dx = _memory.empty_like(dy)
    _dropout_backward(dy.reshape(-1), mask.reshape(-1), 1.0 / (1.0 - p), dx.reshape(-1))
    return dx


# ---------------------------------------------------------------- linear

def linear_forward(x, weight, bias):
    """x (M, F_in), weight (F_out, F_in), bias (F_out,) or None -> y = x @ weight.T + bias."""
    y = np.matmul(x, weight.T)
    if bias is not None:
        y += bias
    return y


def linear_backward(dy, x, weight, need_dx=True):
    """dy (M, F_out) -> (dx (M, F_in) or None, dweight = dy.T @ x, dbias = sum over rows)."""
    dweight = np.matmul(dy.T, x)
    dbias = dy.sum(axis=0, dtype=np.float64).astype(dy.dtype)
    dx = np.matmul(dy, weight) if need_dx else None
    return dx, dweight, dbias


# ---------------------------------------------------------------- cross-entropy

@njit(parallel=True, cache=True)
def _xent(logits, labels, probs, losses):
    """Per row: probs = softmax(logits) (max-shifted), losses = logsumexp - logit[label].
    A label outside [0, K) gives a NaN loss (the host reports it)."""
    M, K = logits.shape
    for r in prange(M):
        m = np.float64(logits[r, 0])
        for k in range(1, K):
            m = max(m, np.float64(logits[r, k]))
        s = 0.0
        for k in range(K):
            s += np.exp(np.float64(logits[r, k]) - m)
        lse = m + np.log(s)
        for k in range(K):
            probs[r, k] = np.exp(np.float64(logits[r, k]) - lse)
        lab = labels[r]
        if lab < 0 or lab >= K:
            losses[r] = np.nan
        else:
            losses[r] = lse - np.float64(logits[r, lab])


@njit(cache=True)
def _sum_losses(losses, K, labels):
    """(sum of losses, number of out-of-range labels); a serial, fixed-order sum."""
    acc = 0.0
    bad = 0
    for r in range(losses.size):
        lab = labels[r]
        if lab < 0 or lab >= K:
            bad += 1
        else:
            acc += losses[r]
    return acc, bad


def cross_entropy_forward(logits, labels):
    """logits (M, K), labels (M,) int64 -> (summed loss as a Python float, probs (M, K),
    number of labels outside [0, K))."""
    M, K = logits.shape
    probs = _memory.empty_like(logits)
    losses = _memory.empty(M, np.float64)
    _xent(logits, labels, probs, losses)
    total, bad = _sum_losses(losses, K, labels)
    return float(total), probs, int(bad)


@njit(parallel=True, cache=True)
def _xent_backward(probs, labels, scale, dlogits):
    M, K = probs.shape
    for r in prange(M):
        for k in range(K):
            g = probs[r, k]
            if k == labels[r]:
                g -= 1.0
            dlogits[r, k] = g * scale


def cross_entropy_backward(probs, labels, scale):
    """dlogits = (softmax - onehot(labels)) * scale (scale = upstream grad / M)."""
    dlogits = _memory.empty_like(probs)
    _xent_backward(probs, labels, scale, dlogits)
    return dlogits


# ---------------------------------------------------------------- optimizers (flat arrays)

@njit(parallel=True, cache=True)
def _sgd(p, g, buf, lr, momentum, dampening, weight_decay, nesterov, first):
    for i in prange(p.size):
        d = np.float64(g[i]) + weight_decay * np.float64(p[i])
        if momentum != 0.0:
            if first:
                b = d
            else:
                b = momentum * np.float64(buf[i]) + (1.0 - dampening) * d
            buf[i] = b
            b = np.float64(buf[i])  # the stored (rounded) buffer, as PyTorch uses it
            d = d + momentum * b if nesterov else b
        p[i] = p[i] - lr * d


def sgd_step(p, g, buf, lr, momentum, dampening, weight_decay, nesterov, first):
    """One torch.optim.SGD update of parameter p (in place) with gradient g; buf the momentum
    buffer (written; ignored when momentum == 0). All arrays of one shape, C-contiguous."""
    _sgd(p.reshape(-1), g.reshape(-1), buf.reshape(-1), float(lr), float(momentum),
         float(dampening), float(weight_decay), bool(nesterov), bool(first))


@njit(parallel=True, cache=True)
def _adam(p, g, m, v, lr, beta1, beta2, eps, weight_decay, bc1, bc2_sqrt):
    step_size = lr / bc1
    for i in prange(p.size):
        d = np.float64(g[i]) + weight_decay * np.float64(p[i])
        mi = m[i] + (1.0 - beta1) * (d - m[i])  # torch: exp_avg.lerp_(grad, 1 - beta1)
        vi = beta2 * v[i] + (1.0 - beta2) * d * d
        m[i] = mi
        v[i] = vi
        denom = np.sqrt(np.float64(v[i])) / bc2_sqrt + eps
        p[i] = p[i] - step_size * np.float64(m[i]) / denom


def adam_step(p, g, m, v, step, lr, beta1, beta2, eps, weight_decay):
    """One torch.optim.Adam update (amsgrad=False) of p in place; m, v the moment buffers;
    step is the 1-based step count after incrementing."""
    bc1 = 1.0 - beta1 ** step
    bc2_sqrt = (1.0 - beta2 ** step) ** 0.5
    _adam(p.reshape(-1), g.reshape(-1), m.reshape(-1), v.reshape(-1), float(lr), float(beta1),
          float(beta2), float(eps), float(weight_decay), bc1, bc2_sqrt)


# ---------------------------------------------------------------- array helpers

def zeros(shape, dtype):
    return np.zeros(shape, dtype)


def contiguous(a):
    """a as a C-contiguous array (no copy when it already is one)."""
    return np.ascontiguousarray(a)


def labels(a):
    """Class labels as a C-contiguous int64 array (one kernel signature)."""
    return np.ascontiguousarray(a, dtype=np.int64)
