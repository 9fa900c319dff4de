"""Normalization layers with PyTorch's constructor arguments, defaults and state_dict keys;
BatchNorm's variants (BatchRenorm1d/2d/3d, FrozenBatchNorm2d as torchvision's)."""
import numbers

import numpy as np
from numpy.typing import DTypeLike

from .. import _backend
from .. import _validate as check
from .. import functional as F
from ..functional._common import Array
from .module import OpModule, Parameter, float_dtype


class _Norm(OpModule):
    """Shared by every norm layer (an OpModule: keeps the forward's `saved` for one backward).

    A rejected call changes nothing: forward checks x (`_check_input`) before any statistic
    moves, and `_backward` hands the saved state to the functional backward, which checks dy
    (and, in debug mode, that the saved arrays are unchanged) before computing; only after it
    succeeds are the saved state dropped and the gradients accumulated.
    """
    _input_ndims = None  # allowed x.ndim values, None: any (the functional op checks)

    def _array(self, value, shape, dtype):
        return _backend.transfer(np.full(shape, value, dtype), self.device)

    def _backward(self, functional_backward, dy):
        """dx of functional_backward(dy, saved) -> (dx, dweight, dbias); consumes the saved
        state and accumulates weight.grad / bias.grad only when it succeeds."""
        saved = self._saved
        if saved is None:
            self._pending()  # its ValueError
        weight, bias = self.weight, self.bias
        # a frozen parameter's gradient is neither returned nor, where avoidable, computed
        # (wants_grad, inline: this runs on every call)
        saved.has_weight = saved.has_weight and weight is not None and weight.requires_grad
        saved.has_bias = saved.has_bias and bias is not None and bias.requires_grad
        dx, dweight, dbias = functional_backward(dy, saved)
        object.__setattr__(self, "_saved", None)  # released (OpModule._release, inline)
        if dweight is not None and dbias is not None:
            gw, gb = weight.grad, bias.grad
            if type(gw) is np.ndarray and type(gb) is np.ndarray:  # _accumulate_grads, inline
                # (both wanted: has_weight/has_bias above include requires_grad)
                _backend.get("cpu").add_pair_(gw, dweight, gb, dbias)
            else:
                self._accumulate_grads(weight, dweight, bias, dbias)
        elif dweight is not None:
            self._accumulate_grad(weight, dweight)
        elif dbias is not None:
            self._accumulate_grad(bias, dbias)
        return dx

    def _check_input(self, x):
        """x must be an array (the functional API's TypeError naming x) of an accepted ndim
        (the functional op checks the rest)."""
        if type(x) is not np.ndarray:
            _backend.select(x=x)
        ndims = self._input_ndims
        if ndims is not None and len(x.shape) not in ndims:
            want = " or ".join(f"{d}D" for d in ndims)
            raise ValueError(f"{type(self).__name__} expected {want} input, got shape {tuple(x.shape)}")


class _NormBase(_Norm):
    """BatchNorm and InstanceNorm: num_features channels, optional affine and running stats."""

    def __init__(self, num_features, eps, momentum, affine, track_running_stats, dtype, device):
        super().__init__(device)
        if isinstance(num_features, bool) or not isinstance(num_features, numbers.Integral) or num_features <= 0:
            raise ValueError(f"num_features must be a positive int, got {num_features!r}")
        if momentum is not None:
            check.momentum(momentum)
        self.num_features = int(num_features)
        self.eps = check.eps(eps)
        self.momentum = momentum
        self.affine = bool(affine)
        self.track_running_stats = bool(track_running_stats)
        self.dtype = dtype = float_dtype(dtype, half=True)
        C = self.num_features
        self.weight = Parameter(self._array(1.0, (C,), dtype)) if affine else None
        self.bias = Parameter(self._array(0.0, (C,), dtype)) if affine else None
        if track_running_stats:
            self.register_buffer("running_mean", self._array(0.0, (C,), dtype))
            self.register_buffer("running_var", self._array(1.0, (C,), dtype))
            self.register_buffer("num_batches_tracked", np.zeros((), np.int64))
        else:
            self.running_mean = self.running_var = self.num_batches_tracked = None

    def _check_input(self, x):
        ndims = self._input_ndims
        if type(x) is not np.ndarray or ndims is None or len(x.shape) not in ndims:
            _Norm._check_input(self, x)  # its errors (the common case passes: tested inline)
        if x.shape[1] != self.num_features and int(x.shape[1]) != self.num_features:
            raise ValueError(
                f"{type(self).__name__}({self.num_features}) expected {self.num_features} channels "
                f"(x.shape[1]), got {int(x.shape[1])}"
            )

    def reset_running_stats(self):
        if self.track_running_stats:
            C, dt = self.num_features, self.dtype
            self._set_buffer("running_mean", self._array(0.0, (C,), dt))
            self._set_buffer("running_var", self._array(1.0, (C,), dt))
            self._set_buffer("num_batches_tracked", np.zeros((), np.int64))

    def extra_repr(self):
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
                f"track_running_stats={self.track_running_stats}")

    def _params(self):
        return (self.weight.data if self.weight is not None else None,
                self.bias.data if self.bias is not None else None)


