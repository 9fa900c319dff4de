"""Normalization ops: BatchNorm, LayerNorm, GroupNorm, InstanceNorm, with hand-written backwards.

Each forward returns ``(y, saved)``; the matching backward takes ``(dy, saved)`` and returns
``(dx, dweight, dbias)`` with None for a gradient whose parameter was None. Inputs are NumPy
arrays (CPU backend) or CUDA arrays (GPU backend); outputs live where the input lives.

Two kernel families do all the work (see numbanorm/cpu):
  channel_norm  statistics per channel over (N, *spatial): BatchNorm, InstanceNorm in eval
  row_norm      statistics per row of an (N*G, M) view: LayerNorm, GroupNorm, InstanceNorm

Formulas (biased variance for normalization, unbiased for running_var):
  y = (x - mean) / sqrt(var + eps) * weight + bias
  running = (1 - momentum) * running + momentum * batch_statistic

float16/bfloat16 x and channels-last x: see _formats.py.

`saved` keeps a reference to x and weight (no copy; for float16 parameters, their float32 copies): do not modify them in place between a
forward and its backward, it changes the gradient. Debug mode (numbanorm.set_debug(True) or
NUMBANORM_DEBUG=1) makes the backward raise RuntimeError when they were modified.
"""
import functools

import numpy as np

from .. import _backend
from .. import _validate as check
from ._common import (Array, Saved, check_saved, grad_output, on_backend, prod, to_host,
                      update_running)
from ._formats import accepts_half, from_channels_last, is_channels_last, param_dtype

Grads = tuple[Array, Array | None, Array | None]  # (dx, dweight, dbias)


def _empty_result(be, x, family, dtype, weight, bias, param_shape):
    """An empty batch: empty output, nothing computed, no running statistic touched."""
    saved = Saved(op=family, backend=be, family=family, shape=tuple(x.shape), dtype=dtype, x=None,
                  has_weight=weight is not None, has_bias=bias is not None,
                  param_shape=param_shape)
    return be.empty(tuple(x.shape), dtype), saved


# ---------------------------------------------------------------- BatchNorm

