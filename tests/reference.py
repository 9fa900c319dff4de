"""Plain NumPy float64 reference implementations, written the textbook way (chain rule through
var and mean), deliberately unlike the fused kernels they check.

Every function takes and returns float64 arrays; shapes follow the PyTorch functional of the
same name.
"""
import numpy as np


def _normalize(x, axes, eps):
    mean = x.mean(axis=axes, keepdims=True)
    var = x.var(axis=axes, keepdims=True)  # biased
    return (x - mean) / np.sqrt(var + eps), mean, var


def _normalize_backward(dxhat, x, axes, eps):
    """Gradient through xhat = (x - mean) / sqrt(var + eps), mean/var over `axes`."""
    m = np.prod([x.shape[a] for a in axes])
    mean = x.mean(axis=axes, keepdims=True)
    var = x.var(axis=axes, keepdims=True)
    std_inv = 1.0 / np.sqrt(var + eps)
    xmu = x - mean
    dvar = np.sum(dxhat * xmu * -0.5 * std_inv**3, axis=axes, keepdims=True)
    dmean = np.sum(-dxhat * std_inv, axis=axes, keepdims=True) + dvar * np.mean(-2.0 * xmu, axis=axes, keepdims=True)
    return dxhat * std_inv + dvar * 2.0 * xmu / m + dmean / m


def _channel_shape(x):
    return (1, x.shape[1]) + (1,) * (x.ndim - 2)


def _affine(xhat, weight, bias, shape):
    y = xhat
    if weight is not None:
        y = y * weight.reshape(shape)
    if bias is not None:
        y = y + bias.reshape(shape)
    return y


def batch_norm(x, weight=None, bias=None, running_mean=None, running_var=None, training=True,
               momentum=0.1, eps=1e-5):
    """Returns (y, new_running_mean, new_running_var) (None when not given)."""
    axes = (0,) + tuple(range(2, x.ndim))
    cs = _channel_shape(x)
    if training:
        xhat, mean, var = _normalize(x, axes, eps)
        if running_mean is not None:
            n = x.size // x.shape[1]
            running_mean = (1 - momentum) * running_mean + momentum * mean.reshape(-1)
            running_var = (1 - momentum) * running_var + momentum * var.reshape(-1) * n / (n - 1)
    else:
        xhat = (x - running_mean.reshape(cs)) / np.sqrt(running_var.reshape(cs) + eps)
    return _affine(xhat, weight, bias, cs), running_mean, running_var


def batch_norm_backward(dy, x, weight=None, running_var=None, training=True, eps=1e-5):
    """(dx, dweight, dbias) of batch_norm."""
    axes = (0,) + tuple(range(2, x.ndim))
    cs = _channel_shape(x)
    w = weight.reshape(cs) if weight is not None else 1.0
    if training:
        xhat, _, _ = _normalize(x, axes, eps)
        dx = _normalize_backward(dy * w, x, axes, eps)
    else:
        raise NotImplementedError("use batch_norm_eval_backward")
    return dx, np.sum(dy * xhat, axis=axes), np.sum(dy, axis=axes)


def batch_norm_eval_backward(dy, x, weight, running_mean, running_var, eps=1e-5):
    axes = (0,) + tuple(range(2, x.ndim))
    cs = _channel_shape(x)
    std_inv = 1.0 / np.sqrt(running_var.reshape(cs) + eps)
    xhat = (x - running_mean.reshape(cs)) * std_inv
    w = weight.reshape(cs) if weight is not None else 1.0
    return dy * w * std_inv, np.sum(dy * xhat, axis=axes), np.sum(dy, axis=axes)


def layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5):
    axes = tuple(range(x.ndim - len(normalized_shape), x.ndim))
    xhat, _, _ = _normalize(x, axes, eps)
    shape = (1,) * (x.ndim - len(normalized_shape)) + tuple(normalized_shape)
    return _affine(xhat, weight, bias, shape)