class _BatchNorm(_NormBase):
    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True, dtype: DTypeLike = np.float32,
                 device: str = "cpu"):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, dtype, device)

    def forward(self, x: Array, mask: Array | None = None) -> Array:
        """Training: batch statistics (running stats updated); eval: running statistics.
        mask: optional bool (N,) or (N, *spatial) selecting the positions the training
        statistics come from (see functional.batch_norm); ignored in eval."""
        ndims = self._input_ndims
        if not (type(x) is np.ndarray and ndims is not None and len(x.shape) in ndims
                and x.shape[1] == self.num_features):
            self._check_input(x)  # its errors (the common case passes: tested inline)
        training, momentum, weight, bias = self.training, self.momentum, self.weight, self.bias
        counting = training and self.track_running_stats
        if momentum is None:  # counting: cumulative moving average
            momentum = 1.0 / float(self.num_batches_tracked + 1) if counting else 0.0
        pass_running = not training or self.track_running_stats
        y, saved = F.batch_norm(x, None if weight is None else weight.data,
                                None if bias is None else bias.data,
                                self.running_mean if pass_running else None,
                                self.running_var if pass_running else None,
                                training or self.running_mean is None, momentum, self.eps, mask)
        if counting:  # an empty batch counts too, as in PyTorch
            _count_batch(self)
        object.__setattr__(self, "_saved", saved)  # self._keep(saved), inline
        return y

    def backward(self, dy: Array) -> Array:
        """dx for dy (the output's shape, dtype and device); adds dweight/dbias into
        weight.grad/bias.grad. Consumes the forward's saved state, only when it succeeds: a
        rejected dy (ValueError/TypeError) changes nothing and can be corrected and retried."""
        return self._backward(F.batch_norm_backward, dy)


def _count_batch(layer):
    """num_batches_tracked += 1, in place (a 0-d array item: much cheaper than `+=` through
    Module.__setattr__)."""
    tracked = layer.num_batches_tracked
    if type(tracked) is np.ndarray:
        tracked[()] += 1
    else:
        layer.num_batches_tracked = tracked + 1


class BatchNorm1d(_BatchNorm):
    """BatchNorm over (N, C) or (N, C, L)."""
    _input_ndims = (2, 3)


class BatchNorm2d(_BatchNorm):
    """BatchNorm over (N, C, H, W)."""
    _input_ndims = (4,)


class BatchNorm3d(_BatchNorm):
    """BatchNorm over (N, C, D, H, W)."""
    _input_ndims = (5,)


class _BatchRenorm(_NormBase):
    """Batch Renormalization (Ioffe 2017); see functional.batch_renorm. Always tracks running
    statistics (training uses them for r and d); BatchNorm's state_dict keys."""

    def __init__(self, num_features, eps=1e-5, momentum=0.1, rmax=3.0, dmax=5.0, affine=True,
                 dtype=np.float32, device="cpu"):
        super().__init__(num_features, eps, momentum, affine, True, dtype, device)
        if isinstance(rmax, bool) or not isinstance(rmax, numbers.Real) or not rmax >= 1.0:
            raise ValueError(f"rmax must be a number >= 1, got {rmax!r}")
        if isinstance(dmax, bool) or not isinstance(dmax, numbers.Real) or not dmax >= 0.0:
            raise ValueError(f"dmax must be a number >= 0, got {dmax!r}")
        self.rmax, self.dmax = float(rmax), float(dmax)

    def forward(self, x):
        self._check_input(x)
        momentum = self.momentum
        if momentum is None:  # cumulative moving average, as BatchNorm
            momentum = 1.0 / float(self.num_batches_tracked + 1) if self.training else 0.0
        weight, bias = self._params()
        y, saved = F.batch_renorm(x, weight, bias, self.running_mean, self.running_var,
                                  self.training, momentum, self.eps, self.rmax, self.dmax)
        if self.training and int(np.prod(x.shape)) > 0:
            self.num_batches_tracked += 1
        self._keep(saved)
        return y

    def backward(self, dy):
        return self._backward(F.batch_renorm_backward, dy)

    def extra_repr(self):
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, rmax={self.rmax}, "
                f"dmax={self.dmax}, affine={self.affine}")


