"""GPU kernels for the CNN layers and optimizer updates: the numba.cuda twin of
numbanorm/cpu/layers.py (same function names, arguments and results; arrays are Numba device
arrays). Imported lazily by numbanorm/nn/layers.py; numbanorm/cuda/__init__.py does not import it.

Shape legend as in the CPU file: N batch, C/O in/out channels, H/W, OH/OW, P = OH * OW,
K = C * KH * KW. Convolution is im2col + a tiled shared-memory gemm (bias in the epilogue);
its backward is a gemm reducing over (n, p) for dweight, a batched gemm for dcols and a col2im
that gathers (one thread per dx element).

Determinism: every output element is written by one thread that sums in a fixed order; no
float atomics. Accumulation is float64 (in registers and the gemm tiles). Everything stays on
the device except the per-row losses of the cross-entropy (N floats, for the loss value).
"""
import os

import numpy as np
from numba import cuda, float64

from . import contiguous as _contiguous, full as _full, wrap as _wrap
from ._common import block_sum2, cdiv, grid_1d, shared_bytes, threads
from ..cpu.layers import conv_out_size, hash_uniform_py, pool_out_size

# gemm tile edge (TILE x TILE threads per block); small under the simulator (a Python thread
# per CUDA thread). A compile-time constant of the kernels.
TILE = 8 if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1" else 16

if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
    def _hash_sim(seed, i):  # the simulator runs it as Python: uint64 wrap-around is intended
        with np.errstate(over="ignore"):
            return hash_uniform_py(seed, i)

    _hash_uniform = cuda.jit(device=True)(_hash_sim)
else:
    _hash_uniform = cuda.jit(device=True)(hash_uniform_py)


def _n(a):
    return int(np.prod(a.shape, dtype=np.int64))


def _flat(a):
    return a.reshape(_n(a))


def _launch_1d(kernel, n, *args):
    if n:
        t = threads()
        kernel[grid_1d(n, t), t](*args)


# ---------------------------------------------------------------- gemm

@cuda.jit
def _gemm(A, B, C, ta, tb, bias, bias_mode, accumulate):
    """C[z] = op(A[za]) @ op(B[zb]) (+ bias), z = blockIdx.z; za = z if A.shape[0] > 1 else 0
    (broadcast), likewise zb. op(A) is (M, K): A[za, m, k], or A[za, k, m] when ta.
    bias_mode 0: none, 1: bias[m] (per row), 2: bias[n] (per column). accumulate: C += result."""
    sA = cuda.shared.array((TILE, TILE), float64)
    sB = cuda.shared.array((TILE, TILE), float64)
    z = cuda.blockIdx.z
    za = z if A.shape[0] > 1 else 0
    zb = z if B.shape[0] > 1 else 0
    M = C.shape[1]
    N = C.shape[2]
    K = A.shape[1] if ta else A.shape[2]
    tx = cuda.threadIdx.x
    ty = cuda.threadIdx.y
    row = cuda.blockIdx.y * TILE + ty
    col = cuda.blockIdx.x * TILE + tx
    acc = 0.0
    for k0 in range(0, K, TILE):
        ka = k0 + tx
        if row < M and ka < K:
            sA[ty, tx] = A[za, ka, row] if ta else A[za, row, ka]
        else:
            sA[ty, tx] = 0.0
        kb = k0 + ty
        if kb < K and col < N:
            sB[ty, tx] = B[zb, col, kb] if tb else B[zb, kb, col]
        else:
            sB[ty, tx] = 0.0
        cuda.syncthreads()
        for kk in range(TILE):
            acc += sA[ty, kk] * sB[kk, tx]
        cuda.syncthreads()
    if row < M and col < N:
        if bias_mode == 1:
            acc += bias[row]
        elif bias_mode == 2:
            acc += bias[col]
        if accumulate:
            C[z, row, col] += acc
        else:
            C[z, row, col] = acc


def gemm(A, B, C, ta=False, tb=False, bias=None, bias_mode=0, accumulate=False):
    """C (Z, M, N) = op(A) @ op(B) per z (see _gemm); A and B are 3-D, leading dim Z or 1."""
    Z, M, N = C.shape
    if bias is None:
        bias, bias_mode = C.reshape(_n(C))[:1], 0
    grid = (cdiv(N, TILE), cdiv(M, TILE), Z)
    _gemm[grid, (TILE, TILE)](A, B, C, ta, tb, bias, bias_mode, accumulate)
    return C


