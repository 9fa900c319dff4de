"""Stage 1 and the in-order merge of the GPU's per-channel two-stage reduction, shared by
numbanorm.cuda.channel_norm (BatchNorm statistics and backward sums) and row_norm's backward
(dweight/dbias with per-(sample, group) statistics); masked_channel_norm's own partials use its
chunking (split, block_chunk) and merge (sum_row).

Shape legend: x (and dy) a C-contiguous (N, C, S) device array of float32, float64 or float16
(read as float64); partials p1, p2 float64 (C, P).
Channel c is cut into P chunks, P chosen from the shape and config so that about
config.TARGET_BLOCKS blocks run even when C is small; each block writes p1[c, p], p2[c, p].
Layouts:
  plane   (S > 1, or C < 32): a block walks its chunk of (n, s) with consecutive threads on
          consecutive s (coalesced), then reduces in shared memory / warp shuffles;
  column  (S == 1 and C >= 32): consecutive threads take consecutive channels of a row
          (coalesced) and each sums its column over a chunk of rows.
Stage 2 (`sum_row`, in the kernel that needs the sums) adds a channel's P partials in order.
No float atomics: deterministic.

Partial modes: 0 = shifted stats of x: p1 = sum(x - x[0, c, 0]), p2 = sum((x - x[0, c, 0])^2);
1 = backward sums: p1 = sum(dy), p2 = sum(dy * (x - mean[k])); 2 = as 1 with p2 scaled by
rstd[k]. The statistic index is k = (n // nrows) * nstride + c // Cg (nstride = 0, Cg = 1 for
BatchNorm; the row-norm backward uses nstride = G to get per-(sample, group) statistics, and
nrows = S on the (N*S, C, 1) view of channels-last memory, else 1).
"""
import functools

import numpy as np
from numba import cuda, float64

from . import config
from ._common import (block_sum2, cdiv, device_array, float_signatures, launch, placeholder,
                      shared_bytes, threads)

COLUMN_MIN_C = 32  # (N, C) input with at least this many channels uses the column layout
KERNEL_SIGNATURES = {}  # kernel name -> argument signatures (see _common)


# ---------------------------------------------------------------- stage 1: partial sums

@cuda.jit(device=True)
def cdiv_dev(a, b):
    return (a + b - 1) // b


@cuda.jit(device=True, inline="always")  # same PTX as written out (see _common.unravel4)
def block_chunk(P, chunk, L):
    """(c, p, i0, i1): block blockIdx.x = c * P + p reduces values [i0, i1) of channel c's L."""
    c = cuda.blockIdx.x // P
    p = cuda.blockIdx.x % P
    i0 = p * chunk
    return c, p, i0, min(L, i0 + chunk)