def layer_norm_backward(dy, x, normalized_shape, weight=None, eps=1e-5):
    axes = tuple(range(x.ndim - len(normalized_shape), x.ndim))
    lead = tuple(range(x.ndim - len(normalized_shape)))
    xhat, _, _ = _normalize(x, axes, eps)
    w = weight if weight is not None else 1.0
    return _normalize_backward(dy * w, x, axes, eps), np.sum(dy * xhat, axis=lead), np.sum(dy, axis=lead)


def group_norm(x, num_groups, weight=None, bias=None, eps=1e-5):
    N, C = x.shape[:2]
    xg = x.reshape(N, num_groups, -1)
    xhat, _, _ = _normalize(xg, (2,), eps)
    return _affine(xhat.reshape(x.shape), weight, bias, _channel_shape(x))


def group_norm_backward(dy, x, num_groups, weight=None, eps=1e-5):
    N, C = x.shape[:2]
    cs = _channel_shape(x)
    axes = (0,) + tuple(range(2, x.ndim))
    w = weight.reshape(cs) if weight is not None else 1.0
    xg = x.reshape(N, num_groups, -1)
    xhat = _normalize(xg, (2,), eps)[0].reshape(x.shape)
    dxhat = (dy * w).reshape(N, num_groups, -1)
    dx = _normalize_backward(dxhat, xg, (2,), eps).reshape(x.shape)
    return dx, np.sum(dy * xhat, axis=axes), np.sum(dy, axis=axes)


def instance_norm(x, weight=None, bias=None, running_mean=None, running_var=None, momentum=0.1, eps=1e-5):
    """Input statistics; running stats (when given) get the per-instance stats averaged over N."""
    axes = tuple(range(2, x.ndim))
    xhat, mean, var = _normalize(x, axes, eps)
    if running_mean is not None:
        n = np.prod(x.shape[2:])
        running_mean = (1 - momentum) * running_mean + momentum * mean.reshape(x.shape[:2]).mean(0)
        running_var = (1 - momentum) * running_var + momentum * (var.reshape(x.shape[:2]) * n / (n - 1)).mean(0)
    return _affine(xhat, weight, bias, _channel_shape(x)), running_mean, running_var


def instance_norm_backward(dy, x, weight=None, eps=1e-5):
    axes = tuple(range(2, x.ndim))
    cs = _channel_shape(x)
    w = weight.reshape(cs) if weight is not None else 1.0
    xhat = _normalize(x, axes, eps)[0]
    dx = _normalize_backward(dy * w, x, axes, eps)
    paxes = (0,) + axes
    return dx, np.sum(dy * xhat, axis=paxes), np.sum(dy, axis=paxes)


# ---------------------------------------------------------------- BatchNorm's variants

def weight_standardization(w, eps=1e-6):
    """Per output channel (dim 0) over all other dims: (w - mean) / sqrt(var + eps)."""
    return _normalize(w, tuple(range(1, w.ndim)), eps)[0]


def weight_standardization_backward(dw_hat, w, eps=1e-6):
    return _normalize_backward(dw_hat, w, tuple(range(1, w.ndim)), eps)


def batch_renorm_r_d(x, running_mean, running_var, eps=1e-5, rmax=3.0, dmax=5.0):
    """Batch Renormalization's per-channel r and d (constants for the backward)."""
    axes = (0,) + tuple(range(2, x.ndim))
    sigma_b = np.sqrt(x.var(axis=axes) + eps)
    sigma = np.sqrt(running_var + eps)
    r = np.clip(sigma_b / sigma, 1.0 / rmax, rmax)
    d = np.clip((x.mean(axis=axes) - running_mean) / sigma, -dmax, dmax)
    return r, d


def batch_renorm(x, weight, bias, running_mean, running_var, momentum=0.1, eps=1e-5, rmax=3.0,
                 dmax=5.0, r_d=None):
    """Training mode: (y, new_running_mean, new_running_var). r_d=(r, d) fixes r and d (to
    differentiate with them held constant)."""
    r, d = batch_renorm_r_d(x, running_mean, running_var, eps, rmax, dmax) if r_d is None else r_d
    axes = (0,) + tuple(range(2, x.ndim))
    cs = _channel_shape(x)
    xhat, _, _ = _normalize(x, axes, eps)
    y = _affine(xhat * r.reshape(cs) + d.reshape(cs), weight, bias, cs)
    _, rm, rv = batch_norm(x, None, None, running_mean, running_var, True, momentum, eps)
    return y, rm, rv


