"""numbanorm's stateless API: every op as `forward(...) -> (y, saved)` and
`backward(dy, saved) -> grads`, with PyTorch's semantics.

Inputs are NumPy arrays (CPU backend) or CUDA arrays (GPU backend, see numbanorm._backend);
outputs live where the inputs live. Each module here calls the kernel module of the same name
in numbanorm/cpu/ and numbanorm/cuda/:
  norm    batch_norm, layer_norm, group_norm, instance_norm (kernels: channel_norm, row_norm)
"""
from ._common import Saved
from .norm import (batch_norm, batch_norm_backward, channel_inputs, group_norm,
                   group_norm_backward, instance_norm, instance_norm_backward, layer_norm,
                   layer_norm_backward)

__all__ = ["Saved", "batch_norm", "batch_norm_backward", "layer_norm", "layer_norm_backward",
           "group_norm", "group_norm_backward", "instance_norm", "instance_norm_backward",
           "channel_inputs"]
