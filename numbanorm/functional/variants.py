"""BatchNorm's variants, built on the two kernel families (no kernels of their own):

  weight_standardization  a row norm without affine over a weight viewed as (O, prod(rest))
  batch_renorm            channel statistics, then the eval-mode channel kernel with
                          per-channel effective scale and shift

Masked statistics are batch_norm's `mask=` argument (numbanorm/functional/norm.py).
Shapes and return conventions as in norm.py: forward -> (y, saved), backward(dy, saved).
"""
import numpy as np

from .. import _backend
from .. import _validate as check
from ._common import Saved, check_saved, grad_output, on_backend, prod, to_host, update_running
from .norm import batch_norm, channel_inputs


# ---------------------------------------------------------------- Weight Standardization

def weight_standardization(weight, eps=1e-6):
    """Weight Standardization (Qiao et al. 2019; timm's StdConv2d convention).

    weight: (O, *rest) float array, rest non-empty (a Conv2d weight is (O, C, KH, KW)).
    Per output channel o, over all other dims: w_hat = (w - mean) / sqrt(var + eps), biased
    variance. Returns (w_hat, saved) for weight_standardization_backward.
    """
    be, a = _backend.select(weight=weight)
    w = a["weight"]
    dtype = check.float_array("weight", w)
    check.min_ndim("weight", w, 2, "(out_channels, *rest)")
    eps = check.eps(eps)
    O, M = int(w.shape[0]), prod(w.shape[1:])
    saved = Saved(op="weight_standardization", backend=be, shape=tuple(w.shape), dtype=dtype)
    if O * M == 0:
        return be.empty(tuple(w.shape), dtype), saved
    w2 = be.contiguous(w).reshape(O, M)
    one, zero = be.full((1,), 1.0, dtype), be.full((1,), 0.0, dtype)
    # the row kernel with G = Cg = 1, S = M: one row per output channel, a scalar affine of 1, 0
    w_hat, mean, rstd = be.row_norm.forward(w2, one, zero, 1, 1, M, eps)
    saved.x, saved.mean, saved.rstd, saved.weight, saved.spatial = w2, mean, rstd, one, M
    return w_hat.reshape(tuple(w.shape)), saved


def weight_standardization_backward(dw_hat, saved):
    """Gradient of weight_standardization: dweight, the shape of the weight."""
    check_saved(saved, "weight_standardization")
    be = saved.backend
    dw_hat = grad_output(dw_hat, saved)
    if saved.x is None:
        return be.empty(saved.shape, saved.dtype)
    dy = be.contiguous(dw_hat).reshape(saved.x.shape)
    dw, _, _ = be.row_norm.backward(saved.x, dy, saved.mean, saved.rstd, saved.weight, 1, 1,
                                    saved.spatial)
    return dw.reshape(saved.shape)


# ---------------------------------------------------------------- Batch Renormalization

