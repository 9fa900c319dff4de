"""MaxPool2d and AvgPool2d with PyTorch's arguments and defaults (padding, ceil_mode,
count_include_pad); the math is numbanorm.functional.max_pool2d / avg_pool2d."""
from .. import _validate as check
from .. import functional as F
from .module import OpModule


class _Pool2d(OpModule):
    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False):
        super().__init__("cpu")
        self.kernel_size = check.pair("kernel_size", kernel_size)
        self.stride = self.kernel_size if stride is None else check.pair("stride", stride)
        self.padding = check.pair("padding", padding, minimum=0)
        self.ceil_mode = bool(ceil_mode)

    def extra_repr(self):
        return (f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
                f"ceil_mode={self.ceil_mode}")


class MaxPool2d(_Pool2d):
    """Max over windows: (N, C, H, W) -> (N, C, OH, OW). The gradient goes to the first maximum
    of each window; padding is never picked."""

    def forward(self, x):
        self._check_input(x, (4,))
        y, saved = F.max_pool2d(x, self.kernel_size, self.stride, self.padding, self.ceil_mode)
        self._keep(saved)
        return y

    def backward(self, dy):
        dx = F.max_pool2d_backward(dy, self._pending())
        self._release()
        return dx


class AvgPool2d(_Pool2d):
    """Mean over windows; count_include_pad=True (PyTorch's default) counts the zero padding in
    the divisor."""

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True):
        super().__init__(kernel_size, stride, padding, ceil_mode)
        self.count_include_pad = bool(count_include_pad)

    def forward(self, x):
        self._check_input(x, (4,))
        y, saved = F.avg_pool2d(x, self.kernel_size, self.stride, self.padding, self.ceil_mode,
                                self.count_include_pad)
        self._keep(saved)
        return y

    def backward(self, dy):
        dx = F.avg_pool2d_backward(dy, self._pending())
        self._release()
        return dx

    def extra_repr(self):
        return super().extra_repr() + f", count_include_pad={self.count_include_pad}"
