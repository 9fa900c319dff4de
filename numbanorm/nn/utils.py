"""BatchNorm folded into the preceding layer for inference (PyTorch's torch.nn.utils.fusion names).

In eval mode BatchNorm is a per-channel affine, so a Conv2d or Linear followed by it is one
layer with (per output channel o, s = bn.weight / sqrt(bn.running_var + bn.eps)):
    weight'[o] = weight[o] * s[o]
    bias'[o]   = (bias[o] - bn.running_mean[o]) * s[o] + bn.bias[o]
The math is done in float64 on the host and rounded once to the layer's dtype; new layers are
built with their constructors, so the inputs are never modified.
"""
import copy

import numpy as np

from .. import _backend
from ..functional._common import to_host
from .container import Sequential
from .conv import Conv2d
from .linear import Linear
from .module import Module
from .norm import BatchNorm1d, BatchNorm2d

__all__ = ["fuse_conv_bn_eval", "fuse_linear_bn_eval", "fuse_bn_eval"]




def _folded(layer, bn):
    """(weight, bias) of `layer` with `bn` (eval mode) folded in, float64 host arrays."""
    if layer.training or bn.training:
        raise ValueError(f"fusion is for eval mode only: call .eval() on the {type(layer).__name__} "
                         f"and the {type(bn).__name__} first")
    if bn.running_mean is None:
        raise ValueError(f"cannot fold {type(bn).__name__} without running statistics "
                         f"(track_running_stats=False)")
    w = to_host(layer.weight.data)
    out = w.shape[0]
    if bn.num_features != out:
        raise ValueError(f"{type(bn).__name__}({bn.num_features}) does not match the "
                         f"{out} outputs of the preceding {type(layer).__name__}")
    b = to_host(layer.bias.data) if layer.bias is not None else np.zeros(out)
    gamma = to_host(bn.weight.data) if bn.weight is not None else np.ones(out)
    beta = to_host(bn.bias.data) if bn.bias is not None else np.zeros(out)
    scale = gamma / np.sqrt(to_host(bn.running_var) + bn.eps)
    weight = w * scale.reshape((out,) + (1,) * (w.ndim - 1))
    bias = (b - to_host(bn.running_mean)) * scale + beta
    return weight, bias


def _with_params(new, weight, bias, like):
    """new (built by its constructor) given the folded parameters on like's device, eval mode."""
    new.weight.data = _backend.transfer(weight.astype(like.dtype), like.device)
    new.bias.data = _backend.transfer(bias.astype(like.dtype), like.device)
    return new.eval()


def fuse_conv_bn_eval(conv, bn):
    """A new Conv2d (with bias) equal to conv followed by bn, both in eval mode."""
    if type(conv) is not Conv2d or not isinstance(bn, BatchNorm2d):
        raise TypeError(f"fuse_conv_bn_eval takes a Conv2d and a BatchNorm2d, got "
                        f"{type(conv).__name__} and {type(bn).__name__}")
    weight, bias = _folded(conv, bn)
    new = Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                 padding=conv.padding, dilation=conv.dilation, groups=conv.groups, bias=True,
                 padding_mode=conv.padding_mode, dtype=conv.dtype, device=conv.device)
    return _with_params(new, weight, bias, conv)


def fuse_linear_bn_eval(linear, bn):
    """A new Linear (with bias) equal to linear followed by bn (a BatchNorm1d), both in eval mode."""
    if type(linear) is not Linear or not isinstance(bn, BatchNorm1d):
        raise TypeError(f"fuse_linear_bn_eval takes a Linear and a BatchNorm1d, got "
                        f"{type(linear).__name__} and {type(bn).__name__}")
    weight, bias = _folded(linear, bn)
    new = Linear(linear.in_features, linear.out_features, bias=True, dtype=linear.dtype,
                 device=linear.device)
    return _with_params(new, weight, bias, linear)


def _clone(module):
    """A deep copy of module with fresh parameter/buffer arrays and no saved forward state
    (device arrays are copied through the host; numba device arrays do not deep-copy)."""
    memo = {}
    for _, m in module.named_modules():
        memo[id(m.__dict__.get("_saved"))] = None
        arrays = [p.data for p in m._parameters.values() if p is not None]
        arrays += [b for b in m._buffers.values() if b is not None]
        for a in arrays:
            if not isinstance(a, np.ndarray):
                memo[id(a)] = _backend.transfer(_backend.transfer(a, "cpu"), "cuda")
    return copy.deepcopy(module, memo)


def fuse_bn_eval(model):
    """A new Sequential, in eval mode, in which every Conv2d followed directly by a BatchNorm2d
    and every Linear followed directly by a BatchNorm1d is one fused layer (nested Sequentials
    are fused too). Its eval-mode outputs equal model's to float rounding; model is unchanged.
    Other layers (StdConv2d, whose weight is standardized at every call, included) are copied.
    """
    if not isinstance(model, Module):
        raise TypeError(f"fuse_bn_eval takes a numbanorm.nn.Module, got {type(model).__name__}")
    layers = list(model) if isinstance(model, Sequential) else [model]
    out, i = [], 0
    while i < len(layers):
        layer = layers[i]
        nxt = layers[i + 1] if i + 1 < len(layers) else None
        pair = ((type(layer) is Conv2d and isinstance(nxt, BatchNorm2d)) or
                (type(layer) is Linear and isinstance(nxt, BatchNorm1d)))
        if pair and nxt.running_mean is not None:
            fuse = fuse_conv_bn_eval if type(layer) is Conv2d else fuse_linear_bn_eval
            out.append(fuse(_clone(layer).eval(), _clone(nxt).eval()))
            i += 2
            continue
        out.append(fuse_bn_eval(layer) if isinstance(layer, Sequential) else _clone(layer).eval())
        i += 1
    return Sequential(*out).eval()