def batch_renorm_backward(dy, x, weight, running_mean, running_var, eps=1e-5, rmax=3.0, dmax=5.0):
    r, d = batch_renorm_r_d(x, running_mean, running_var, eps, rmax, dmax)
    axes = (0,) + tuple(range(2, x.ndim))
    cs = _channel_shape(x)
    w = weight.reshape(cs) if weight is not None else 1.0
    xhat, _, _ = _normalize(x, axes, eps)
    dx = _normalize_backward(dy * w * r.reshape(cs), x, axes, eps)
    return dx, np.sum(dy * (xhat * r.reshape(cs) + d.reshape(cs)), axis=axes), np.sum(dy, axis=axes)


def masked_batch_norm(x, weight, bias, mask, running_mean=None, running_var=None, momentum=0.1,
                      eps=1e-5):
    """Training-mode BatchNorm whose statistics come from the positions where mask (bool, (N,)
    or (N, *spatial)) is True; every position is normalized. Returns (y, rm, rv)."""
    cs = _channel_shape(x)
    m = np.broadcast_to(mask.reshape(mask.shape + (1,) * (x.ndim - 1 - mask.ndim)),
                        (x.shape[0],) + x.shape[2:])
    sel = np.moveaxis(x, 1, -1)[m]  # (K, C)
    k = sel.shape[0]
    mean, var = sel.mean(axis=0), sel.var(axis=0)
    y = _affine((x - mean.reshape(cs)) / np.sqrt(var.reshape(cs) + eps), weight, bias, cs)
    if running_mean is not None:
        running_mean = (1 - momentum) * running_mean + momentum * mean
        running_var = (1 - momentum) * running_var + momentum * var * k / (k - 1)
    return y, running_mean, running_var


def masked_batch_norm_backward(dy, x, weight, mask, eps=1e-5):
    """(dx, dweight, dbias) by the chain rule through the selected mean and variance."""
    cs = _channel_shape(x)
    axes = (0,) + tuple(range(2, x.ndim))
    m = np.broadcast_to(mask.reshape(mask.shape + (1,) * (x.ndim - 1 - mask.ndim)),
                        (x.shape[0],) + x.shape[2:])
    sel = np.moveaxis(x, 1, -1)[m]
    k = sel.shape[0]
    mean, var = sel.mean(axis=0).reshape(cs), sel.var(axis=0).reshape(cs)
    std_inv = 1.0 / np.sqrt(var + eps)
    w = weight.reshape(cs) if weight is not None else 1.0
    xmu = x - mean
    dxhat = dy * w
    mf = np.expand_dims(m, 1).astype(np.float64)  # (N, 1, *spatial): selected positions
    dvar = np.sum(dxhat * xmu * -0.5 * std_inv**3, axis=axes, keepdims=True)
    dmean = np.sum(-dxhat * std_inv, axis=axes, keepdims=True)  # d var / d mean = 0 over the selection
    dx = dxhat * std_inv + mf * (dvar * 2.0 * xmu / k + dmean / k)
    return dx, np.sum(dy * xmu * std_inv, axis=axes), np.sum(dy, axis=axes)


# ---------------------------------------------------------------- helpers of the tests that use it

def f64(a):
    """a as a float64 NumPy array (None stays None)."""
    return None if a is None else np.asarray(a, np.float64)


def tol(dtype):
    """assert_allclose tolerances of a CPU kernel's result in dtype against this reference."""
    return dict(rtol=1e-4, atol=1e-4) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-10)


def numeric_grad(f, a, h=1e-6):
    """Central differences of the scalar f() with respect to every element of a (a C-contiguous
    array, changed in place and restored)."""
    g = np.zeros_like(a)
    flat, gflat = a.reshape(-1), g.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + h
        fp = f()
        flat[i] = old - h
        fm = f()
        flat[i] = old
        gflat[i] = (fp - fm) / (2 * h)
    return g
