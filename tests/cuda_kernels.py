"""Find the `@cuda.jit` kernels of numbanorm.cuda and their declared argument signatures.

Shared by tests/test_nvvm.py (which runs tests/nvvm_compile.py in a subprocess on the real CUDA
target) and the launch check in tests/conftest.py (under the simulator). See the docstring of
numbanorm/cuda/_common.py for the declaration rules.
"""
import importlib
import pkgutil

from numba import config
from numba.core import sigutils


def _kernel_class():
    if config.ENABLE_CUDASIM:
        from numba.cuda.simulator.kernel import FakeCUDAKernel

        return FakeCUDAKernel
    from numba.cuda.dispatcher import CUDADispatcher

    return CUDADispatcher


def python_function(obj):
    """The Python function behind a numba.cuda dispatcher (real target or simulator)."""
    return obj.fn if config.ENABLE_CUDASIM else obj.py_func


def is_kernel(obj):
    """A numba.cuda kernel (launchable), not a device function and not a CPU dispatcher."""
    if not isinstance(obj, _kernel_class()):
        return False
    return not (obj._device if config.ENABLE_CUDASIM else obj.targetoptions.get("device"))


def cuda_modules():
    """numbanorm.cuda and every module below it, imported, sorted by name."""
    import numbanorm.cuda as pkg

    names = [pkg.__name__] + [m.name for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + ".")]
    return [importlib.import_module(n) for n in sorted(names)]


def kernels_and_declarations():
    """-> (kernels, signatures, problems).

    kernels: {"module.name": dispatcher} for every kernel defined in a module of numbanorm.cuda
    (defined there, not imported); signatures: {"module.name": [signature strings]} from the
    modules' KERNEL_SIGNATURES; problems: one line per kernel without declared signatures and
    per declaration that names no kernel of its module.
    """
    kernels, signatures, problems = {}, {}, []
    for mod in cuda_modules():
        declared = getattr(mod, "KERNEL_SIGNATURES", {})
        own = {name: obj for name, obj in vars(mod).items()
               if is_kernel(obj) and python_function(obj).__module__ == mod.__name__}
        for name, obj in sorted(own.items()):
            key = f"{mod.__name__}.{name}"
            kernels[key] = obj
            if not declared.get(name):
                problems.append(f"{key}: a kernel without argument signatures; declare them in "
                                f"{mod.__name__}.KERNEL_SIGNATURES[{name!r}] (see numbanorm/cuda/_common.py)")
            else:
                signatures[key] = list(declared[name])
        for name in sorted(set(declared) - set(own)):
            problems.append(f"{mod.__name__}.KERNEL_SIGNATURES[{name!r}]: names no kernel of that module")
    return kernels, signatures, problems


def argument_types(signature):
    """The tuple of Numba argument types of a signature string."""
    args, _ = sigutils.normalize_signature(signature)
    return tuple(args)