class BatchRenorm1d(_BatchRenorm):
    """Batch Renormalization over (N, C) or (N, C, L)."""
    _input_ndims = (2, 3)


class BatchRenorm2d(_BatchRenorm):
    """Batch Renormalization over (N, C, H, W)."""
    _input_ndims = (4,)


class BatchRenorm3d(_BatchRenorm):
    """Batch Renormalization over (N, C, D, H, W)."""
    _input_ndims = (5,)


class FrozenBatchNorm2d(_Norm):
    """BatchNorm2d with fixed statistics and affine parameters (torchvision's FrozenBatchNorm2d):
    y = x * scale + shift, scale = weight / sqrt(running_var + eps), shift = bias - running_mean * scale.

    weight, bias, running_mean, running_var are buffers (in state_dict, not trained); the same in
    train and eval; backward returns dx only. Loads a torchvision or BatchNorm2d state_dict (a
    num_batches_tracked entry is accepted and dropped).
    """
    _input_ndims = (4,)
    _ignored_state_keys = ("num_batches_tracked",)

    def __init__(self, num_features, eps=1e-5, dtype=np.float32, device="cpu"):
        super().__init__(device)
        if isinstance(num_features, bool) or not isinstance(num_features, numbers.Integral) or num_features <= 0:
            raise ValueError(f"num_features must be a positive int, got {num_features!r}")
        self.num_features = C = int(num_features)
        self.eps = check.eps(eps)
        self.dtype = dtype = float_dtype(dtype)
        for name, value in (("weight", 1.0), ("bias", 0.0), ("running_mean", 0.0), ("running_var", 1.0)):
            self.register_buffer(name, self._array(value, (C,), dtype))

    def forward(self, x):
        self._check_input(x)
        y, saved = F.batch_norm(x, self.weight, self.bias, self.running_mean, self.running_var,
                                False, 0.0, self.eps)
        self._keep(saved)
        return y

    def backward(self, dy):
        """dx = dy * scale (no parameter gradients, no reduction over dy)."""
        saved = self._pending()
        saved.has_weight = saved.has_bias = False  # buffers: no gradients, no reduction over dy
        dx, _, _ = F.batch_norm_backward(dy, saved)
        self._release()
        return dx

    def extra_repr(self):
        return f"{self.num_features}, eps={self.eps}"


class _InstanceNorm(_NormBase):
    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = False, track_running_stats: bool = False, dtype: DTypeLike = np.float32,
                 device: str = "cpu"):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, dtype, device)

    def forward(self, x: Array) -> Array:
        """Per-(sample, channel) statistics; in eval with tracked running stats, those instead."""
        ndims = self._input_ndims
        if not (type(x) is np.ndarray and ndims is not None and len(x.shape) in ndims
                and x.shape[1] == self.num_features):
            self._check_input(x)  # its errors (the common case passes: tested inline)
        weight, bias = self._params()
        use_input_stats = self.training or not self.track_running_stats
        # PyTorch's InstanceNorm treats momentum=None as 0 (no cumulative average)
        momentum = 0.0 if self.momentum is None else self.momentum
        y, saved = F.instance_norm(x, weight, bias, self.running_mean, self.running_var,
                                   use_input_stats, momentum, self.eps)
        self._keep(saved)
        return y

    def backward(self, dy: Array) -> Array:
        """dx for dy (the output's shape, dtype and device); adds dweight/dbias into
        weight.grad/bias.grad. Consumes the forward's saved state, only when it succeeds: a
        rejected dy (ValueError/TypeError) changes nothing and can be corrected and retried."""
        return self._backward(F.instance_norm_backward, dy)


