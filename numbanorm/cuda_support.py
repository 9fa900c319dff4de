"""Whether the CUDA target can be used here, asked without importing it on the CPU path."""


def cuda_available():
    """True when numba.cuda imports and finds a usable driver (or the simulator is on)."""
    try:
        from numba import cuda
    except Exception:  # numba-cuda missing or broken: the CPU path still works
        return False
    try:
        return bool(cuda.is_available())
    except Exception:
        return False


def require_cuda():
    if not cuda_available():
        raise ValueError(
            "a CUDA array was given but CUDA is not usable here: numba.cuda found no GPU/driver "
            "(install the 'cuda' extra, e.g. pip install 'numbanorm[cuda]', on a machine with an "
            "NVIDIA driver, or set NUMBA_ENABLE_CUDASIM=1 for the simulator)"
        )
