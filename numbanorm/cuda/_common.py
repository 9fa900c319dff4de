"""Pieces shared by the GPU kernels: the stream an op runs on, launch sizes, the block
reduction, 1-D helpers, and the declaration of each kernel's argument types.

Streams: every launch, allocation and copy of numbanorm.cuda goes to `op_stream()`, the stream
of the op being run. It is, in order: the stream of an enclosing `numbanorm.cuda.stream(s)`
block; else the one `begin_op` picked from the op's input arrays when the op was dispatched
(numbanorm._backend.select, the first step of every op): the current stream of the framework
a foreign array comes from (PyTorch's `torch.cuda.current_stream()`, CuPy's
`cupy.cuda.get_current_stream()`, read only when that module is already imported; for another
producer, the `stream` entry of its `__cuda_array_interface__`), else the stream a Numba device
array is bound to (its `.stream`, Numba's convention: 0 unless it was made on or bound to a
stream; the arrays numbanorm allocates are bound to their op's stream, which keeps an op run
inside another, e.g. the float32 computation of a float16 op, on the outer op's stream), else
Numba's default stream (0). The choice stays current until the next op is dispatched: a call
that takes no array (cross_entropy_backward with a number) runs on the previous op's stream.

Determinism: every reduction has a fixed partition (a function of the shape and the config
only) and a fixed merge order, and no float atomics are used, so two runs agree bitwise.

Kernel signatures (checked by tests/test_nvvm.py and the launch check in tests/conftest.py):
every module of numbanorm.cuda that defines `@cuda.jit` kernels (not device functions) has a
module-level dict `KERNEL_SIGNATURES`, kernel name -> the argument signatures its launchers
really pass, declared on the line right after the kernel with `float_signatures`:

    @cuda.jit
    def _fill(out, value): ...
    KERNEL_SIGNATURES["_fill"] = float_signatures("{f}[::1], float64") + [
    "void(float16[::1], float64)"]  # float16 parameters' zero gradients (an empty batch)

`{f}` stands for the data dtype, float32 and float64 (a template without it gives one
signature); `{p}` for the parameters' dtype that goes with it (the same). The norm kernels,
which read and write float16 data themselves, pass `half=True`: one more signature with
{f} = float16 and {p} = float32 (mixed precision: float16 x/dy/y/dx, float32 parameters).
Types as Numba infers them at a launch: a C-contiguous n-d device array of dtype d is
`d[:, ..., ::1]` (any other layout `d[:, ...]`), a Python int `int64`, a float `float64`,
a bool `boolean`, a NumPy scalar its own type. So launchers pass Python scalars (int(),
float(), bool() on values that may come from a caller) and placeholders of the data (or
parameters') dtype for absent arrays: each kernel then needs one signature per float dtype (a
real GPU compiles it at most twice, three times with float16), and a new module or kernel
needs nothing but its KERNEL_SIGNATURES entries.
- tests/test_nvvm.py walks every module of numbanorm.cuda, finds every kernel, and compiles
  each declared signature with NVIDIA's NVVM (`numba.cuda.compile_ptx`) for compute
  capability 8.0 and 9.0; it fails on a compile error, on a kernel without a declaration and
  on a declaration naming no kernel.
- Under the CUDA simulator, tests/conftest.py types every kernel launch of the test session
  and fails the launch whose argument types match none of the kernel's declarations.
"""
import contextlib
import contextvars
import functools
import sys

import numpy as np
from numba import config as numba_config
from numba import cuda

from . import config

FLOAT_TYPES = (("float32", "float32"), ("float64", "float64"))  # (data, parameters)
HALF_TYPES = ("float16", "float32")
KERNEL_SIGNATURES = {}


def float_signatures(*arg_templates, half=False):
    """["void(<args>)", ...] for each template and each data dtype: `{f}` in a template is
    replaced by float32, then float64 (then float16 with half=True), `{p}` by the parameters'
    dtype of that data dtype (float32 for float16); duplicates are dropped, the order kept."""
    types = FLOAT_TYPES + ((HALF_TYPES,) if half else ())
    sigs = (f"void({t.format(f=f, p=p)})" for t in arg_templates for f, p in types)
    return list(dict.fromkeys(sigs))


# ---------------------------------------------------------------- streams

# (numba stream or 0, the framework's stream object kept alive while it is in use)
_EXPLICIT = contextvars.ContextVar("numbanorm_cuda_explicit_stream", default=None)
_OP = contextvars.ContextVar("numbanorm_cuda_op_stream", default=(0, None))
_EXTERNAL = {}  # stream handle -> numba's wrapper of it (external_stream costs a few us)


def op_stream():
    """The stream the current op launches, allocates and copies on (see the module docstring)."""
    explicit = _EXPLICIT.get()
    return _OP.get()[0] if explicit is None else explicit[0]


