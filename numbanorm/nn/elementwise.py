"""ReLU and Dropout; the math is numbanorm.functional.relu / dropout."""
import numbers

from .. import functional as F
from . import init
from .module import OpModule


class ReLU(OpModule):
    """y = max(x, 0), any shape. backward: dx = dy where y > 0."""

    def __init__(self):
        super().__init__("cpu")

    def forward(self, x):
        self._check_input(x)
        y, saved = F.relu(x)
        self._keep(saved)
        return y

    def backward(self, dy):
        dx = F.relu_backward(dy, self._pending())
        self._release()
        return dx


class Dropout(OpModule):
    """Training: zero each element with probability p, scale the rest by 1/(1-p); eval: identity.

    The mask comes from a counter-based hash of (seed, element index), the seed drawn from `rng`
    each forward, so a seeded run gives the same masks on any thread count and on CPU and GPU
    (not the same masks as PyTorch's generator).
    """

    def __init__(self, p=0.5, rng=None):
        super().__init__("cpu")
        if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0.0 <= p < 1.0:
            raise ValueError(f"Dropout probability p must be in [0, 1), got {p!r}")
        self.p = float(p)
        object.__setattr__(self, "_rng", init.get_rng(rng))

    def forward(self, x):
        self._check_input(x)
        seed = int(self._rng.integers(0, 2**63)) if self.training and self.p > 0 else 0
        y, saved = F.dropout(x, self.p, self.training, seed)
        self._keep(saved)
        return y

    def backward(self, dy):
        dx = F.dropout_backward(dy, self._pending())
        self._release()
        return dx

    def extra_repr(self):
        return f"p={self.p}"
