"""Per-column passes over a C-contiguous (R, C) matrix, emitted as explicit LLVM vector code:
the inner loops of every channels-last norm kernel (GroupNorm/InstanceNorm on one sample's
(S, C), numbanorm.cpu.row_norm_channels_last; BatchNorm on row blocks of the (N*S, C) view,
numbanorm.cpu.channel_norm_columns).

Shapes and dtypes: x, g (dy) and out are C-contiguous (R, C) arrays of float32, float64 or
16-bit bits (uint16 float16, int16 bfloat16, converted exactly as numbanorm.cpu.half does);
per-column coefficients m, a, b, d are (C,) arrays of the work type (float64 for float64 data,
else float32); sums s1, s2 are float64 (C,) arrays.

Why explicit: a channels-last pass applies per-column coefficients (or adds per-column sums)
row after row. Written as Numba loops, with the column loop inside a block of rows, every block
reloads its coefficients or accumulators from memory and pays LLVM's loop set-up and overlap
checks: the (784, 64) float32 normalize pass took 3.5x the time of the same pass over
contiguous planes with the sample in L2 (0.13 against 0.037 ms for 32 samples, 1 thread).
Here columns go up to PANELS vectors of LANE_BYTES at a time; their coefficients or
accumulators stay in registers while the rows of a block stream past (that pass: 0.036 ms;
no software prefetch of the inputs: the walk is in address order for C <= 128 float32, and
1-8 KB ahead measured no faster from memory; the outputs' lines are asked for ahead, see
WRITE_AHEAD). Column blocks narrower than the row (a sample cut into blocks of groups that fit
L2) ran 1.3-1.6x slower: strided 64-128 byte row segments. The loop body is specialised at
compile time for 1..PANELS vectors, the last one masked when C is not a multiple of the
vector width. Sums: a work-type register sum per column over a block of
BLOCK_ROWS rows, added into float64 once per block (64 float32 terms sum to ~1e-6 relative,
as in row_norm); the order depends on the shape only.
"""
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from .half import bfloat16_bits

LANE_BYTES = 64  # bytes of work-type values per vector (one AVX-512 register)
# vectors of columns held in registers at a time (8 float32 vectors: C = 128): three values per
# vector (coefficients or sums) fill 24 of AVX-512's 32 registers, four (input_grad) fill 24 at 6
PANELS = 8
GRAD_PANELS = 6
BLOCK_ROWS = 64  # rows per block; sums are added into float64 once per block
# the elementwise passes ask for the output's lines this far ahead, for writing: after the sums
# pass the inputs are in L2 but the output is not, and its read-for-ownership misses then came
# one after the other (1 thread, from memory, sums + elementwise pass per sample: (32, 784, 64)
# float16 backward 0.33-0.38 -> 0.25 ms, (64, 3136, 64) float16 forward 1.66 -> 1.41 ms,
# float32 3-8% faster; from cache no change)
WRITE_AHEAD = 8192

_I16, _I32, _I64 = ir.IntType(16), ir.IntType(32), ir.IntType(64)
_F32, _F64 = ir.FloatType(), ir.DoubleType()


def _storage(dtype):
    """(LLVM element type of the data, kind) for a Numba dtype, or None if unsupported."""
    if dtype == types.float32:
        return _F32, "f32"
    if dtype == types.float64:
        return _F64, "f64"
    if dtype == types.uint16:
        return _I16, "f16"
    if dtype == types.int16:
        return _I16, "bf16"
    return None


def _work_dtype(dtype):
    return types.float64 if dtype == types.float64 else types.float32


def _is_matrix(a):
    return isinstance(a, types.Array) and a.ndim == 2 and a.layout == "C"


def _is_vector(a, dtype):
    return isinstance(a, types.Array) and a.ndim == 1 and a.layout == "C" and a.dtype == dtype


def _intrinsic_name(name, vty):
    suffix = {(_F32, 16): "v16f32", (_F64, 8): "v8f64", (_I16, 16): "v16i16",
              (_F64, 16): "v16f64"}[(vty.element, vty.count)]
    return "llvm.masked.%s.%s.p0" % (name, suffix)