def external(handle):
    """A Numba stream for a raw CUDA stream handle (0 and the CUDA array interface's 1 and 2:
    the default, legacy default and per-thread default streams)."""
    handle = int(handle)
    if handle == 0:
        return 0
    if handle == 1:
        return cuda.legacy_default_stream()
    if handle == 2:
        return cuda.per_thread_default_stream()
    s = _EXTERNAL.get(handle)
    if s is None:
        if len(_EXTERNAL) >= 64:
            _EXTERNAL.clear()
        s = _EXTERNAL[handle] = cuda.external_stream(handle)
    return s


def as_numba_stream(s):
    """A Numba stream (or 0) for s: a Numba stream as it is; a PyTorch stream (.cuda_stream), a
    CuPy stream (.ptr), any object with the CUDA stream protocol (__cuda_stream__) or a raw
    handle (int) wrapped with cuda.external_stream."""
    if isinstance(s, int) and not isinstance(s, bool):
        return external(s)
    if hasattr(s, "auto_synchronize"):  # a numba.cuda stream (also the simulator's)
        return s
    for attr in ("cuda_stream", "ptr"):  # torch.cuda.Stream, cupy.cuda.Stream
        handle = getattr(s, attr, None)
        if isinstance(handle, int):
            return external(handle)
    if hasattr(s, "__cuda_stream__"):
        return external(s.__cuda_stream__()[1])
    raise TypeError(f"stream must be a numba.cuda stream, a PyTorch or CuPy stream, an object with "
                    f"__cuda_stream__ or a stream handle (int), got {type(s).__module__}."
                    f"{type(s).__qualname__}")


@contextlib.contextmanager
def stream(s):
    """Run the numbanorm ops (functional and layers) of this block on stream s, overriding the
    stream picked from the inputs; s as `as_numba_stream` takes it, or None for no override."""
    token = _EXPLICIT.set(None if s is None else (as_numba_stream(s), s))
    try:
        yield
    finally:
        _EXPLICIT.reset(token)


def _foreign_stream(a):
    """(numba stream, owner) an array from another framework is used on (see the module doc)."""
    root = type(a).__module__.partition(".")[0]
    framework = sys.modules.get(root) if root in ("torch", "cupy") else None
    if framework is not None:
        if root == "torch":
            st = framework.cuda.current_stream(a.device)
            return external(st.cuda_stream), st
        st = framework.cuda.get_current_stream()
        return external(st.ptr), st
    handle = getattr(a, "__cuda_array_interface__", {}).get("stream")
    return (0, None) if handle is None else (external(handle), None)


def begin_op(arrays):
    """Make the stream of the op whose input arrays (Numba device arrays or foreign CUDA arrays,
    or None) are given the current op stream, and return it (see the module docstring)."""
    explicit = _EXPLICIT.get()
    if explicit is not None:
        return explicit[0]
    found = None
    for a in arrays:
        if a is None:
            continue
        if (not getattr(a, "__cuda_ndarray__", False)
                or type(a).__module__.partition(".")[0] in ("torch", "cupy")):
            found = _foreign_stream(a)  # a framework's stream wins over Numba arrays'
            break
        if found is None and a.stream:
            found = (a.stream, None)
    _OP.set(found or (0, None))
    return op_stream()


def to_host(a):
    """A device array copied to a new NumPy array on the op's stream; waits for that stream's
    work up to the copy (a synchronisation: say so where an op does it)."""
    s = op_stream()
    host = a.copy_to_host(stream=s)
    if s:
        s.synchronize()
    return host


_SIMULATOR = bool(numba_config.ENABLE_CUDASIM)
_LAUNCHES = {}  # (kernel, grid, block, stream, shared bytes) -> numba's configured launch


def launch(kernel, grid, block, shmem=0):
    """kernel configured for grid x block threads with shmem bytes of dynamic shared memory, on
    the op's stream. Configured once per key and reused: numba builds a launch configuration
    (and checks the grid for its low-occupancy warning) at every kernel[...] otherwise. The
    simulator configures its kernel objects in place: there each call configures afresh."""
    s = op_stream()
    if _SIMULATOR:
        return kernel[grid, block, s, shmem]
    key = (kernel, grid, block, s, shmem)
    configured = _LAUNCHES.get(key)
    if configured is None:
        if len(_LAUNCHES) >= 4096:
            _LAUNCHES.clear()
        configured = _LAUNCHES[key] = kernel[grid, block, s, shmem]
    return configured


@functools.lru_cache(maxsize=None)
def placeholder(dtype, ndim=1):
    """A C-contiguous device array of dtype with ndim dims of 1, passed for an absent array
    argument that the kernel does not touch (its flags say so): allocated once per (dtype,
    ndim), so a launch needs no per-call slice or reshape to fill the slot (and each kernel
    keeps one signature per data dtype)."""
    return cuda.device_array((1,) * ndim, np.dtype(dtype))


def device_array(shape, dtype):
    """An uninitialised device array bound to the op's stream."""
    return cuda.device_array(shape, dtype, stream=op_stream())


# The CUDA simulator has no warp shuffles; there one thread sums the last 32 partials in the
# same pairwise order as the shuffle tree, so both paths give identical bits.
USE_SHUFFLE = hasattr(cuda, "shfl_down_sync")
FULL_MASK = 0xFFFFFFFF
WARP = 32