@cuda.jit
def _plane_partials(x, dy, mean, rstd, nrows, nstride, Cg, mode, chunk, p1, p2):
    """Block b = c * P + p reduces values i in [p*chunk, (p+1)*chunk) of channel c (i = n*S + s)."""
    N, C, S = x.shape
    sh = cuda.shared.array(0, float64)
    tid = cuda.threadIdx.x
    T = cuda.blockDim.x
    c, p, i0, i1 = block_chunk(p1.shape[1], chunk, N * S)
    a1 = 0.0
    a2 = 0.0
    if mode == 0:
        shift = float64(x[0, c, 0])
        for i in range(i0 + tid, i1, T):
            n = i // S
            s = i - n * S
            d = float64(x[n, c, s]) - shift
            a1 += d
            a2 += d * d
    else:
        g0 = c // Cg
        for i in range(i0 + tid, i1, T):
            n = i // S
            s = i - n * S
            k = (n // nrows if nrows > 1 else n) * nstride + g0
            g = float64(dy[n, c, s])
            t = g * (float64(x[n, c, s]) - mean[k])
            if mode == 2:
                t *= rstd[k]
            a1 += g
            a2 += t
    a1, a2 = block_sum2(a1, a2, sh)
    if tid == 0:
        p1[c, p] = a1
        p2[c, p] = a2


KERNEL_SIGNATURES["_plane_partials"] = float_signatures(
    "{f}[:, :, ::1], {f}[:, :, ::1], float64[::1], float64[::1], int64, int64, int64, int64, "
    "int64, float64[:, ::1], float64[:, ::1]", half=True)


@cuda.jit
def _column_partials(x, dy, mean, rstd, nrows, nstride, Cg, mode, chunk, p1, p2):
    """S == 1: thread (column block cb, chunk p) sums channel c over rows [p*chunk, (p+1)*chunk)."""
    N, C, _ = x.shape
    ncb = cdiv_dev(C, cuda.blockDim.x)
    cb = cuda.blockIdx.x % ncb
    p = cuda.blockIdx.x // ncb
    c = cb * cuda.blockDim.x + cuda.threadIdx.x
    if c >= C:
        return
    a1 = 0.0
    a2 = 0.0
    n1 = min(N, (p + 1) * chunk)
    if mode == 0:
        shift = float64(x[0, c, 0])
        for n in range(p * chunk, n1):
            d = float64(x[n, c, 0]) - shift
            a1 += d
            a2 += d * d
    else:
        g0 = c // Cg
        for n in range(p * chunk, n1):
            k = (n // nrows if nrows > 1 else n) * nstride + g0
            g = float64(dy[n, c, 0])
            t = g * (float64(x[n, c, 0]) - mean[k])
            if mode == 2:
                t *= rstd[k]
            a1 += g
            a2 += t
    p1[c, p] = a1
    p2[c, p] = a2


KERNEL_SIGNATURES["_column_partials"] = float_signatures(
    "{f}[:, :, ::1], {f}[:, :, ::1], float64[::1], float64[::1], int64, int64, int64, int64, "
    "int64, float64[:, ::1], float64[:, ::1]", half=True)


@functools.lru_cache(maxsize=256)
def _partial_plan(N, C, S, t, items, target_blocks):
    """(column layout?, blocks, P, chunk, shared bytes) of stage 1 (cached per shape and config)."""
    if S == 1 and C >= COLUMN_MIN_C:
        ncb = cdiv(C, t)
        P, chunk = split(N, items, cdiv(target_blocks, ncb))
        return True, ncb * P, P, chunk, 0
    P, chunk = split(N * S, t * items, cdiv(target_blocks, C))
    return False, C * P, P, chunk, shared_bytes(t)


def split(L, min_chunk, most_chunks):
    """(P, chunk): L values cut into P chunks of `chunk` (the last one shorter), as many as
    most_chunks allows without going under min_chunk values a chunk (at least 1)."""
    P = max(1, min(cdiv(L, min_chunk), most_chunks))
    chunk = cdiv(L, P)
    return cdiv(L, chunk), chunk


def partial_sums(x, dy, mean, rstd, nstride, Cg, mode, nrows=1):
    """Stage 1 for any mode: returns the (C, P) float64 partial arrays (p1, p2)."""
    N, C, S = x.shape
    t = threads()
    column, grid, P, chunk, shmem = _partial_plan(N, C, S, t, max(1, int(config.ITEMS_PER_THREAD)),
                                                  int(config.TARGET_BLOCKS))
    kernel = _column_partials if column else _plane_partials
    p1 = device_array((C, P), np.float64)
    p2 = device_array((C, P), np.float64)
    dy = x if dy is None else dy
    mean = placeholder(np.float64) if mean is None else mean  # unused in mode 0
    rstd = placeholder(np.float64) if rstd is None else rstd  # unused in modes 0 and 1
    launch(kernel, grid, t, shmem)(x, dy, mean, rstd, int(nrows), int(nstride), int(Cg), int(mode),
                                   int(chunk), p1, p2)
    return p1, p2


# ---------------------------------------------------------------- stage 2: merges

@cuda.jit(device=True)
def sum_row(p, c):
    s = 0.0
    for j in range(p.shape[1]):
        s += p[c, j]
    return s


@cuda.jit
def _merge(p1, p2, out1, out2):
    c = cuda.grid(1)
    if c < out1.shape[0]:
        out1[c] = sum_row(p1, c)
        out2[c] = sum_row(p2, c)


KERNEL_SIGNATURES["_merge"] = float_signatures(
    "float64[:, ::1], float64[:, ::1], float64[::1], float64[::1]")


def merge(p1, p2):
    """Sum (C, P) partials over P in order -> two float64 (C,) arrays."""
    C = p1.shape[0]
    out1 = device_array(C, np.float64)
    out2 = device_array(C, np.float64)
    t = threads()
    launch(_merge, cdiv(C, t), t)(p1, p2, out1, out2)
    return out1, out2
