"""Pieces shared by the GPU kernels: launch sizes, the block reduction, 1-D helpers, and the
declaration of each kernel's argument types.

Determinism: every reduction has a fixed partition (a function of the shape and the config
only) and a fixed merge order, and no float atomics are used, so two runs agree bitwise.

Kernel signatures (checked by tests/test_nvvm.py and the launch check in tests/conftest.py):
every module of numbanorm.cuda that defines `@cuda.jit` kernels (not device functions) has a
module-level dict `KERNEL_SIGNATURES`, kernel name -> the argument signatures its launchers
really pass, declared on the line right after the kernel with `float_signatures`:

    @cuda.jit
    def _fill(out, value): ...
    KERNEL_SIGNATURES["_fill"] = float_signatures("{f}[::1], float64")

`{f}` stands for the data dtype, float32 and float64 (a template without it gives one
signature). Types as Numba infers them at a launch: a C-contiguous n-d device array of dtype
d is `d[:, ..., ::1]` (any other layout `d[:, ...]`), a Python int `int64`, a float `float64`,
a bool `boolean`, a NumPy scalar its own type. So launchers pass Python scalars (int(),
float(), bool() on values that may come from a caller) and placeholders of the data dtype for
absent arrays: each kernel then needs one signature per float dtype (a real GPU compiles it at
most twice), and a new module or kernel needs nothing but its KERNEL_SIGNATURES entries.
- tests/test_nvvm.py walks every module of numbanorm.cuda, finds every kernel, and compiles
  each declared signature with NVIDIA's NVVM (`numba.cuda.compile_ptx`) for compute
  capability 8.0 and 9.0; it fails on a compile error, on a kernel without a declaration and
  on a declaration naming no kernel.
- Under the CUDA simulator, tests/conftest.py types every kernel launch of the test session
  and fails the launch whose argument types match none of the kernel's declarations.
"""
import numpy as np
from numba import cuda

from . import config

FLOAT_TYPES = ("float32", "float64")
KERNEL_SIGNATURES = {}


def float_signatures(*arg_templates):
    """["void(<args>)", ...] for each template and each data dtype: `{f}` in a template is
    replaced by float32, then float64; duplicates are dropped, the order kept."""
    sigs = (f"void({t.format(f=f)})" for t in arg_templates for f in FLOAT_TYPES)
    return list(dict.fromkeys(sigs))


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


@cuda.jit
def _fill(out, value):
    for i in range(cuda.grid(1), out.shape[0], cuda.gridsize(1)):
        out[i] = value


KERNEL_SIGNATURES["_fill"] = float_signatures("{f}[::1], float64")


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


def flat(a):
    """A C-contiguous device array as 1-D (a view)."""
    return a.reshape(int(np.prod(a.shape, dtype=np.int64)))


def fill(out, value):
    n = int(np.prod(out.shape, dtype=np.int64))
    if n:
        t = threads()
        _fill[grid_1d(n, t), t](flat(out), float(value))
    return out


def copy_cast(src, out):
    n = int(np.prod(out.shape, dtype=np.int64))
    if n:
        t = threads()
        _copy_cast[grid_1d(n, t), t](flat(src), flat(out))
    return out


def add_(dst, src):
    n = int(np.prod(dst.shape, dtype=np.int64))
    if n:
        t = threads()
        _add[grid_1d(n, t), t](flat(dst), flat(src))