def threads():
    """Threads per block from config.THREADS, checked (a power of two, 32..1024)."""
    t = int(config.THREADS)
    if t < WARP or t > 1024 or t & (t - 1):
        raise ValueError(f"numbanorm.cuda.config.THREADS must be a power of two in [32, 1024], got {t}")
    return t


def shared_bytes(t):
    """Dynamic shared memory for block_sum2: two float64 values per thread."""
    return 2 * t * 8


def cdiv(a, b):
    return -(-a // b)


@cuda.jit(device=True)
def block_sum2(a, b, sh):
    """Sum a and b over the block; every thread gets (sum_a, sum_b).

    sh: the dynamic shared float64 array of 2 * blockDim.x entries. All threads must call this
    (it synchronizes). Pairwise tree order, fixed for a given blockDim.x.
    """
    tid = cuda.threadIdx.x
    T = cuda.blockDim.x
    sh[tid] = a
    sh[T + tid] = b
    cuda.syncthreads()
    stride = T // 2
    while stride >= WARP:
        if tid < stride:
            sh[tid] += sh[tid + stride]
            sh[T + tid] += sh[T + tid + stride]
        cuda.syncthreads()
        stride //= 2
    # sh[0:32] and sh[T:T+32] now hold 32 partials each: finish in warp 0
    if USE_SHUFFLE:
        if tid < WARP:
            a = sh[tid]
            b = sh[T + tid]
            off = WARP // 2
            while off > 0:
                a += cuda.shfl_down_sync(FULL_MASK, a, off)
                b += cuda.shfl_down_sync(FULL_MASK, b, off)
                off //= 2
            if tid == 0:
                sh[0] = a
                sh[T] = b
    elif tid == 0:
        # the simulator: the same pairwise tree, done by one thread (no barriers)
        off = WARP // 2
        while off > 0:
            for i in range(off):
                sh[i] += sh[i + off]
                sh[T + i] += sh[T + i + off]
            off //= 2
    cuda.syncthreads()
    a = sh[0]
    b = sh[T]
    cuda.syncthreads()  # sh may be reused by the caller's next reduction
    return a, b


# The index helpers are inlined in Numba IR (inline="always"): a kernel using them compiles to
# the PTX of the index math written out (checked); a plain device function, inlined later by
# NVVM, kept a few sign fix-ups of the floor divisions per element.
@cuda.jit(device=True, inline="always")
def unravel4(e, C, H, W):
    """(n, c, h, w) of the flat index e into a C-contiguous (N, C, H, W) array."""
    w = e % W
    h = (e // W) % H
    c = (e // (W * H)) % C
    n = e // (W * H * C)
    return n, c, h, w


@cuda.jit(device=True, inline="always")
def unravel3(i, CS, S):
    """(n, c, s) of the flat index i into a C-contiguous (N, C, S) array; CS = C * S."""
    n = i // CS
    r = i - n * CS
    c = r // S
    return n, c, r - c * S


@cuda.jit
def _fill(out, value):
    for i in range(cuda.grid(1), out.shape[0], cuda.gridsize(1)):
        out[i] = value


KERNEL_SIGNATURES["_fill"] = float_signatures("{f}[::1], float64") + [
    "void(float16[::1], float64)"]  # float16 parameters' zero gradients (an empty batch)


@cuda.jit
def _copy_cast(src, out):
    for i in range(cuda.grid(1), out.shape[0], cuda.gridsize(1)):
        out[i] = src[i]


KERNEL_SIGNATURES["_copy_cast"] = float_signatures("float64[::1], {f}[::1]") + [
    "void(float16[::1], float32[::1])", "void(float32[::1], float16[::1])",  # float16 ops
    "void(float64[::1], float16[::1])"]


@cuda.jit
def _add(dst, src):
    for i in range(cuda.grid(1), dst.shape[0], cuda.gridsize(1)):
        dst[i] += src[i]


KERNEL_SIGNATURES["_add"] = float_signatures("{f}[::1], {f}[::1]")


def grid_1d(n, t):
    """Blocks for a grid-stride loop over n elements."""
    return max(1, min(cdiv(n, t), config.TARGET_BLOCKS * 4))


def size(shape):
    """The number of elements of an array of this shape, as an int."""
    return int(np.prod(shape, dtype=np.int64))


def flat(a):
    """A C-contiguous device array as 1-D (a view)."""
    return a.reshape(size(a.shape))


def launch_1d(kernel, n, *args):
    """Launch a grid-stride kernel over n elements with args (nothing when n is 0)."""
    if n:
        t = threads()
        launch(kernel, grid_1d(n, t), t)(*args)


def fill(out, value):
    launch_1d(_fill, size(out.shape), flat(out), float(value))
    return out


def copy_cast(src, out):
    launch_1d(_copy_cast, size(out.shape), flat(src), flat(out))
    return out


def add_(dst, src):
    launch_1d(_add, size(dst.shape), flat(dst), flat(src))
