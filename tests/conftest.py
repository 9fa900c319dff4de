"""Test configuration.

GPU tests run on a real GPU when one looks present (nvidia-smi on PATH), otherwise under
Numba's CUDA simulator. The switch must happen before numba is imported, hence here at the top.
"""
import os
import shutil

if "NUMBA_ENABLE_CUDASIM" not in os.environ and shutil.which("nvidia-smi") is None:
    os.environ["NUMBA_ENABLE_CUDASIM"] = "1"

SIMULATOR = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"


import pytest  # noqa: E402

_launch_mismatches = []
_launch_recorders = []  # lists receiving (kernel name, stream) per launch (fixture kernel_launches)


@pytest.fixture
def kernel_launches():
    """A list receiving (kernel name, stream) for every numbanorm.cuda kernel launched from the
    host while the test runs (the stream as given in kernel[grid, block, stream, ...]; 0 when
    none was given). Under the simulator only: it records through the launch check below."""
    if not SIMULATOR:
        pytest.skip("kernel launches are recorded under the CUDA simulator only")
    launches = []
    _launch_recorders.append(launches)
    yield launches
    _launch_recorders.remove(launches)


@pytest.fixture(autouse=True, scope="session")
def _kernel_launch_check():
    """Under the simulator, every launch of a numbanorm.cuda kernel is typed as Numba would
    type it for the real target and must match one of the kernel's declared signatures
    (KERNEL_SIGNATURES, see numbanorm/cuda/_common.py), the ones tests/test_nvvm.py compiles
    with NVVM. A mismatch fails the launch, naming the kernel, the types and the declarations;
    the session fails at teardown too, in case a test swallowed that error. Each launch's
    stream goes to the lists of the kernel_launches fixture."""
    if not SIMULATOR:
        yield
        return
    try:
        import numba
        from numba.cuda.simulator import kernel as sim
    except ImportError:  # numba-cuda not installed: no GPU tests run
        yield
        return
    from .cuda_kernels import argument_types, kernels_and_declarations, python_function

    declared = {}  # python function of a kernel -> (name, [argument type tuples])

    def check(kernel, args):
        fn = kernel.fn
        if not fn.__module__.startswith("numbanorm.cuda"):
            return
        if not declared:
            kernels, signatures, _ = kernels_and_declarations()
            for key, k in kernels.items():
                declared[python_function(k)] = (key, [argument_types(s) for s in signatures.get(key, [])])
        key, allowed = declared.get(fn, (f"{fn.__module__}.{fn.__name__}", []))
        launched = tuple(numba.typeof(a) for a in args)
        if launched not in allowed:
            msg = (f"{key} launched with ({', '.join(map(str, launched))}), which matches none of its "
                   f"declared signatures {[', '.join(map(str, a)) for a in allowed]}")
            _launch_mismatches.append(msg)
            raise AssertionError(msg)

    original = sim.FakeCUDAKernel.__call__
    original_configure = sim.FakeCUDAKernel.__getitem__

    def configure(self, configuration):  # the simulator drops the stream: keep it for the record
        self._launch_stream = configuration[2] if len(configuration) >= 3 else 0
        return original_configure(self, configuration)

    def checked_call(self, *args):
        if not self._device and not sim._kernel_context:  # a launch from the host
            check(self, args)
            if _launch_recorders and self.fn.__module__.startswith("numbanorm.cuda"):
                for launches in _launch_recorders:
                    launches.append((self.fn.__name__, getattr(self, "_launch_stream", 0)))
            self._launch_stream = 0
        return original(self, *args)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sim.FakeCUDAKernel, "__call__", checked_call)
        mp.setattr(sim.FakeCUDAKernel, "__getitem__", configure)
        yield
    assert not _launch_mismatches, "kernel launches with undeclared argument types:\n" + "\n".join(
        _launch_mismatches)
