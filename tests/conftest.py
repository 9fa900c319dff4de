"""Test configuration.

GPU tests run on a real GPU when one looks present (nvidia-smi on PATH), otherwise under
Numba's CUDA simulator. The switch must happen before numba is imported, hence here at the top.
"""
import os
import shutil

if "NUMBA_ENABLE_CUDASIM" not in os.environ and shutil.which("nvidia-smi") is None:
    os.environ["NUMBA_ENABLE_CUDASIM"] = "1"

SIMULATOR = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