@cuda.jit
def _gemm_dw(dy, cols, dw):
    """dw[o, k] = sum over (n, p) of dy[n, o, p] * cols[n, k, p]: a gemm whose reduction index
    runs over the batch and the output pixels (dweight of a convolution)."""
    sA = cuda.shared.array((TILE, TILE), float64)
    sB = cuda.shared.array((TILE, TILE), float64)
    N, O, P = dy.shape
    K = cols.shape[1]
    R = N * P
    tx = cuda.threadIdx.x
    ty = cuda.threadIdx.y
    row = cuda.blockIdx.y * TILE + ty  # o
    col = cuda.blockIdx.x * TILE + tx  # k
    acc = 0.0
    for r0 in range(0, R, TILE):
        ra = r0 + tx
        if row < O and ra < R:
            sA[ty, tx] = dy[ra // P, row, ra % P]
        else:
            sA[ty, tx] = 0.0
        rb = r0 + ty
        if rb < R and col < K:
            sB[ty, tx] = cols[rb // P, col, rb % P]
        else:
            sB[ty, tx] = 0.0
        cuda.syncthreads()
        for kk in range(TILE):
            acc += sA[ty, kk] * sB[kk, tx]
        cuda.syncthreads()
    if row < O and col < K:
        dw[row, col] = acc


# ---------------------------------------------------------------- conv2d

@cuda.jit
def _im2col(x, KH, KW, sh, sw, ph, pw, OH, OW, cols):
    N, C, H, W = x.shape
    K = cols.shape[1]
    P = OH * OW
    total = N * K * P
    for e in range(cuda.grid(1), total, cuda.gridsize(1)):
        p = e % P
        row = (e // P) % K
        n = e // (P * K)
        j = row % KW
        i = (row // KW) % KH
        c = row // (KW * KH)
        ih = (p // OW) * sh - ph + i
        iw = (p % OW) * sw - pw + j
        if ih >= 0 and ih < H and iw >= 0 and iw < W:
            cols[n, row, p] = x[n, c, ih, iw]
        else:
            cols[n, row, p] = 0.0


@cuda.jit
def _col2im(dcols, KH, KW, sh, sw, ph, pw, OH, OW, dx):
    """One thread per dx[n, c, h, w]: the sum over the (i, j, oh, ow) that read it."""
    N, C, H, W = dx.shape
    total = N * C * H * W
    for e in range(cuda.grid(1), total, cuda.gridsize(1)):
        w = e % W
        h = (e // W) % H
        c = (e // (W * H)) % C
        n = e // (W * H * C)
        acc = 0.0
        for i in range(KH):
            th = h + ph - i
            if th < 0 or th % sh != 0:
                continue
            oh = th // sh
            if oh >= OH:
                continue
            for j in range(KW):
                tw = w + pw - j
                if tw < 0 or tw % sw != 0:
                    continue
                ow = tw // sw
                if ow >= OW:
                    continue
                acc += dcols[n, (c * KH + i) * KW + j, oh * OW + ow]
        dx[n, c, h, w] = acc


@cuda.jit
def _channel_sum(dy, out):
    """out[o] = sum over (n, p) of dy[n, o, p]; one block per o (block reduction)."""
    shm = cuda.shared.array(0, float64)
    N, O, P = dy.shape
    o = cuda.blockIdx.x
    acc = 0.0
    for e in range(cuda.threadIdx.x, N * P, cuda.blockDim.x):
        acc += dy[e // P, o, e % P]
    s, _ = block_sum2(acc, 0.0, shm)
    if cuda.threadIdx.x == 0:
        out[o] = s


def conv2d_forward(x, weight, bias, stride, padding):
    """x (N, C, H, W), weight (O, C, KH, KW), bias (O,) or None -> (y (N, O, OH, OW), cols)."""
    N, C, H, W = x.shape
    O, _, KH, KW = weight.shape
    (sh, sw), (ph, pw) = stride, padding
    OH, OW = conv_out_size(H, KH, sh, ph), conv_out_size(W, KW, sw, pw)
    K, P = C * KH * KW, OH * OW
    cols = cuda.device_array((N, K, P), x.dtype)
    _launch_1d(_im2col, N * K * P, x, KH, KW, sh, sw, ph, pw, OH, OW, cols)
    y = cuda.device_array((N, O, OH, OW), x.dtype)
    gemm(weight.reshape((1, O, K)), cols, y.reshape((N, O, P)), bias=bias, bias_mode=1)
    return y, cols


def conv2d_backward(dy, x_shape, cols, weight, stride, padding, need_dx=True):
    """dy (N, O, OH, OW) -> (dx (N, C, H, W) or None, dweight, dbias (O,) or None)."""
    N, O, OH, OW = dy.shape
    _, C, KH, KW = weight.shape
    K, P = C * KH * KW, OH * OW
    dy3 = dy.reshape((N, O, P))
    dweight = cuda.device_array((O, C, KH, KW), dy.dtype)
    _gemm_dw[(cdiv(K, TILE), cdiv(O, TILE)), (TILE, TILE)](dy3, cols, dweight.reshape((O, K)))
    t = threads()
    dbias = cuda.device_array(O, dy.dtype)
    _channel_sum[O, t, 0, shared_bytes(t)](dy3, dbias)
    dx = None
    if need_dx:
        dcols = cuda.device_array((N, K, P), dy.dtype)
        gemm(weight.reshape((1, O, K)), dy3, dcols, ta=True)
        dx = cuda.device_array(tuple(x_shape), dy.dtype)
        _launch_1d(_col2im, _n(dx), dcols, KH, KW, stride[0], stride[1], padding[0], padding[1],
                   OH, OW, dx)
    return dx, dweight, dbias


# ---------------------------------------------------------------- pooling

@cuda.jit
def _max_pool(x, k, s, y, idx):
    N, C, H, W = x.shape
    _, _, OH, OW = y.shape
    for e in range(cuda.grid(1), N * C * OH * OW, cuda.gridsize(1)):
        ow = e % OW
        oh = (e // OW) % OH
        c = (e // (OW * OH)) % C
        n = e // (OW * OH * C)
        h0 = oh * s
        w0 = ow * s
        best = x[n, c, h0, w0]
        arg = h0 * W + w0
        for i in range(k):
            for j in range(k):
                v = x[n, c, h0 + i, w0 + j]
                if v > best or v != v:  # ties: the first maximum; NaN: the last NaN wins
                    best = v
                    arg = (h0 + i) * W + w0 + j
        y[n, c, oh, ow] = best
        idx[n, c, oh, ow] = arg


@cuda.jit
def _pool_backward(dy, idx, k, s, is_max, dx):
    """One thread per dx element: the sum over the windows that contain it (max: only those
    whose argmax it is; avg: dy / k^2)."""
    N, C, H, W = dx.shape
    _, _, OH, OW = dy.shape
    inv = 1.0 / (k * k)
    for e in range(cuda.grid(1), N * C * H * W, cuda.gridsize(1)):
        w = e % W
        h = (e // W) % H
        c = (e // (W * H)) % C
        n = e // (W * H * C)
        oh_lo = 0 if h < k else (h - k) // s + 1
        ow_lo = 0 if w < k else (w - k) // s + 1
        acc = 0.0
        for oh in range(oh_lo, min(OH - 1, h // s) + 1):
            for ow in range(ow_lo, min(OW - 1, w // s) + 1):
                if is_max:
                    if idx[n, c, oh, ow] == h * W + w:
                        acc += dy[n, c, oh, ow]
                else:
                    acc += dy[n, c, oh, ow] * inv
        dx[n, c, h, w] = acc


@cuda.jit
def _avg_pool(x, k, s, y):
    N, C, H, W = x.shape
    _, _, OH, OW = y.shape
    inv = 1.0 / (k * k)
    for e in range(cuda.grid(1), N * C * OH * OW, cuda.gridsize(1)):
        ow = e % OW
        oh = (e // OW) % OH
        c = (e // (OW * OH)) % C
        n = e // (OW * OH * C)
        acc = 0.0
        for i in range(k):
            for j in range(k):
                acc += x[n, c, oh * s + i, ow * s + j]
        y[n, c, oh, ow] = acc * inv


def max_pool2d_forward(x, k, s):
    N, C, H, W = x.shape
    shape = (N, C, pool_out_size(H, k, s), pool_out_size(W, k, s))
    y = cuda.device_array(shape, x.dtype)
    idx = cuda.device_array(shape, np.int32)
    _launch_1d(_max_pool, _n(y), x, k, s, y, idx)
    return y, idx


def max_pool2d_backward(dy, idx, x_shape, k, s):
    dx = cuda.device_array(tuple(x_shape), dy.dtype)
    _launch_1d(_pool_backward, _n(dx), dy, idx, k, s, True, dx)
    return dx


def avg_pool2d_forward(x, k, s):
    N, C, H, W = x.shape
    y = cuda.device_array((N, C, pool_out_size(H, k, s), pool_out_size(W, k, s)), x.dtype)
    _launch_1d(_avg_pool, _n(y), x, k, s, y)
    return y


def avg_pool2d_backward(dy, x_shape, k, s):
    dx = cuda.device_array(tuple(x_shape), dy.dtype)
    _launch_1d(_pool_backward, _n(dx), dy, _dummy_idx(), k, s, False, dx)
    return dx


_DUMMY = {}


def _dummy_idx():
    """A 4-D int32 placeholder for the unused idx argument of the avg-pool backward."""
    if "idx" not in _DUMMY:
        _DUMMY["idx"] = cuda.device_array((1, 1, 1, 1), np.int32)
    return _DUMMY["idx"]


# ---------------------------------------------------------------- relu, dropout

@cuda.jit
def _relu(x, y):
    for i in range(cuda.grid(1), x.shape[0], cuda.gridsize(1)):
        v = x[i]
        y[i] = v if (v > 0 or v != v) else 0.0


@cuda.jit
def _relu_backward(dy, y, dx):
    for i in range(cuda.grid(1), dy.shape[0], cuda.gridsize(1)):
        dx[i] = dy[i] if y[i] > 0 else 0.0


def relu_forward(x):
    y = cuda.device_array(tuple(x.shape), x.dtype)
    _launch_1d(_relu, _n(x), _flat(x), _flat(y))
    return y


def relu_backward(dy, y):
    dx = cuda.device_array(tuple(dy.shape), dy.dtype)
    _launch_1d(_relu_backward, _n(dy), _flat(dy), _flat(y), _flat(dx))
    return dx


@cuda.jit
def _dropout(x, p, scale, seed, y, mask):
    for i in range(cuda.grid(1), x.shape[0], cuda.gridsize(1)):
        keep = _hash_uniform(seed, i) >= p
        mask[i] = 1 if keep else 0
        y[i] = x[i] * scale if keep else 0.0


@cuda.jit
def _dropout_backward(dy, mask, scale, dx):
    for i in range(cuda.grid(1), dy.shape[0], cuda.gridsize(1)):
        dx[i] = dy[i] * scale if mask[i] else 0.0


def dropout_forward(x, p, seed):
    """Same mask as the CPU kernel for the same seed (the same counter-based hash)."""
    y = cuda.device_array(tuple(x.shape), x.dtype)
    mask = cuda.device_array(tuple(x.shape), np.uint8)
    _launch_1d(_dropout, _n(x), _flat(x), p, 1.0 / (1.0 - p), np.uint64(seed), _flat(y), _flat(mask))
    return y, mask


def dropout_backward(dy, mask, p):
    dx = cuda.device_array(tuple(dy.shape), dy.dtype)
    _launch_1d(_dropout_backward, _n(dy), _flat(dy), _flat(mask), 1.0 / (1.0 - p), _flat(dx))
    return dx


# ---------------------------------------------------------------- linear

@cuda.jit
def _column_sum(a, out):
    """out[f] = sum over rows of a[:, f]; one thread per column, fixed order."""
    M, F = a.shape
    for f in range(cuda.grid(1), F, cuda.gridsize(1)):
        acc = 0.0
        for r in range(M):
            acc += a[r, f]
        out[f] = acc


def linear_forward(x, weight, bias):
    M = x.shape[0]
    Fo, Fi = weight.shape
    y = cuda.device_array((M, Fo), x.dtype)
    gemm(x.reshape((1, M, Fi)), weight.reshape((1, Fo, Fi)), y.reshape((1, M, Fo)), tb=True,
         bias=bias, bias_mode=2)
    return y


def linear_backward(dy, x, weight, need_dx=True):
    M, Fo = dy.shape
    Fi = weight.shape[1]
    dweight = cuda.device_array((Fo, Fi), dy.dtype)
    gemm(dy.reshape((1, M, Fo)), x.reshape((1, M, Fi)), dweight.reshape((1, Fo, Fi)), ta=True)
    dbias = cuda.device_array(Fo, dy.dtype)
    _launch_1d(_column_sum, Fo, dy, dbias)
    dx = None
    if need_dx:
        dx = cuda.device_array((M, Fi), dy.dtype)
        gemm(dy.reshape((1, M, Fo)), weight.reshape((1, Fo, Fi)), dx.reshape((1, M, Fi)))
    return dx, dweight, dbias


# ---------------------------------------------------------------- cross-entropy

@cuda.jit
def _xent(logits, labels, probs, losses):
    """One thread per row: softmax into probs, lse - logit[label] into losses (float64);
    a label outside [0, K) writes -1 (a real loss is >= 0)."""
    M, K = logits.shape
    for r in range(cuda.grid(1), M, cuda.gridsize(1)):
        m = float64(logits[r, 0])
        for k in range(1, K):
            m = max(m, float64(logits[r, k]))
        s = 0.0
        for k in range(K):
            s += np.exp(float64(logits[r, k]) - m)
        lse = m + np.log(s)
        for k in range(K):
            probs[r, k] = np.exp(float64(logits[r, k]) - lse)
        lab = labels[r]
        if lab < 0 or lab >= K:
            losses[r] = -1.0
        else:
            losses[r] = lse - float64(logits[r, lab])


@cuda.jit
def _xent_backward(probs, labels, scale, dlogits):
    M, K = probs.shape
    for e in range(cuda.grid(1), M * K, cuda.gridsize(1)):
        r = e // K
        k = e % K
        g = float64(probs[r, k])
        if k == labels[r]:
            g -= 1.0
        dlogits[r, k] = g * scale


def cross_entropy_forward(logits, labels):
    """-> (summed loss as a Python float, probs on the device, number of bad labels).
    The only device-to-host copy of a training step: the N per-row losses."""
    M, K = logits.shape
    probs = cuda.device_array((M, K), logits.dtype)
    losses = cuda.device_array(M, np.float64)
    _launch_1d(_xent, M, logits, labels, probs, losses)
    host = losses.copy_to_host()
    bad = host < 0
    return float(np.sum(host[~bad])), probs, int(bad.sum())


def cross_entropy_backward(probs, labels, scale):
    dlogits = cuda.device_array(tuple(probs.shape), probs.dtype)
    _launch_1d(_xent_backward, _n(probs), probs, labels, scale, dlogits)
    return dlogits


# ---------------------------------------------------------------- optimizers

@cuda.jit
def _sgd(p, g, buf, lr, momentum, dampening, weight_decay, nesterov, first):
    for i in range(cuda.grid(1), p.shape[0], cuda.gridsize(1)):
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


def sgd_step(p, g, buf, lr, momentum, dampening, weight_decay, nesterov, first):
    _launch_1d(_sgd, _n(p), _flat(p), _flat(g), _flat(buf), float(lr), float(momentum),
               float(dampening), float(weight_decay), bool(nesterov), bool(first))


@cuda.jit
def _adam(p, g, m, v, lr, beta1, beta2, eps, weight_decay, bc1, bc2_sqrt):
    step_size = lr / bc1
    for i in range(cuda.grid(1), p.shape[0], cuda.gridsize(1)):
        d = float64(g[i]) + weight_decay * float64(p[i])
        mi = m[i] + (1.0 - beta1) * (d - m[i])
        vi = beta2 * v[i] + (1.0 - beta2) * d * d
        m[i] = mi
        v[i] = vi
        denom = np.sqrt(float64(v[i])) / bc2_sqrt + eps
        p[i] = p[i] - step_size * float64(m[i]) / denom


def adam_step(p, g, m, v, step, lr, beta1, beta2, eps, weight_decay):
    bc1 = 1.0 - beta1 ** step
    bc2_sqrt = (1.0 - beta2 ** step) ** 0.5
    _launch_1d(_adam, _n(p), _flat(p), _flat(g), _flat(m), _flat(v), float(lr), float(beta1),
               float(beta2), float(eps), float(weight_decay), bc1, bc2_sqrt)


# ---------------------------------------------------------------- array helpers

def zeros(shape, dtype):
    return _full(tuple(shape), 0.0, dtype)


def contiguous(a):
    """a as a C-contiguous Numba device array (foreign CUDA arrays wrapped zero-copy)."""
    return _contiguous(_wrap(a))


def labels(a):
    """Class labels on the device: host arrays copied as int64; device arrays as they are."""
    if isinstance(a, np.ndarray):
        return cuda.to_device(np.ascontiguousarray(a, dtype=np.int64))
    return _contiguous(_wrap(a))
