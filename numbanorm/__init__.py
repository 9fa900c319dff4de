"""numbanorm: fast normalization layers with hand-written backward passes, in Numba.

    from numbanorm import functional as F, nn
"""
from . import functional, nn

__version__ = "0.1.0"
__all__ = ["functional", "nn", "__version__"]
