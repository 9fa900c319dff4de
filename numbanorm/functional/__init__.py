"""numbanorm's stateless API: every op as `forward(...) -> (y, saved)` and
`backward(dy, saved) -> grads`, with PyTorch's semantics.

Inputs are NumPy arrays (CPU backend) or CUDA arrays (GPU backend, see numbanorm._backend);
outputs live where the inputs live. A backward checks dy against `saved` before computing
anything and never changes `saved`. Each module here calls the kernel module of the same name
in numbanorm/cpu/ and numbanorm/cuda/:
  norm         batch_norm (mask= for masked statistics), layer_norm, group_norm, instance_norm
               (kernels: channel_norm, row_norm)
  variants     weight_standardization (row_norm), batch_renorm (channel_norm)
  conv         conv2d (stride, padding, dilation, groups, padding_mode)
  pad          pad2d: the non-zero padding modes of conv2d
  linear       linear
  pool         max_pool2d, avg_pool2d (padding, ceil_mode, count_include_pad)
  elementwise  relu, dropout
  loss         cross_entropy (reduction, ignore_index, label_smoothing)
  optim        sgd_step, adam_step: in-place optimizer updates (no backward)
"""
from ._common import Saved
from .conv import conv2d, conv2d_backward
from .elementwise import dropout, dropout_backward, relu, relu_backward
from .linear import linear, linear_backward
from .loss import cross_entropy, cross_entropy_backward
from .norm import (batch_norm, batch_norm_backward, channel_inputs, group_norm,
                   group_norm_backward, instance_norm, instance_norm_backward, layer_norm,
                   layer_norm_backward)
from .optim import adam_step, sgd_step
from .pad import pad2d, pad2d_backward
from .pool import avg_pool2d, avg_pool2d_backward, max_pool2d, max_pool2d_backward
from .variants import (batch_renorm, batch_renorm_backward, weight_standardization,
                       weight_standardization_backward)

__all__ = ["Saved", "batch_norm", "batch_norm_backward", "layer_norm", "layer_norm_backward",
           "group_norm", "group_norm_backward", "instance_norm", "instance_norm_backward",
           "channel_inputs", "conv2d", "conv2d_backward", "pad2d", "pad2d_backward", "linear",
           "linear_backward", "max_pool2d", "max_pool2d_backward", "avg_pool2d",
           "avg_pool2d_backward", "relu", "relu_backward", "dropout", "dropout_backward",
           "cross_entropy", "cross_entropy_backward", "sgd_step", "adam_step", "batch_renorm", "batch_renorm_backward",
           "weight_standardization", "weight_standardization_backward"]
