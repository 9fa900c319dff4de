"""Conv2d: PyTorch's constructor arguments, defaults, initialisation and state_dict keys; the
math is numbanorm.functional.conv2d."""
import numpy as np

from .. import _validate as check
from .. import functional as F
from . import init
from .module import OpModule, float_dtype, wants_grad


class Conv2d(OpModule):
    """2-D convolution (cross-correlation, as PyTorch): x (N, C_in, H, W) -> (N, C_out, OH, OW),
    OH = (H + 2*pad_h - dil_h*(KH - 1) - 1) // stride_h + 1.

    weight (C_out, C_in // groups, KH, KW) ~ kaiming_uniform(a=sqrt(5)); bias (C_out,) ~
    U(+-1/sqrt(fan_in)), fan_in = C_in // groups * KH * KW. padding_mode: 'zeros', 'reflect',
    'replicate' or 'circular'. rng: a seed or numpy Generator for the initial weights.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=True, padding_mode="zeros", device="cpu", dtype=np.float32, rng=None):
        super().__init__(device)
        self.in_channels = check.positive_int("in_channels", in_channels)
        self.out_channels = check.positive_int("out_channels", out_channels)
        self.kernel_size = check.pair("kernel_size", kernel_size)
        self.stride = check.pair("stride", stride)
        self.padding = check.pair("padding", padding, minimum=0)
        self.dilation = check.pair("dilation", dilation)
        self.groups = check.positive_int("groups", groups)
        if self.in_channels % self.groups or self.out_channels % self.groups:
            raise ValueError(f"groups ({self.groups}) must divide in_channels ({self.in_channels}) "
                             f"and out_channels ({self.out_channels})")
        if padding_mode not in F.conv.PADDING_MODES:
            raise ValueError(f"padding_mode must be one of {F.conv.PADDING_MODES}, got {padding_mode!r}")
        self.padding_mode = padding_mode
        self.dtype = dtype = float_dtype(dtype)
        rng = init.get_rng(rng)
        fan_in = self.in_channels // self.groups * self.kernel_size[0] * self.kernel_size[1]
        shape = (self.out_channels, self.in_channels // self.groups) + self.kernel_size
        self.weight = self._param(init.kaiming_uniform(shape, fan_in, dtype=dtype, rng=rng))
        self.bias = self._param(init.bias_uniform((self.out_channels,), fan_in, dtype, rng)) if bias else None

    def _conv_weight(self):
        """The weight the convolution uses (StdConv2d standardizes it here)."""
        return self.weight.data

    def forward(self, x):
        self._check_input(x, (4,), self.dtype)
        if int(x.shape[1]) != self.in_channels:
            raise ValueError(f"Conv2d expected {self.in_channels} input channels (x.shape[1]), got {int(x.shape[1])}")
        y, saved = F.conv2d(x, self._conv_weight(), None if self.bias is None else self.bias.data,
                            self.stride, self.padding, self.dilation, self.groups, self.padding_mode)
        self._keep(saved)
        return y

    _takes_input_grad = True

    def backward(self, dy, input_grad=True):
        """dx (None when input_grad=False: skips the dx gemm and col2im, e.g. for a first layer
        fed data); the weight and bias gradients are accumulated into .grad."""
        dx, dweight, dbias = F.conv2d_backward(dy, self._pending(), input_grad,
                                               wants_grad(self.weight) or wants_grad(self.bias))
        self._release()
        self._accumulate_conv_grads(dweight, dbias)
        return dx

    def _accumulate_conv_grads(self, dweight, dbias):
        if wants_grad(self.weight):
            self._accumulate_grad(self.weight, dweight)
        if wants_grad(self.bias):
            self._accumulate_grad(self.bias, dbias)

    def extra_repr(self):
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
             f"stride={self.stride}, padding={self.padding}")
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.padding_mode != "zeros":
            s += f", padding_mode={self.padding_mode!r}"
        return s + f", bias={self.bias is not None}"


class StdConv2d(Conv2d):
    """Conv2d with Weight Standardization (Qiao et al. 2019; timm's StdConv2d convention): every
    forward convolves with functional.weight_standardization(weight, eps), i.e. per output
    channel (w - mean) / sqrt(var + eps) over (C_in // groups, KH, KW) with the biased variance,
    and backward carries dweight back through it. Conv2d's arguments and defaults (note bias=True,
    where timm's default is bias=False) plus eps; the same state_dict keys (the raw weight).
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=True, padding_mode="zeros", device="cpu", dtype=np.float32, rng=None,
                 eps=1e-6):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
                         bias, padding_mode, device, dtype, rng)
        self.eps = check.eps(eps)
        object.__setattr__(self, "_ws_saved", None)

    def _conv_weight(self):
        w_hat, saved = F.weight_standardization(self.weight.data, self.eps)
        object.__setattr__(self, "_ws_saved", saved)
        return w_hat

    def backward(self, dy, input_grad=True):
        """dx (None when input_grad=False); dweight through the standardization, dbias as Conv2d."""
        dx, dw_hat, dbias = F.conv2d_backward(dy, self._pending(), input_grad,
                                              wants_grad(self.weight) or wants_grad(self.bias))
        dweight = None
        if wants_grad(self.weight):
            dweight = F.weight_standardization_backward(dw_hat, self._ws_saved)
        self._release()
        object.__setattr__(self, "_ws_saved", None)
        self._accumulate_conv_grads(dweight, dbias)
        return dx

    def extra_repr(self):
        return super().extra_repr() + f", eps={self.eps}"
