"""Layers: forward/backward modules with PyTorch's names, defaults and state_dict keys."""
from . import init
from .layers import (AvgPool2d, Conv2d, CrossEntropyLoss, Dropout, Flatten, Linear, MaxPool2d, ReLU,
                     Sequential)
from .module import Module, Parameter
from .norm import (BatchNorm1d, BatchNorm2d, BatchNorm3d, GroupNorm, InstanceNorm1d,
                   InstanceNorm2d, InstanceNorm3d, LayerNorm)
from .sync_batch_norm import SyncBatchNorm

__all__ = ["Module", "Parameter", "BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "LayerNorm",
           "GroupNorm", "InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d", "SyncBatchNorm",
           "init", "Conv2d", "MaxPool2d", "AvgPool2d", "ReLU", "Linear", "Flatten", "Dropout",
           "Sequential", "CrossEntropyLoss"]