def channel_inputs(x: Array, weight: Array | None, bias: Array | None, running_mean: Array | None,
                   running_var: Array | None, eps: float, momentum: float, min_ndim: int,
                   dtypes: tuple = check.FLOAT_DTYPES) -> tuple:
    """Dispatch and check the arguments of a per-channel op (BatchNorm, InstanceNorm, SyncBN).

    Returns (backend, x, weight, bias, running_mean, running_var, dtype, N, C, S, eps, momentum)
    with the arrays as the backend computes on them and S = prod(spatial). dtypes: x's accepted
    dtypes (the message's list); float16 x comes with float32 parameters (see _formats.accepts_half).
    """
    if (_common_case(x, min_ndim, eps, (weight, bias, running_mean, running_var))
            and (running_mean is None) == (running_var is None)
            and type(momentum) is float and 0 <= momentum <= 1):
        # the common case, every check below passes: the same result without the calls
        N, C = x.shape[0], x.shape[1]
        return (_backend.get("cpu"), x, weight, bias, running_mean, running_var, x.dtype,
                N, C, x.size // (N * C), eps, momentum)
    be, a = _backend.select(x=x, weight=weight, bias=bias,
                            running_mean=running_mean, running_var=running_var)
    x, weight, bias, running_mean, running_var = a.values()
    dtype = check.float_array("x", x, dtypes)
    check.min_ndim("x", x, min_ndim, "(N, C) or (N, C, *spatial)" if min_ndim == 2 else "(N, C, *spatial)")
    N, C = int(x.shape[0]), int(x.shape[1])
    shape = (C,)
    p_dtype = param_dtype(dtype)
    check.param("weight", weight, shape, p_dtype)
    check.param("bias", bias, shape, p_dtype)
    check.param("running_mean", running_mean, shape, p_dtype)
    check.param("running_var", running_var, shape, p_dtype)
    check.running_pair(running_mean, running_var)
    return (be, x, weight, bias, running_mean, running_var, dtype,
            N, C, prod(x.shape[2:]), check.eps(eps), check.momentum(momentum))


def _common_case(x, min_ndim, eps, params):
    """Whether x and eps pass every check of the ops' general path, and x is the simple kind:
    a C-contiguous, non-empty float32/float64 NumPy array of at least min_ndim dims, each of
    params None or a NumPy (C,) array of x's dtype (C = x.shape[1]; the dtype object itself:
    `is`, cheaper than ==; an equal copy takes the general path), eps a positive float."""
    if not (type(x) is np.ndarray and x.dtype in check.FLOAT_DTYPES and x.ndim >= min_ndim
            and x.size > 0 and x.flags.c_contiguous and type(eps) is float and eps > 0):
        return False
    dtype, shape = x.dtype, x.shape[1:2]
    for p in params:
        if p is not None and not (type(p) is np.ndarray and p.dtype is dtype and p.shape == shape):
            return False
    return True


def batch_norm(x: Array, weight: Array | None = None, bias: Array | None = None,
               running_mean: Array | None = None, running_var: Array | None = None,
               training: bool = True, momentum: float = 0.1, eps: float = 1e-5,
               mask: Array | None = None) -> tuple[Array, Saved]:
    """BatchNorm over x of shape (N, C) or (N, C, *spatial); statistics per channel.

    weight, bias, running_mean, running_var: (C,) arrays of x's dtype, or None (float16 x: see
    the module docstring).
    training=True normalizes with batch statistics (updating running stats in place when
    given); training=False normalizes with running_mean / running_var.

    mask: None, or a boolean array of shape (N,) or (N, *spatial) on x's device (padded
    batches, variable-size inputs). In training the statistics come from the selected
    positions only (K of them per channel: mean and biased variance for normalizing, the
    unbiased variance var * K / (K - 1) for running_var) and every position is normalized
    with them; fewer than 2 selected values is a ValueError. In eval the mask changes nothing.
    The backward is the exact gradient of that function (see masked_channel_norm.backward_from_sums).
    On the GPU a training mask costs host copies on the op's stream (the mask, to check the count
    before anything changes, and the statistics for the running update): it waits for the stream.
    """
    if (mask is None and _common_case(x, 2, eps, (weight, bias, running_mean, running_var))
            and (running_mean is None) == (running_var is None)
            and type(momentum) is float and 0 <= momentum <= 1
            and (training is True and x.size > x.shape[1]
                 or training is False and running_mean is not None)):
        # the common case, every check of _batch_norm passes: the same result in fewer steps
        shape = x.shape
        N, C = shape[0], shape[1]
        x3 = x.reshape(N, C, x.size // (N * C))
        be = _backend.get("cpu")
        y3, mean, rstd = be.channel_norm.forward(x3, weight, bias, eps, training,
                                                 running_mean, running_var, momentum)
        saved = Saved("channel", be, shape, x.dtype, "channel", x3, mean, rstd, weight,
                      weight is not None, bias is not None, training, (C,))
        return y3.reshape(shape), saved
    return _batch_norm(x, weight, bias, running_mean, running_var, training, momentum, eps, mask)


@accepts_half("weight", "bias", running=("running_mean", "running_var"))
def _batch_norm(x, weight, bias, running_mean, running_var, training, momentum, eps, mask):
    """batch_norm's general path: any backend, dtype, memory order, mask; every check."""
    (be, x, weight, bias, running_mean, running_var, dtype, N, C, S, eps,
     momentum) = channel_inputs(x, weight, bias, running_mean, running_var, eps, momentum, 2,
                                 check.NORM_DTYPES)
    if not training and running_mean is None:
        raise ValueError("batch_norm with training=False needs running_mean and running_var")
    if mask is not None:
        mask_host, mask_kernel = mask_input(be, mask, x.shape)
        if training:
            return _masked_batch_norm(be, x, weight, bias, running_mean, running_var, dtype,
                                      N, C, S, eps, momentum, mask_host, mask_kernel)
    if training and N * S == 1:
        raise ValueError(
            f"Expected more than 1 value per channel when training, got x of shape "
            f"{tuple(x.shape)} (N={N}, spatial size={S})"
        )
    training = training is True or bool(training)
    shape = tuple(x.shape)
    if N * C * S == 0:
        return _empty_result(be, x, "channel", dtype, weight, bias, (C,))
    channels_last = is_channels_last(be, x)
    if channels_last:  # per-column statistics of the (N*S, C) view: the S == 1 kernels
        x3 = be.moveaxis(x, 1, -1).reshape(N * S, C, 1)
    else:
        x3 = be.contiguous(x).reshape(N, C, S)
    y3, mean, rstd = be.channel_norm.forward(x3, weight, bias, eps, training,
                                             running_mean, running_var, momentum)
    saved = Saved("channel", be, shape, dtype, "channel", x3, mean, rstd, weight,
                  weight is not None, bias is not None, training, (C,), channels_last=channels_last)
    if channels_last:
        return from_channels_last(be, y3, shape), saved
    return y3.reshape(shape), saved


def batch_norm_backward(dy: Array, saved: Saved) -> Grads:
    """Gradients of batch_norm: (dx, dweight, dbias), dweight/dbias of shape (C,).

    Takes dy (the forward output's shape, dtype and device) and the forward's `saved`, and checks
    both (ValueError/TypeError naming dy or saved; in debug mode RuntimeError when an array the
    forward saved was modified in place) before computing. Returns (dx, dweight, dbias), None
    for a parameter the forward did not get. Consumes nothing: saved stays valid, so a rejected
    call can be corrected and retried."""
    return _backward(dy, saved, "channel")


def mask_input(be, mask, x_shape):
    """Check a BatchNorm mask against x's shape and backend.

    Returns (host, kernel): host, a NumPy bool (N, S) copy for counting; kernel, the same
    selection as a C-contiguous uint8 (N, S) array on the backend for the kernels.
    """
    N, S = int(x_shape[0]), prod(x_shape[2:])
    device = _backend.device_of(mask)
    if device != be.name:
        raise ValueError(f"mask must be on x's device ({be.name}), got "
                         f"{device or type(mask).__module__ + '.' + type(mask).__qualname__}")
    if np.dtype(mask.dtype) != np.bool_:
        raise TypeError(f"mask must have dtype bool, got {np.dtype(mask.dtype)}")
    allowed = ((N,), (N,) + tuple(int(d) for d in x_shape[2:]))
    if tuple(mask.shape) not in allowed:
        raise ValueError(f"mask must have shape {allowed[0]} or {allowed[1]} for x of shape "
                         f"{tuple(x_shape)}, got {tuple(mask.shape)}")
    host = np.empty((N, S), np.bool_)  # a fresh array: canonical strides, also for S == 1
    host[...] = np.asarray(_backend.transfer(mask, "cpu")).reshape(N, -1)
    return host, on_backend(be, host.view(np.uint8), np.uint8)


def _masked_batch_norm(be, x, weight, bias, running_mean, running_var, dtype, N, C, S, eps,
                       momentum, mask_host, mask_kernel):
    """Training-mode batch_norm with statistics over the selected positions (see batch_norm)."""
    count = int(mask_host.sum())
    if count < 2:
        raise ValueError(f"Expected more than 1 selected value per channel when training, got "
                         f"{count} (mask selects {count} of the {N * S} positions of x of shape "
                         f"{tuple(x.shape)})")
    x3 = be.contiguous(x).reshape(N, C, S)
    first = int(np.argmax(mask_host.reshape(-1)))
    mean, var = be.masked_channel_norm.stats(x3, mask_kernel, first // S, first % S, count)
    if running_mean is not None:
        update_running(be, running_mean, running_var, to_host(mean),
                       to_host(var) * (count / (count - 1)), momentum)
    # normalize every position with the selected statistics: the eval-mode kernel
    y3, mean, rstd = be.channel_norm.forward(x3, weight, bias, eps, False, mean, var, 0.0)
    saved = Saved(op="channel", backend=be, family="channel", shape=tuple(x.shape), dtype=dtype,
                  x=x3, mean=mean, rstd=rstd, weight=weight, has_weight=weight is not None,
                  has_bias=bias is not None, param_shape=(C,), training=True,
                  mask=mask_kernel, count=count)
    return y3.reshape(tuple(x.shape)), saved


# ---------------------------------------------------------------- row norms

@functools.lru_cache(maxsize=64)
def _constant(be, shape, value, dtype):
    """A shared read-only-by-convention array of `value` (kernels never write their weight/bias);
    on the GPU filled before any stream can read it."""
    return be.full(shape, value, dtype, shared=True)


def _row_forward(be, x, dtype, weight, bias, eps, N, G, Cg, S, param_shape, channels_last=False):
    """Run the row kernel on x viewed as (N*G, Cg*S), or, channels_last, on its (N, S, C)
    memory; absent weight/bias become ones/zeros."""
    w = weight if weight is not None else _constant(be, (G * Cg,), 1.0, param_dtype(dtype))
    b = bias if bias is not None else _constant(be, (G * Cg,), 0.0, param_dtype(dtype))
    if channels_last:
        x2 = be.moveaxis(x, 1, -1).reshape(N, S, G * Cg)
        y2, mean, rstd = be.row_norm_channels_last.forward(x2, w, b, G, Cg, eps)
    else:
        x2 = be.contiguous(x).reshape(N * G, Cg * S)
        y2, mean, rstd = be.row_norm.forward(x2, w, b, G, Cg, S, eps)
    shape = tuple(x.shape)
    saved = Saved("row", be, shape, dtype, "row", x2, mean, rstd, w, weight is not None,
                  bias is not None, True, param_shape, G, Cg, S, channels_last)
    if channels_last:
        return from_channels_last(be, y2, shape), saved
    return y2.reshape(shape), saved


def layer_norm(x: Array, normalized_shape: int | tuple[int, ...], weight: Array | None = None,
               bias: Array | None = None, eps: float = 1e-5) -> tuple[Array, Saved]:
    """LayerNorm over the trailing `normalized_shape` dims of x; weight/bias have that shape."""
    if (type(x) is np.ndarray and x.dtype in check.FLOAT_DTYPES and type(normalized_shape) is tuple
            and len(normalized_shape) == 1 and x.ndim >= 2 and x.shape[-1] == normalized_shape[0]
            and type(normalized_shape[0]) is int and x.shape[-1] > 0 and x.size > 0
            and _row_params(x, weight, bias) and type(eps) is float and eps > 0):
        # the common case, every check of _layer_norm passes: _row_forward's work, inline
        M = normalized_shape[0]
        be, shape, dtype = _backend.get("cpu"), x.shape, x.dtype
        w = weight if weight is not None else _constant(be, (M,), 1.0, dtype)
        b = bias if bias is not None else _constant(be, (M,), 0.0, dtype)
        x2 = np.ascontiguousarray(x).reshape(x.size // M, M)
        y2, mean, rstd = be.row_norm.forward(x2, w, b, 1, M, 1, eps)
        saved = Saved("row", be, shape, dtype, "row", x2, mean, rstd, w, weight is not None,
                      bias is not None, True, normalized_shape, 1, M, 1)
        return y2.reshape(shape), saved
    return _layer_norm(x, normalized_shape, weight, bias, eps)


@accepts_half("weight", "bias")
def _layer_norm(x, normalized_shape, weight, bias, eps):
    """layer_norm's general path: any backend, dtype and shape; every check."""
    be, a = _backend.select(x=x, weight=weight, bias=bias)
    x, weight, bias = a.values()
    dtype = check.float_array("x", x, check.NORM_DTYPES)
    shape = check.normalized_shape(normalized_shape)
    x_shape = tuple(x.shape)
    lead = len(x_shape) - len(shape)
    if lead < 0 or x_shape[lead:] != shape:
        raise ValueError(
            f"x's trailing dims must equal normalized_shape {shape}, got x of shape {x_shape}"
        )
    check.param("weight", weight, shape, param_dtype(dtype))
    check.param("bias", bias, shape, param_dtype(dtype))
    eps = check.eps(eps)
    M = prod(shape)
    R = prod(x_shape[:lead])
    if R * M == 0:
        return _empty_result(be, x, "row", dtype, weight, bias, shape)
    return _row_forward(be, x, dtype, _flat(be, weight, M), _flat(be, bias, M), eps, R, 1, M, 1,
                        shape)


def _row_params(x, *params):
    """Whether each of params is None or a C-contiguous NumPy (M,) array of x's dtype,
    M = x.shape[-1]."""
    for p in params:
        if p is not None and not (type(p) is np.ndarray and p.dtype is x.dtype and p.ndim == 1
                                  and p.shape[0] == x.shape[-1] and p.flags.c_contiguous):
            return False
    return True


def _flat(be, p, M):
    """A LayerNorm parameter as a contiguous (M,) array (None stays None)."""
    if p is None or (len(p.shape) == 1 and be.is_contiguous(p)):
        return p
    return be.contiguous(p).reshape(M)


def layer_norm_backward(dy: Array, saved: Saved) -> Grads:
    """Gradients of layer_norm: (dx, dweight, dbias), dweight/dbias of normalized_shape.

    Takes dy (the forward output's shape, dtype and device) and the forward's `saved`, and checks
    both (ValueError/TypeError naming dy or saved; in debug mode RuntimeError when an array the
    forward saved was modified in place) before computing. Returns (dx, dweight, dbias), None
    for a parameter the forward did not get. Consumes nothing: saved stays valid, so a rejected
    call can be corrected and retried."""
    return _backward(dy, saved, "row")


def group_norm(x: Array, num_groups: int, weight: Array | None = None, bias: Array | None = None,
               eps: float = 1e-5) -> tuple[Array, Saved]:
    """GroupNorm: x of shape (N, C, *spatial), statistics per (sample, group of C/num_groups
    channels); weight/bias are per channel, shape (C,)."""
    if (_common_case(x, 2, eps, (weight, bias)) and type(num_groups) is int and num_groups > 0
            and x.shape[1] % num_groups == 0):
        # the common case, every check of _group_norm passes: the same result in fewer steps
        N, C = x.shape[0], x.shape[1]
        return _row_forward(_backend.get("cpu"), x, x.dtype, weight, bias, eps, N, num_groups,
                            C // num_groups, x.size // (N * C), (C,))
    return _group_norm(x, num_groups, weight, bias, eps)


@accepts_half("weight", "bias")
def _group_norm(x, num_groups, weight, bias, eps):
    """group_norm's general path: any backend, dtype and memory order; every check."""
    be, a = _backend.select(x=x, weight=weight, bias=bias)
    x, weight, bias = a.values()
    dtype = check.float_array("x", x, check.NORM_DTYPES)
    check.min_ndim("x", x, 2, "(N, C, *spatial)")
    N, C = int(x.shape[0]), int(x.shape[1])
    G = check.num_groups(num_groups, C)
    check.param("weight", weight, (C,), param_dtype(dtype))
    check.param("bias", bias, (C,), param_dtype(dtype))
    eps = check.eps(eps)
    S = prod(x.shape[2:])
    if N * C * S == 0:
        return _empty_result(be, x, "row", dtype, weight, bias, (C,))
    return _row_forward(be, x, dtype, weight, bias, eps, N, G, C // G, S, (C,),
                        is_channels_last(be, x))


def group_norm_backward(dy: Array, saved: Saved) -> Grads:
    """Gradients of group_norm: (dx, dweight, dbias), dweight/dbias of shape (C,).

    Takes dy (the forward output's shape, dtype and device) and the forward's `saved`, and checks
    both (ValueError/TypeError naming dy or saved; in debug mode RuntimeError when an array the
    forward saved was modified in place) before computing. Returns (dx, dweight, dbias), None
    for a parameter the forward did not get. Consumes nothing: saved stays valid, so a rejected
    call can be corrected and retried."""
    return _backward(dy, saved, "row")


@accepts_half("weight", "bias", running=("running_mean", "running_var"))
def instance_norm(x: Array, weight: Array | None = None, bias: Array | None = None,
                  running_mean: Array | None = None, running_var: Array | None = None,
                  use_input_stats: bool = True, momentum: float = 0.1,
                  eps: float = 1e-5) -> tuple[Array, Saved]:
    """InstanceNorm: x of shape (N, C, *spatial), statistics per (sample, channel).

    With use_input_stats and running stats given, the running stats are updated in place with
    the per-instance statistics averaged over the batch; use_input_stats=False normalizes with
    running_mean / running_var instead.
    """
    (be, x, weight, bias, running_mean, running_var, dtype, N, C, S, eps,
     momentum) = channel_inputs(x, weight, bias, running_mean, running_var, eps, momentum, 3,
                                 check.NORM_DTYPES)
    if not use_input_stats:
        if running_mean is None:
            raise ValueError("instance_norm with use_input_stats=False needs running_mean and running_var")
        return batch_norm(x, weight, bias, running_mean, running_var, False, momentum, eps)
    if S == 1:
        raise ValueError(
            f"Expected more than 1 spatial element when training, got x of shape {tuple(x.shape)}"
        )
    if N * C * S == 0:
        return _empty_result(be, x, "row", dtype, weight, bias, (C,))
    y, saved = _row_forward(be, x, dtype, weight, bias, eps, N, C, 1, S, (C,),
                            is_channels_last(be, x))
    if running_mean is not None:
        be.row_norm.instance_running_update(saved.mean, saved.rstd, eps, N, C, S,
                                            running_mean, running_var, momentum)
    return y, saved


def instance_norm_backward(dy: Array, saved: Saved) -> Grads:
    """Gradients of instance_norm: (dx, dweight, dbias), dweight/dbias of shape (C,).

    Takes dy (the forward output's shape, dtype and device) and the forward's `saved`, and checks
    both (ValueError/TypeError naming dy or saved; in debug mode RuntimeError when an array the
    forward saved was modified in place) before computing. Returns (dx, dweight, dbias), None
    for a parameter the forward did not get. Consumes nothing: saved stays valid, so a rejected
    call can be corrected and retried."""
    return _backward(dy, saved, getattr(saved, "family", None) or "row")


# ---------------------------------------------------------------- shared backward

def _backward(dy, saved, family):
    if type(saved) is not Saved or saved.op != family or saved.fingerprints is not None:
        check_saved(saved, family)  # (the common case passes it: the test above, inline)
    be = saved.backend
    if not (type(dy) is np.ndarray and dy.shape == saved.shape and dy.dtype is saved.dtype
            and be.name == "cpu"):
        dy = grad_output(dy, saved)  # (the common case passes it: the test above, inline)
    param_dtype = saved.param_dtype or saved.dtype
    if saved.x is None:  # empty batch: zero parameter gradients
        zeros = lambda: be.full(saved.param_shape, 0.0, param_dtype)
        return (be.empty(saved.shape, saved.dtype),
                zeros() if saved.has_weight else None, zeros() if saved.has_bias else None)
    if saved.channels_last:
        dy = be.moveaxis(dy, 1, -1)  # a view of a channels-last dy, else copied below
    dy_view = (dy if type(dy) is np.ndarray and dy.flags.c_contiguous
               else be.contiguous(dy)).reshape(saved.x.shape)
    if family == "channel" and saved.mask is not None:
        sums = be.channel_norm.backward_sums(saved.x, dy_view, saved.mean)
        dx, dweight, dbias = be.masked_channel_norm.backward_from_sums(
            saved.x, dy_view, saved.mean, saved.rstd, saved.weight, saved.mask, *sums, saved.count)
    elif family == "channel" and not saved.training and not (saved.has_weight or saved.has_bias):
        # constant statistics and no parameter gradient wanted: dx = w * rstd * dy, no reduction
        zeros = be.full((saved.x.shape[1],), 0.0, np.float64)
        dx, dweight, dbias = be.channel_norm.backward_from_sums(
            saved.x, dy_view, saved.mean, saved.rstd, saved.weight, False, zeros, zeros, 1)
    elif family == "channel":
        dx, dweight, dbias = be.channel_norm.backward(saved.x, dy_view, saved.mean, saved.rstd,
                                                      saved.weight, saved.training)
    elif saved.channels_last:
        dx, dweight, dbias = be.row_norm_channels_last.backward(
            saved.x, dy_view, saved.mean, saved.rstd, saved.weight, saved.groups,
            saved.channels_per_group)
    else:
        dx, dweight, dbias = be.row_norm.backward(saved.x, dy_view, saved.mean, saved.rstd,
                                                  saved.weight, saved.groups,
                                                  saved.channels_per_group, saved.spatial)
    shape = saved.param_shape
    if not saved.has_weight:
        dweight = None
    elif dweight.dtype is not param_dtype or dweight.shape != shape:
        dweight = _param_grad(be, dweight, param_dtype, shape)
    if not saved.has_bias:
        dbias = None
    elif dbias.dtype is not param_dtype or dbias.shape != shape:
        dbias = _param_grad(be, dbias, param_dtype, shape)
    dx = from_channels_last(be, dx, saved.shape) if saved.channels_last else dx.reshape(saved.shape)
    return (dx if dx.dtype is saved.dtype else be.cast(dx, saved.dtype)), dweight, dbias


def _param_grad(be, grad, dtype, shape):
    """A kernel's (C,) parameter gradient as the parameter's dtype and shape (the checks
    before its calls use `is`: an equal dtype object also comes here, and cast keeps it)."""
    grad = be.cast(grad, dtype)
    return grad if grad.shape == shape else grad.reshape(shape)
