"""2-D pooling: max_pool2d and avg_pool2d with padding and ceil_mode (PyTorch's semantics).

Shapes: x (N, C, H, W) -> y (N, C, OH, OW); kernel_size, stride (default: kernel_size) and
padding are ints or pairs; OH = floor_or_ceil((H + 2*ph - kh) / sh) + 1, and in ceil_mode the
last window must start inside the input or its left padding. padding is at most half the kernel.
Max pooling ignores padding; average pooling counts it in the divisor when count_include_pad.
"""
from .. import _backend, _shapes
from .. import _validate as check
from ._common import Saved, check_saved, grad_output


def _pool_args(op, x, kernel_size, stride, padding, ceil_mode):
    be, a = _backend.select(x=x)
    x = a["x"]
    dtype = check.float_array("x", x)
    check.ndim("x", x, (4,), "(N, C, H, W)")
    kernel = check.pair("kernel_size", kernel_size)
    stride = kernel if stride is None or stride == () else check.pair("stride", stride)
    padding = check.pair("padding", padding, minimum=0)
    if padding[0] > kernel[0] // 2 or padding[1] > kernel[1] // 2:
        raise ValueError(f"{op}: padding should be at most half of kernel_size, got "
                         f"padding={padding} and kernel_size={kernel}")
    N, C, H, W = (int(d) for d in x.shape)
    out = (_shapes.pool_out_size(H, kernel[0], stride[0], padding[0], bool(ceil_mode)),
           _shapes.pool_out_size(W, kernel[1], stride[1], padding[1], bool(ceil_mode)))
    if out[0] < 1 or out[1] < 1:
        raise ValueError(f"{op}: input of spatial size {(H, W)} gives output size {out}, which is "
                         f"too small (kernel_size={kernel}, stride={stride}, padding={padding})")
    return be, be.contiguous(x), dtype, kernel, stride, padding, out


def max_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False):
    """Max over each window (the gradient goes to the window's first maximum). -> (y, saved)."""
    be, x, dtype, kernel, stride, padding, out = _pool_args("max_pool2d", x, kernel_size, stride,
                                                            padding, ceil_mode)
    y, idx = be.pool.max_forward(x, kernel, stride, padding, out)
    return y, Saved(op="max_pool2d", backend=be, shape=tuple(y.shape), dtype=dtype, idx=idx,
                    x_shape=tuple(x.shape), kernel=kernel, stride=stride, padding=padding)


def max_pool2d_backward(dy, saved):
    """dx of max_pool2d (dy has the forward output's shape). saved is not changed."""
    check_saved(saved, "max_pool2d")
    be = saved.backend
    return be.pool.max_backward(be.contiguous(grad_output(dy, saved)), saved.idx, saved.x_shape,
                                saved.kernel, saved.stride, saved.padding)


def avg_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True):
    """Mean over each window. -> (y, saved)."""
    be, x, dtype, kernel, stride, padding, out = _pool_args("avg_pool2d", x, kernel_size, stride,
                                                            padding, ceil_mode)
    y = be.pool.avg_forward(x, kernel, stride, padding, out, bool(count_include_pad))
    return y, Saved(op="avg_pool2d", backend=be, shape=tuple(y.shape), dtype=dtype,
                    x_shape=tuple(x.shape), kernel=kernel, stride=stride, padding=padding,
                    count_include_pad=bool(count_include_pad))


def avg_pool2d_backward(dy, saved):
    """dx of avg_pool2d (dy has the forward output's shape). saved is not changed."""
    check_saved(saved, "avg_pool2d")
    be = saved.backend
    return be.pool.avg_backward(be.contiguous(grad_output(dy, saved)), saved.x_shape, saved.kernel,
                                saved.stride, saved.padding, saved.count_include_pad)
