"""SyncBatchNorm: BatchNorm whose training statistics span every rank of an MPI communicator.

The math and the communication pattern are in numbanorm/distributed.py; mpi4py is imported only
when a training forward first needs the communicator.
"""
import numpy as np
from numpy.typing import DTypeLike

from .. import distributed as D
from .norm import _BatchNorm


class SyncBatchNorm(_BatchNorm):
    """BatchNorm over (N, C, *spatial) with statistics synchronized across the ranks of `comm`
    (None: MPI.COMM_WORLD) in training mode; eval mode is plain BatchNorm, no communication.

    Every rank must call forward and backward (also with an empty batch). After backward,
    weight.grad / bias.grad hold this rank's contributions: combine them across ranks with
    numbanorm.distributed.allreduce_gradients, as for every other parameter.
    """
    _input_ndims = (2, 3, 4, 5)

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True, comm=None,
                 dtype: DTypeLike = np.float32, device: str = "cpu"):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, dtype, device)
        object.__setattr__(self, "comm", comm)

    def forward(self, x, mask=None):
        """mask: optional bool (N,) or (N, *spatial) selecting the positions the (global)
        training statistics come from, as BatchNorm's."""
        if not self.training:  # running stats (or local batch stats without them): no sync
            return super().forward(x, mask)
        self._check_input(x)
        momentum = 0.0 if self.momentum is None else self.momentum
        if self.track_running_stats and self.momentum is None:  # cumulative moving average
            momentum = 1.0 / float(self.num_batches_tracked + 1)
        weight, bias = self._params()
        y, saved = D.sync_batch_norm(x, weight, bias, self.running_mean, self.running_var,
                                     True, momentum, self.eps, self.comm, mask=mask)
        if self.track_running_stats:  # an empty batch counts too, as in PyTorch
            self.num_batches_tracked += 1
        self._keep(saved)
        return y

    def backward(self, dy):
        """dx for dy (the output's shape, dtype and device), a collective in training mode like
        the forward; adds this rank's dweight/dbias into weight.grad/bias.grad. Consumes the
        forward's saved state, only when it succeeds (a rejected dy changes nothing)."""
        return self._backward(D.sync_batch_norm_backward, dy)

    @classmethod
    def convert_sync_batchnorm(cls, module, comm=None):
        """module with every BatchNorm1d/2d/3d (children included) replaced by a SyncBatchNorm
        holding the same parameters and buffers; returns the (possibly new) root module."""
        if isinstance(module, _BatchNorm) and not isinstance(module, cls):
            new = cls(module.num_features, module.eps, module.momentum, module.affine,
                      module.track_running_stats, comm, module.dtype, module.device)
            if module.affine:
                new.weight, new.bias = module.weight, module.bias
            if module.track_running_stats:
                for name in ("running_mean", "running_var", "num_batches_tracked"):
                    new._set_buffer(name, module._buffers[name])
            new.train(module.training)
            return new
        for name, child in list(module._modules.items()):
            new = cls.convert_sync_batchnorm(child, comm)
            if new is not child:
                module._modules[name] = new
                object.__setattr__(module, name, new)
        return module
