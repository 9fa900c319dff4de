"""Non-zero padding of the last two dims (PyTorch's 'reflect', 'replicate', 'circular' modes),
used by conv2d's padding_mode.

Shapes: x (N, C, H, W) -> xp (N, C, H + 2*ph, W + 2*pw). Every padded position copies one input
position: a source-index map of the (H, W) plane (cached per shape and mode). The forward is a
gather through it; the backward sums the gradient of every copy back into its source, through
the same map sorted by source (a fixed order: deterministic, no atomics).
"""
import functools

import numpy as np

from ._common import Saved

_NUMPY_MODE = {"reflect": "reflect", "replicate": "edge", "circular": "wrap"}


@functools.lru_cache(maxsize=64)
def _index_map(H, W, ph, pw, mode):
    """(source (Hp*Wp,), order (Hp*Wp,), starts (H*W + 1,)) int64 host arrays."""
    plane = np.arange(H * W, dtype=np.int64).reshape(H, W)
    source = np.pad(plane, ((ph, ph), (pw, pw)), mode=_NUMPY_MODE[mode]).ravel()
    order = np.argsort(source, kind="stable")
    starts = np.concatenate(([0], np.cumsum(np.bincount(source, minlength=H * W)))).astype(np.int64)
    return source, order, starts


def pad2d(x, padding, mode):
    """x (N, C, H, W) on its backend (C-contiguous), padding (ph, pw) -> (xp, saved)."""
    from .. import _backend

    be, a = _backend.select(x=x)
    x = a["x"]
    N, C, H, W = (int(d) for d in x.shape)
    ph, pw = padding
    limit = {"reflect": (H - 1, W - 1), "circular": (H, W)}.get(mode)
    if limit is not None and (ph > limit[0] or pw > limit[1]):
        raise ValueError(f"padding {padding} is too large for padding_mode={mode!r} and an input "
                         f"of spatial size {(H, W)} (at most {limit})")
    source, order, starts = _index_map(H, W, ph, pw, mode)
    maps = tuple(be.from_host(m) for m in (source, order, starts))
    Hp, Wp = H + 2 * ph, W + 2 * pw
    xp = be.pad.gather(x.reshape(N * C, H * W), maps[0]).reshape(N, C, Hp, Wp)
    return xp, Saved(op="pad2d", backend=be, x_shape=(N, C, H, W), maps=maps)


def pad2d_backward(dxp, saved):
    """The gradient of pad2d: dxp (N, C, Hp, Wp) -> dx (N, C, H, W)."""
    N, C, H, W = saved.x_shape
    be = saved.backend
    dxp = be.contiguous(dxp)
    _, order, starts = saved.maps
    return be.pad.scatter_sum(dxp.reshape(N * C, int(dxp.shape[2]) * int(dxp.shape[3])),
                              order, starts, H * W).reshape(N, C, H, W)
