"""Layers: forward/backward modules with PyTorch's names, defaults and state_dict keys.

Every layer that computes something wraps a numbanorm.functional op (base class
numbanorm.nn.module.OpModule): forward keeps the op's saved state, backward passes it back.
"""
from . import init
from .container import Sequential
from .conv import Conv2d, StdConv2d
from .elementwise import Dropout, ReLU
from .linear import Flatten, Linear
from .loss import CrossEntropyLoss
from .module import Module, OpModule, Parameter
from .norm import (BatchNorm1d, BatchNorm2d, BatchNorm3d, BatchRenorm1d, BatchRenorm2d,
                   BatchRenorm3d, FrozenBatchNorm2d, GroupNorm, InstanceNorm1d, InstanceNorm2d,
                   InstanceNorm3d, LayerNorm)
from .pool import AvgPool2d, MaxPool2d
from .sync_batch_norm import SyncBatchNorm
from . import utils  # noqa: E402  (fuse_conv_bn_eval, fuse_linear_bn_eval, fuse_bn_eval)

__all__ = ["Module", "OpModule", "Parameter", "BatchNorm1d", "BatchNorm2d", "BatchNorm3d",
           "LayerNorm", "GroupNorm", "InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d",
           "SyncBatchNorm", "init", "utils", "Conv2d", "MaxPool2d", "AvgPool2d", "ReLU", "Linear", "Flatten",
           "Dropout", "Sequential", "CrossEntropyLoss", "BatchRenorm1d", "BatchRenorm2d",
           "BatchRenorm3d", "FrozenBatchNorm2d", "StdConv2d"]