class _Vectors:
    """Vector loads, stores and conversions for one data dtype, lanes per vector fixed."""

    def __init__(self, builder, kind, elem):
        self.builder = builder
        self.kind = kind
        self.elem = elem
        self.work = _F64 if kind == "f64" else _F32
        self.lanes = LANE_BYTES // (8 if kind == "f64" else 4)
        self.vwork = ir.VectorType(self.work, self.lanes)

    def mask(self, valid):
        """<lanes x i1>: lane < valid (valid: i64, 1..lanes)."""
        lanes = ir.Constant(ir.VectorType(_I64, self.lanes), [ir.Constant(_I64, i) for i in
                                                              range(self.lanes)])
        splat = self.splat(valid, _I64)
        return self.builder.icmp_unsigned("<", lanes, splat)

    def splat(self, value, ty):
        vty = ir.VectorType(ty, self.lanes)
        v = self.builder.insert_element(ir.Constant(vty, ir.Undefined), value, ir.Constant(_I32, 0))
        return self.builder.shuffle_vector(v, ir.Constant(vty, ir.Undefined),
                                           ir.Constant(ir.VectorType(_I32, self.lanes), [0] * self.lanes))

    def raw_load(self, ptr, off, ety, mask):
        b = self.builder
        vty = ir.VectorType(ety, self.lanes)
        vptr = b.bitcast(b.gep(ptr, [off]), vty.as_pointer())
        align = ety.width // 8 if isinstance(ety, ir.IntType) else (4 if ety == _F32 else 8)
        if mask is None:
            return b.load(vptr, align=align)
        fn = cgutils.get_or_insert_function(
            b.module, ir.FunctionType(vty, [vty.as_pointer(), _I32, mask.type, vty]),
            _intrinsic_name("load", vty))
        return b.call(fn, [vptr, ir.Constant(_I32, align), mask, ir.Constant(vty, None)])

    def raw_store(self, value, ptr, off, mask):
        b = self.builder
        vty = value.type
        vptr = b.bitcast(b.gep(ptr, [off]), vty.as_pointer())
        ety = vty.element
        align = ety.width // 8 if isinstance(ety, ir.IntType) else (4 if ety == _F32 else 8)
        if mask is None:
            b.store(value, vptr, align=align)
            return
        fn = cgutils.get_or_insert_function(
            b.module, ir.FunctionType(ir.VoidType(), [vty, vty.as_pointer(), _I32, mask.type]),
            _intrinsic_name("store", vty))
        b.call(fn, [value, vptr, ir.Constant(_I32, align), mask])

    def prefetch_write(self, ptr, off):
        """Ask for the line WRITE_AHEAD bytes past ptr[off], for writing (prefetchw)."""
        b = self.builder
        ahead = ir.Constant(_I64, WRITE_AHEAD // {_I16: 2, _F32: 4, _F64: 8}[self.elem])
        i8p = ir.IntType(8).as_pointer()
        fn = cgutils.get_or_insert_function(
            b.module, ir.FunctionType(ir.VoidType(), [i8p, _I32, _I32, _I32]), "llvm.prefetch.p0")
        addr = b.bitcast(b.gep(ptr, [b.add(off, ahead)]), i8p)
        b.call(fn, [addr, ir.Constant(_I32, 1), ir.Constant(_I32, 3), ir.Constant(_I32, 1)])

    def load(self, ptr, off, mask):
        """The data at ptr[off:off + lanes] as a work-type vector."""
        b = self.builder
        v = self.raw_load(ptr, off, self.elem, mask)
        if self.kind == "f16":
            return b.fpext(b.bitcast(v, ir.VectorType(ir.HalfType(), self.lanes)), self.vwork)
        if self.kind == "bf16":
            vi32 = ir.VectorType(_I32, self.lanes)
            high = b.shl(b.zext(v, vi32), self.splat(ir.Constant(_I32, 16), _I32))
            return b.bitcast(high, self.vwork)
        return v

    def store(self, v, ptr, off, mask):
        """A work-type vector into ptr[off:off + lanes], rounded to the data type (nearest even)."""
        b = self.builder
        if self.kind == "f16":
            v = b.bitcast(b.fptrunc(v, ir.VectorType(ir.HalfType(), self.lanes)),
                          ir.VectorType(_I16, self.lanes))
        elif self.kind == "bf16":
            v = bfloat16_bits(b, v)
        self.raw_store(v, ptr, off, mask)

    def add_into(self, acc, ptr, off, mask):
        """float64 ptr[off:off + lanes] += acc (a work-type vector)."""
        b = self.builder
        wide = acc if self.work == _F64 else b.fpext(acc, ir.VectorType(_F64, self.lanes))
        old = self.raw_load(ptr, off, _F64, mask)
        self.raw_store(b.fadd(old, wide), ptr, off, mask)


_FLAGS = ("contract",)


def _emit_columns(builder, vec, R, C, begin, row, end, most=PANELS):
    """for each block of BLOCK_ROWS rows, for each group of up to `most` column vectors:
    state = begin(cols); row(state, r, cols) for the block's rows r; end(state, cols).
    cols: [(first column (i64), mask or None)]; the loop body is emitted once per group size
    and tail case, so `state` lives in registers."""
    b = builder
    lanes = ir.Constant(_I64, vec.lanes)
    one = ir.Constant(_I64, 1)
    npan = b.sdiv(b.add(C, b.sub(lanes, one)), lanes)  # ceil(C / lanes)
    tail = b.sub(C, b.mul(b.sub(npan, one), lanes))  # columns in the last vector: 1..lanes
    masked_tail = b.icmp_signed("!=", tail, lanes)
    panels = ir.Constant(_I64, most)
    ngroups = b.sdiv(b.add(npan, b.sub(panels, one)), panels)
    block = ir.Constant(_I64, BLOCK_ROWS)
    nblocks = b.sdiv(b.add(R, b.sub(block, one)), block)
    with cgutils.for_range(b, nblocks) as blk:
        r0 = b.mul(blk.index, block)
        r1 = b.select(b.icmp_signed("<", b.add(r0, block), R), b.add(r0, block), R)
        with cgutils.for_range(b, ngroups) as grp:
            p0 = b.mul(grp.index, panels)
            left = b.sub(npan, p0)
            n = b.select(b.icmp_signed("<", left, panels), left, panels)
            is_last = b.icmp_signed("==", b.add(p0, n), npan)
            masked = b.and_(is_last, masked_tail)
            key = b.add(b.mul(b.sub(n, one), ir.Constant(_I64, 2)), b.zext(masked, _I64))
            merge = b.append_basic_block("panels.merge")
            default = b.append_basic_block("panels.default")
            switch = b.switch(key, default)
            with b.goto_block(default):
                b.branch(merge)
            for count in range(1, most + 1):
                for with_mask in (False, True):
                    case = b.append_basic_block("panels.%d.%d" % (count, with_mask))
                    switch.add_case(ir.Constant(_I64, 2 * (count - 1) + with_mask), case)
                    with b.goto_block(case):
                        cols = [(b.mul(b.add(p0, ir.Constant(_I64, p)), lanes), None)
                                for p in range(count)]
                        if with_mask:
                            cols[-1] = (cols[-1][0], vec.mask(tail))
                        state = begin(cols)
                        with cgutils.for_range_slice(b, r0, r1, one) as (r, _):
                            row(state, r, cols)
                        end(state, cols)
                        b.branch(merge)
            b.position_at_end(merge)


def _arrays(context, builder, sig, args):
    return [context.make_array(t)(context, builder, a) if isinstance(t, types.Array) else a
            for t, a in zip(sig.args, args)]


@intrinsic
def affine(typingctx, x, out, m, a, b):
    """out[r, c] = (x[r, c] - m[c]) * a[c] + b[c]."""
    if not (_is_matrix(x) and _is_matrix(out) and out.dtype == x.dtype
            and _storage(x.dtype) is not None):
        return None
    w = _work_dtype(x.dtype)
    if not all(_is_vector(v, w) for v in (m, a, b)):
        return None
    elem, kind = _storage(x.dtype)

    def codegen(context, builder, sig, args):
        X, Y, M, A, B = _arrays(context, builder, sig, args)
        R, C = cgutils.unpack_tuple(builder, X.shape, 2)
        vec = _Vectors(builder, kind, elem)

        def begin(cols):
            return [(vec.raw_load(M.data, c, vec.work, k), vec.raw_load(A.data, c, vec.work, k),
                     vec.raw_load(B.data, c, vec.work, k)) for c, k in cols]

        def row(state, r, cols):
            base = builder.mul(r, C)
            for (c, k), (mv, av, bv) in zip(cols, state):
                off = builder.add(base, c)
                d = builder.fsub(vec.load(X.data, off, k), mv)
                y = builder.fadd(builder.fmul(d, av, flags=_FLAGS), bv, flags=_FLAGS)
                vec.prefetch_write(Y.data, off)
                vec.store(y, Y.data, off, k)

        _emit_columns(builder, vec, R, C, begin, row, lambda state, cols: None)
        return context.get_dummy_value()
    return types.void(x, out, m, a, b), codegen


@intrinsic
def input_grad(typingctx, x, g, out, m, a, b, d):
    """out[r, c] = a[c] * g[r, c] + b[c] * (x[r, c] - m[c]) + d[c]."""
    if not (_is_matrix(x) and _is_matrix(g) and _is_matrix(out) and g.dtype == x.dtype
            and out.dtype == x.dtype and _storage(x.dtype) is not None):
        return None
    w = _work_dtype(x.dtype)
    if not all(_is_vector(v, w) for v in (m, a, b, d)):
        return None
    elem, kind = _storage(x.dtype)

    def codegen(context, builder, sig, args):
        X, G, O, M, A, B, D = _arrays(context, builder, sig, args)
        R, C = cgutils.unpack_tuple(builder, X.shape, 2)
        vec = _Vectors(builder, kind, elem)

        def begin(cols):
            return [tuple(vec.raw_load(V.data, c, vec.work, k) for V in (M, A, B, D))
                    for c, k in cols]

        def row(state, r, cols):
            base = builder.mul(r, C)
            for (c, k), (mv, av, bv, dv) in zip(cols, state):
                off = builder.add(base, c)
                t1 = builder.fmul(av, vec.load(G.data, off, k), flags=_FLAGS)
                t2 = builder.fmul(bv, builder.fsub(vec.load(X.data, off, k), mv), flags=_FLAGS)
                out = builder.fadd(builder.fadd(t1, t2, flags=_FLAGS), dv, flags=_FLAGS)
                vec.prefetch_write(O.data, off)
                vec.store(out, O.data, off, k)

        _emit_columns(builder, vec, R, C, begin, row, lambda state, cols: None, GRAD_PANELS)
        return context.get_dummy_value()
    return types.void(x, g, out, m, a, b, d), codegen


def _sums(x, g, center, s1, s2, with_g):
    if not (_is_matrix(x) and _storage(x.dtype) is not None
            and _is_vector(center, _work_dtype(x.dtype))
            and _is_vector(s1, types.float64) and _is_vector(s2, types.float64)):
        return None
    if with_g and not (_is_matrix(g) and g.dtype == x.dtype):
        return None
    elem, kind = _storage(x.dtype)

    def codegen(context, builder, sig, args):
        arrays = _arrays(context, builder, sig, args)
        if with_g:
            X, G, M, S1, S2 = arrays
        else:
            X, M, S1, S2 = arrays
        R, C = cgutils.unpack_tuple(builder, X.shape, 2)
        vec = _Vectors(builder, kind, elem)
        zero = ir.Constant(vec.vwork, None)

        def begin(cols):
            return [[vec.raw_load(M.data, c, vec.work, k), zero, zero] for c, k in cols]

        def row(state, r, cols):
            # the accumulators are loop-carried: read them through phi-free allocas
            base = builder.mul(r, C)
            for (c, k), slot in zip(cols, state):
                off = builder.add(base, c)
                t1, t2 = builder.load(slot[1]), builder.load(slot[2])
                dv = builder.fsub(vec.load(X.data, off, k), slot[0])
                if with_g:
                    gv = vec.load(G.data, off, k)
                    t1 = builder.fadd(t1, gv)
                    t2 = builder.fadd(t2, builder.fmul(gv, dv, flags=_FLAGS), flags=_FLAGS)
                else:
                    t1 = builder.fadd(t1, dv)
                    t2 = builder.fadd(t2, builder.fmul(dv, dv, flags=_FLAGS), flags=_FLAGS)
                builder.store(t1, slot[1])
                builder.store(t2, slot[2])

        def begin_slots(cols):
            state = begin(cols)
            for slot in state:  # allocas in the entry block; mem2reg keeps them in registers
                for i in (1, 2):
                    ptr = cgutils.alloca_once(builder, vec.vwork)
                    builder.store(slot[i], ptr)
                    slot[i] = ptr
            return state

        def end(state, cols):
            for (c, k), slot in zip(cols, state):
                vec.add_into(builder.load(slot[1]), S1.data, c, k)
                vec.add_into(builder.load(slot[2]), S2.data, c, k)

        _emit_columns(builder, vec, R, C, begin_slots, row, end)
        return context.get_dummy_value()
    return codegen


@intrinsic
def moment_sums(typingctx, x, center, s1, s2):
    """s1[c] += sum_r (x[r, c] - center[c]); s2[c] += sum_r (x[r, c] - center[c])**2."""
    codegen = _sums(x, None, center, s1, s2, False)
    return None if codegen is None else (types.void(x, center, s1, s2), codegen)


@intrinsic
def grad_sums(typingctx, x, g, center, s1, s2):
    """s1[c] += sum_r g[r, c]; s2[c] += sum_r g[r, c] * (x[r, c] - center[c])."""
    codegen = _sums(x, g, center, s1, s2, True)
    return None if codegen is None else (types.void(x, g, center, s1, s2), codegen)
