"""Software prefetch for kernels that walk a C-contiguous (R, C) matrix in blocks of rows.

A loop over a (rows, C) block with the columns inside and the rows unrolled (cpu/_columns, the
channels-last row norms) touches the cache lines of several rows in turn, not in address
order, and from memory the hardware prefetchers do not follow it: cold (32, 784, 64) float32
column sums in 8-row blocks ran 2.2x slower than the same sums row by row (1 thread, 0.66 against
0.30 ms for the NCHW row sums). `ahead` asks for the lines of a block's range AHEAD bytes
further on, in address order (prefetcht0 / prefetchw through llvm.prefetch): those sums then
ran at 0.38 ms cold and unchanged warm. A prefetch never faults and changes no result.
"""
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

LINE = 64  # bytes per cache line
AHEAD = 8192  # bytes between the block being worked on and the lines prefetched


def _prefetch_intrinsic(rw):
    @intrinsic
    def prefetch(typingctx, arr, i):
        def codegen(context, builder, signature, args):
            ary = context.make_array(signature.args[0])(context, builder, args[0])
            i8p = ir.IntType(8).as_pointer()
            ptr = builder.bitcast(builder.gep(ary.data, [args[1]]), i8p)
            i32 = ir.IntType(32)
            fn = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]),
                "llvm.prefetch.p0")
            # (address, rw, locality 3 = keep in all levels, cache type 1 = data)
            builder.call(fn, [ptr, ir.Constant(i32, rw), ir.Constant(i32, 3), ir.Constant(i32, 1)])
            return context.get_dummy_value()
        return types.void(arr, types.intp), codegen
    return prefetch


_read = _prefetch_intrinsic(0)
_write = _prefetch_intrinsic(1)


@njit(inline="always")
def ahead(flat, lo, hi):
    """Prefetch (for reading) the lines of flat[lo:hi] shifted AHEAD bytes on, clipped to flat;
    flat: a 1-D C-contiguous array."""
    step = max(1, LINE // flat.itemsize)
    shift = AHEAD // flat.itemsize
    for i in range(lo + shift, min(hi + shift, flat.size), step):
        _read(flat, i)


@njit(inline="always")
def ahead_write(flat, lo, hi):
    """As `ahead`, the lines prefetched for writing."""
    step = max(1, LINE // flat.itemsize)
    shift = AHEAD // flat.itemsize
    for i in range(lo + shift, min(hi + shift, flat.size), step):
        _write(flat, i)
