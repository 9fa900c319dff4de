"""numbanorm: fast normalization layers with hand-written backward passes, in Numba.

    from numbanorm import functional as F, nn

numbanorm.set_debug(True) (or NUMBANORM_DEBUG=1) makes every backward check that the arrays its
forward saved (x, weight, ...) were not modified in place in between (see functional._common).
"""
from . import functional, nn
from .functional._common import debug_enabled, set_debug

__version__ = "0.1.0"
__all__ = ["functional", "nn", "set_debug", "debug_enabled", "__version__"]