class InstanceNorm1d(_InstanceNorm):
    """InstanceNorm over (N, C, L)."""
    _input_ndims = (3,)


class InstanceNorm2d(_InstanceNorm):
    """InstanceNorm over (N, C, H, W)."""
    _input_ndims = (4,)


class InstanceNorm3d(_InstanceNorm):
    """InstanceNorm over (N, C, D, H, W)."""
    _input_ndims = (5,)


class LayerNorm(_Norm):
    """LayerNorm over the trailing normalized_shape dims; weight and bias have that shape."""

    def __init__(self, normalized_shape: int | tuple[int, ...], eps: float = 1e-5,
                 elementwise_affine: bool = True, bias: bool = True, dtype: DTypeLike = np.float32,
                 device: str = "cpu"):
        super().__init__(device)
        self.normalized_shape = check.normalized_shape(normalized_shape)
        self.eps = check.eps(eps)
        self.elementwise_affine = bool(elementwise_affine)
        self.dtype = dtype = float_dtype(dtype, half=True)
        shape = self.normalized_shape
        self.weight = Parameter(self._array(1.0, shape, dtype)) if elementwise_affine else None
        self.bias = Parameter(self._array(0.0, shape, dtype)) if elementwise_affine and bias else None

    def forward(self, x: Array) -> Array:
        if type(x) is not np.ndarray or self._input_ndims is not None:
            self._check_input(x)  # its errors (the common case passes: tested inline)
        y, saved = F.layer_norm(x, self.normalized_shape,
                                self.weight.data if self.weight is not None else None,
                                self.bias.data if self.bias is not None else None, self.eps)
        object.__setattr__(self, "_saved", saved)  # self._keep(saved), inline
        return y

    def backward(self, dy: Array) -> Array:
        """dx for dy (the output's shape, dtype and device); adds dweight/dbias into
        weight.grad/bias.grad. Consumes the forward's saved state, only when it succeeds: a
        rejected dy (ValueError/TypeError) changes nothing and can be corrected and retried."""
        return self._backward(F.layer_norm_backward, dy)

    def extra_repr(self):
        return f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}"


class GroupNorm(_Norm):
    """GroupNorm: (N, C, *) input, statistics per (sample, group); per-channel affine."""

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5, affine: bool = True,
                 dtype: DTypeLike = np.float32, device: str = "cpu"):
        super().__init__(device)
        if isinstance(num_channels, bool) or not isinstance(num_channels, numbers.Integral) or num_channels <= 0:
            raise ValueError(f"num_channels must be a positive int, got {num_channels!r}")
        self.num_groups = check.num_groups(num_groups, int(num_channels))
        self.num_channels = int(num_channels)
        self.eps = check.eps(eps)
        self.affine = bool(affine)
        self.dtype = dtype = float_dtype(dtype, half=True)
        self.weight = Parameter(self._array(1.0, (num_channels,), dtype)) if affine else None
        self.bias = Parameter(self._array(0.0, (num_channels,), dtype)) if affine else None

    def forward(self, x: Array) -> Array:
        if type(x) is not np.ndarray or self._input_ndims is not None:
            self._check_input(x)  # its errors (the common case passes: tested inline)
        if len(x.shape) >= 2 and x.shape[1] != self.num_channels and int(x.shape[1]) != self.num_channels:
            raise ValueError(f"GroupNorm expected {self.num_channels} channels (x.shape[1]), got {int(x.shape[1])}")
        y, saved = F.group_norm(x, self.num_groups,
                                self.weight.data if self.weight is not None else None,
                                self.bias.data if self.bias is not None else None, self.eps)
        object.__setattr__(self, "_saved", saved)  # self._keep(saved), inline
        return y

    def backward(self, dy: Array) -> Array:
        """dx for dy (the output's shape, dtype and device); adds dweight/dbias into
        weight.grad/bias.grad. Consumes the forward's saved state, only when it succeeds: a
        rejected dy (ValueError/TypeError) changes nothing and can be corrected and retried."""
        return self._backward(F.group_norm_backward, dy)

    def extra_repr(self):
        return f"{self.num_groups}, {self.num_channels}, eps={self.eps}, affine={self.affine}"
