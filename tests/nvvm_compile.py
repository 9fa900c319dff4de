"""Compile every numbanorm.cuda kernel, for each declared signature, with NVIDIA's NVVM.

Run by tests/test_nvvm.py in a subprocess, on the real CUDA target (NUMBA_ENABLE_CUDASIM unset)
and without a GPU:  python tests/nvvm_compile.py MAJOR.MINOR  (the compute capability).
Prints one JSON object: {"cc", "nvvm", "problems", "results": [[kernel, signature, error]]}
where error is "" or the compiler's first error line.

The one patch: numba-cuda 0.30 compiles a device function (called by a kernel) for
`get_current_device().compute_capability`, asking the driver, which a machine without a GPU
does not have; compile_ptx's `cc=` reaches only the kernel itself. This subprocess replaces the
name `get_current_device` in numba.cuda.dispatcher (the only module that asks it during
compile_ptx) by a stand-in device of the requested compute capability, so device functions are
compiled for the same target as their kernels. Nothing else is touched; one process per
compute capability, so no device function is cached across targets.
"""
import json
import os
import sys
import types

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def first_error_line(exc):
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    # numba's first line says which pipeline stage failed; the cause is on the next one
    lines = [ln for ln in lines if not ln.startswith("Failed in ")] or lines or [type(exc).__name__]
    return f"{type(exc).__name__}: {lines[0]}"


def toolkit_version():
    """The version of the toolkit wheel that brings libnvvm, or "system"."""
    from importlib import metadata

    for dist in ("nvidia-cuda-nvcc-cu12", "nvidia-cuda-nvcc-cu13", "nvidia-cuda-nvcc"):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return "system"


def main(cc_text):
    cc = tuple(int(v) for v in cc_text.split("."))
    assert os.environ.get("NUMBA_ENABLE_CUDASIM", "0") in ("", "0"), "needs the real CUDA target"
    try:
        from numba import cuda
        from numba.cuda import dispatcher
        from numba.cuda.cudadrv import nvvm

        missing = None if nvvm.is_available() else "libnvvm not found"
    except ImportError as e:
        missing = f"numba-cuda not importable ({e})"
    if missing:
        print(json.dumps({"cc": cc_text, "nvvm": None, "missing": missing, "problems": [], "results": []}))
        return
    device = types.SimpleNamespace(compute_capability=cc)
    dispatcher.get_current_device = lambda: device

    from cuda_kernels import kernels_and_declarations, python_function

    kernels, signatures, problems = kernels_and_declarations()
    results = []
    for key, sigs in sorted(signatures.items()):
        kernel = kernels[key]
        opts = kernel.targetoptions
        for sig in sigs:
            try:
                cuda.compile_ptx(python_function(kernel), sig, cc=cc, fastmath=opts.get("fastmath", False),
                                 lineinfo=opts.get("lineinfo", False),
                                 launch_bounds=opts.get("launch_bounds"))
                results.append([key, sig, ""])
            except Exception as e:  # every failure is reported, with the kernel and signature
                results.append([key, sig, first_error_line(e)])
    version = f"{'.'.join(map(str, nvvm.NVVM().get_version()))} (CUDA toolkit {toolkit_version()})"
    print(json.dumps({"cc": cc_text, "nvvm": version, "problems": problems, "results": results}))


if __name__ == "__main__":
    main(sys.argv[1])
