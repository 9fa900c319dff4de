"""Convolution: conv2d with stride, padding, dilation, groups and PyTorch's padding modes.

Shapes: x (N, C, H, W), weight (O, C // groups, KH, KW), bias (O,) or None ->
y (N, O, OH, OW), OH = (H + 2*ph - dh*(KH - 1) - 1) // sh + 1 (likewise OW).
padding_mode 'zeros' pads inside the kernels; 'reflect', 'replicate' and 'circular' pad x first
(numbanorm.functional.pad semantics) and convolve the padded input with no padding.
"""
from .. import _backend, _shapes
from .. import _validate as check
from ._common import Saved, check_saved, grad_output
from .pad import pad2d, pad2d_backward

PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, padding_mode="zeros"):
    """2-D cross-correlation (PyTorch's conv2d). Returns (y, saved) for conv2d_backward."""
    be, a = _backend.select(x=x, weight=weight, bias=bias)
    x, weight, bias = a["x"], a["weight"], a["bias"]
    dtype = check.float_array("x", x)
    check.ndim("x", x, (4,), "(N, C, H, W)")
    check.ndim("weight", weight, (4,), "(out_channels, in_channels // groups, KH, KW)")
    check.same_dtype("weight", weight, dtype)
    stride = check.pair("stride", stride)
    padding = check.pair("padding", padding, minimum=0)
    dilation = check.pair("dilation", dilation)
    groups = check.positive_int("groups", groups)
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
    N, C, H, W = (int(d) for d in x.shape)
    O, Cg, KH, KW = (int(d) for d in weight.shape)
    if C % groups or O % groups:
        raise ValueError(f"groups ({groups}) must divide in_channels ({C}) and out_channels ({O})")
    if Cg * groups != C:
        raise ValueError(f"weight.shape[1] must be in_channels // groups = {C // groups} "
                         f"(x has {C} channels, groups={groups}), got {Cg}")
    check.param("bias", bias, (O,), dtype)
    saved = Saved(op="conv2d", backend=be, dtype=dtype, x_shape=(N, C, H, W), weight=weight,
                  has_bias=bias is not None, stride=stride, dilation=dilation, groups=groups,
                  padding_mode=padding_mode, pad_saved=None)
    x = be.contiguous(x)
    if padding_mode != "zeros" and padding != (0, 0):
        x, saved.pad_saved = pad2d(x, padding, padding_mode)
        H, W = H + 2 * padding[0], W + 2 * padding[1]
        padding = (0, 0)
    saved.padding = padding
    OH = _shapes.conv_out_size(H, KH, stride[0], padding[0], dilation[0])
    OW = _shapes.conv_out_size(W, KW, stride[1], padding[1], dilation[1])
    if OH <= 0 or OW <= 0:
        kernel = (dilation[0] * (KH - 1) + 1, dilation[1] * (KW - 1) + 1)
        raise ValueError(f"conv2d: the padded input ({H + 2 * padding[0]}, {W + 2 * padding[1]}) is "
                         f"smaller than kernel_size {(KH, KW)} (dilated: {kernel})")
    y, kept = be.conv.forward(x, be.contiguous(weight), bias, stride, padding, dilation, groups,
                              (OH, OW))
    saved.kept, saved.conv_in_shape, saved.shape = kept, tuple(x.shape), tuple(y.shape)
    return y, saved


def conv2d_backward(dy, saved, input_grad=True, weight_grad=True):
    """Gradients of conv2d: (dx, dweight, dbias). dy has the forward output's shape.

    input_grad=False skips dx (None; e.g. for a first layer fed data), weight_grad=False skips
    dweight and dbias (None; frozen parameters). saved is not changed: a rejected call can be
    retried with a corrected dy.
    """
    check_saved(saved, "conv2d")
    be = saved.backend
    dy = be.contiguous(grad_output(dy, saved))
    dx, dweight, dbias = be.conv.backward(dy, saved.kept, be.contiguous(saved.weight),
                                          saved.conv_in_shape, saved.stride, saved.padding,
                                          saved.dilation, saved.groups, saved.has_bias,
                                          bool(input_grad), bool(weight_grad))
    if dx is not None and saved.pad_saved is not None:
        dx = pad2d_backward(dx, saved.pad_saved)
    return dx, dweight, dbias
