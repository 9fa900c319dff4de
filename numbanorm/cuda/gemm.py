"""GPU gemm kernels (tiled, shared memory, float64 accumulation) for conv2d and linear.

gemm: C (Z, M, N) = op(A[z % A.shape[0]]) @ op(B[z % B.shape[0]]) (+ bias) for z = blockIdx.z:
a leading dim of 1 broadcasts, and with Z = batch * groups a leading dim of `groups` picks the
group (z = n * groups + g). op(A) is (M, K): A[za, m, k], or A[za, k, m] when ta (likewise B).
gemm_dw: dw (O, K) = sum over (n, p) of dy[n, o, p] * cols[n, k, p] (a convolution's dweight),
per group when dy and cols are (N, G, Og, P) / (N, G, Kg, P) views flattened into (N*G, ...).
Each output element is one thread's fixed-order sum: deterministic, no atomics.
"""
import os

from numba import cuda, float64

from ._common import cdiv, float_signatures, launch

# tile edge (TILE x TILE threads per block); small under the simulator (a Python thread per
# CUDA thread). A compile-time constant of the kernels.
TILE = 8 if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1" else 16

KERNEL_SIGNATURES = {}  # kernel name -> argument signatures (see _common)


@cuda.jit
def _gemm(A, B, C, ta, tb, bias, bias_mode, accumulate):
    """bias_mode 0: none, 1: bias[za * M + m] (per row of the group's output), 2: bias[n] (per
    column). accumulate: C += result."""
    sA = cuda.shared.array((TILE, TILE), float64)
    sB = cuda.shared.array((TILE, TILE), float64)
    z = cuda.blockIdx.z
    za = z % A.shape[0]
    zb = z % B.shape[0]
    M = C.shape[1]
    N = C.shape[2]
    K = A.shape[1] if ta else A.shape[2]
    tx = cuda.threadIdx.x
    ty = cuda.threadIdx.y
    row = cuda.blockIdx.y * TILE + ty
    col = cuda.blockIdx.x * TILE + tx
    acc = 0.0
    for k0 in range(0, K, TILE):
        ka = k0 + tx
        if row < M and ka < K:
            sA[ty, tx] = A[za, ka, row] if ta else A[za, row, ka]
        else:
            sA[ty, tx] = 0.0
        kb = k0 + ty
        if kb < K and col < N:
            sB[ty, tx] = B[zb, col, kb] if tb else B[zb, kb, col]
        else:
            sB[ty, tx] = 0.0
        cuda.syncthreads()
        for kk in range(TILE):
            acc += sA[ty, kk] * sB[kk, tx]
        cuda.syncthreads()
    if row < M and col < N:
        if bias_mode == 1:
            acc += bias[za * M + row]
        elif bias_mode == 2:
            acc += bias[col]
        if accumulate:
            C[z, row, col] += acc
        else:
            C[z, row, col] = acc


KERNEL_SIGNATURES["_gemm"] = float_signatures(
    "{f}[:, :, ::1], {f}[:, :, ::1], {f}[:, :, ::1], boolean, boolean, {f}[::1], int64, boolean")


def gemm(A, B, C, ta=False, tb=False, bias=None, bias_mode=0, accumulate=False):
    """C (Z, M, N) = op(A) @ op(B) per z (see the module docstring); A and B are 3-D."""
    Z, M, N = C.shape
    if bias is None:
        bias, bias_mode = C.reshape(Z * M * N)[:1], 0
    grid = (cdiv(N, TILE), cdiv(M, TILE), Z)
    launch(_gemm, grid, (TILE, TILE))(A, B, C, ta, tb, bias, bias_mode, accumulate)
    return C


@cuda.jit
def _gemm_dw(dy, cols, G, dw):
    """dw[g, o, k] = sum over (n, p) of dy[n*G + g, o, p] * cols[n*G + g, k, p]; blockIdx.z = g."""
    sA = cuda.shared.array((TILE, TILE), float64)
    sB = cuda.shared.array((TILE, TILE), float64)
    NG, O, P = dy.shape
    K = cols.shape[1]
    g = cuda.blockIdx.z
    R = (NG // G) * P
    tx = cuda.threadIdx.x
    ty = cuda.threadIdx.y
    row = cuda.blockIdx.y * TILE + ty  # o
    col = cuda.blockIdx.x * TILE + tx  # k
    acc = 0.0
    for r0 in range(0, R, TILE):
        ra = r0 + tx
        if row < O and ra < R:
            sA[ty, tx] = dy[(ra // P) * G + g, row, ra % P]
        else:
            sA[ty, tx] = 0.0
        rb = r0 + ty
        if rb < R and col < K:
            sB[ty, tx] = cols[(rb // P) * G + g, col, rb % P]
        else:
            sB[ty, tx] = 0.0
        cuda.syncthreads()
        for kk in range(TILE):
            acc += sA[ty, kk] * sB[kk, tx]
        cuda.syncthreads()
    if row < O and col < K:
        dw[g, row, col] = acc


KERNEL_SIGNATURES["_gemm_dw"] = float_signatures(
    "{f}[:, :, ::1], {f}[:, :, ::1], int64, {f}[:, :, ::1]")


def gemm_dw(dy, cols, groups, dw):
    """dy (N*G, Og, P), cols (N*G, Kg, P) -> dw (G, Og, Kg)."""
    G, O, K = dw.shape
    launch(_gemm_dw, (cdiv(K, TILE), cdiv(O, TILE), G), (TILE, TILE))(dy, cols, groups, dw)
    return dw