def batch_renorm(x, weight, bias, running_mean, running_var, training=True, momentum=0.1,
                 eps=1e-5, rmax=3.0, dmax=5.0):
    """Batch Renormalization (Ioffe 2017) over x of shape (N, C) or (N, C, *spatial).

    weight, bias: (C,) or None; running_mean, running_var: (C,), required.
    Training, per channel over (N, *spatial): batch mean mu_B and biased variance var_B,
    sigma_B = sqrt(var_B + eps), sigma = sqrt(running_var + eps) with the running statistics
    as they were before this call, and
        r = clip(sigma_B / sigma, 1/rmax, rmax),  d = clip((mu_B - running_mean) / sigma, -dmax, dmax)
        y = ((x - mu_B) / sigma_B * r + d) * weight + bias
    r and d are constants for the backward. Then the running statistics update exactly as in
    batch_norm (momentum, unbiased variance). Eval: batch_norm in eval mode.
    rmax=1, dmax=0 gives batch_norm.
    """
    if running_mean is None or running_var is None:
        raise ValueError("batch_renorm needs running_mean and running_var")
    if isinstance(rmax, bool) or not isinstance(rmax, (int, float)) or not rmax >= 1.0:
        raise ValueError(f"rmax must be a number >= 1, got {rmax!r}")
    if isinstance(dmax, bool) or not isinstance(dmax, (int, float)) or not dmax >= 0.0:
        raise ValueError(f"dmax must be a number >= 0, got {dmax!r}")
    if not training:
        y, saved = batch_norm(x, weight, bias, running_mean, running_var, False, momentum, eps)
        saved.op = "batch_renorm"  # a Saved made here: batch_renorm_backward handles eval too
        return y, saved
    (be, x, weight, bias, running_mean, running_var, dtype, N, C, S, eps,
     momentum) = channel_inputs(x, weight, bias, running_mean, running_var, eps, momentum, 2)
    if N * S == 1:
        raise ValueError(f"Expected more than 1 value per channel when training, got input size "
                         f"{tuple(x.shape)} (N={N}, spatial size={S})")
    saved = Saved(op="batch_renorm", backend=be, family="channel", shape=tuple(x.shape),
                  dtype=dtype, has_weight=weight is not None, has_bias=bias is not None,
                  param_shape=(C,), training=True)
    if N * C * S == 0:
        return be.empty(tuple(x.shape), dtype), saved
    x3 = be.contiguous(x).reshape(N, C, S)
    mean_b, var_b = be.channel_norm.stats(x3)
    mu, var = to_host(mean_b), to_host(var_b)
    sigma = np.sqrt(to_host(running_var) + eps)
    r = np.clip(np.sqrt(var + eps) / sigma, 1.0 / rmax, rmax)
    d = np.clip((mu - to_host(running_mean)) / sigma, -dmax, dmax)
    w = to_host(weight) if weight is not None else np.ones(C)
    b = to_host(bias) if bias is not None else np.zeros(C)
    count = N * S
    update_running(be, running_mean, running_var, mu, var * (count / (count - 1)), momentum)
    # y = (x - mu_B) * rstd_B * (r*w) + (d*w + b): the eval-mode kernel with the batch statistics
    # effective parameters in x's dtype (the kernels' declared argument types)
    scale_w = on_backend(be, r * w, dtype)
    y3, mean, rstd = be.channel_norm.forward(x3, scale_w, on_backend(be, d * w + b, dtype), eps,
                                             False, mean_b, var_b, 0.0)
    saved.x, saved.mean, saved.rstd, saved.weight = x3, mean, rstd, scale_w
    saved.r, saved.d = r, d
    return y3.reshape(tuple(x.shape)), saved


def batch_renorm_backward(dy, saved):
    """Gradients of batch_renorm: (dx, dweight, dbias).

    With xhat = (x - mu_B) * rstd_B, y = xhat * (r*w) + (d*w + b) and r, d constant:
      dx      = BatchNorm's training backward with weight r*w
              = r*w*rstd_B * (dy - mean(dy) - xhat * mean(dy * xhat))
      dweight = r * sum(dy * xhat) + d * sum(dy),   dbias = sum(dy)
    (sums and means per channel over (N, *spatial)). Eval: batch_norm's eval backward.
    """
    check_saved(saved, "batch_renorm")
    be = saved.backend
    dy = grad_output(dy, saved)
    C = saved.param_shape[0]
    if saved.x is None:
        zeros = lambda: be.full((C,), 0.0, saved.dtype)
        return (be.empty(saved.shape, saved.dtype), zeros() if saved.has_weight else None,
                zeros() if saved.has_bias else None)
    dy3 = be.contiguous(dy).reshape(saved.x.shape)
    dx, sum_dy_xhat, sum_dy = be.channel_norm.backward(saved.x, dy3, saved.mean, saved.rstd,
                                                       saved.weight, saved.training)
    dw = db = None
    if saved.has_weight and saved.training:
        dw = on_backend(be, saved.r * to_host(sum_dy_xhat) + saved.d * to_host(sum_dy), saved.dtype)
    elif saved.has_weight:
        dw = be.cast(sum_dy_xhat, saved.dtype)
    if saved.has_bias:
        db = be.cast(sum_dy, saved.dtype)
    return dx.reshape(saved.shape), dw, db
