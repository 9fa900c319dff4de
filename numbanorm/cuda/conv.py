"""GPU kernels for 2-D convolution with stride, zero padding, dilation and groups: im2col + the
tiled gemm of cuda/gemm.py (bias in the gemm's epilogue).

Shape legend as numbanorm/cpu/conv.py: x (N, C, H, W), weight (O, C/G, KH, KW), y (N, O, OH, OW),
P = OH * OW, K = C * KH * KW, Kg = K / G, Og = O / G; cols (N, K, P) with the rows of group g at
[g*Kg, (g+1)*Kg), so cols viewed as (N*G, Kg, P) and y as (N*G, Og, P) give one batched gemm with
weight (G, Og, Kg). Backward: gemm_dw for dweight, a column-sum kernel for dbias, a batched gemm
for dcols and a col2im that gathers (one thread per dx element, fixed order; no atomics).
"""
from numba import cuda, float64

from .._shapes import conv_dims
from ._common import (block_sum2, device_array, float_signatures, launch, launch_1d, shared_bytes,
                      size, threads, unravel4)
from .gemm import gemm, gemm_dw

KERNEL_SIGNATURES = {}  # kernel name -> argument signatures (see _common)


@cuda.jit
def _im2col(x, KH, KW, sh, sw, ph, pw, dh, dw, OH, OW, cols):
    N, C, H, W = x.shape
    K = cols.shape[1]
    P = OH * OW
    for e in range(cuda.grid(1), N * K * P, cuda.gridsize(1)):
        p = e % P
        row = (e // P) % K
        n = e // (P * K)
        j = row % KW
        i = (row // KW) % KH
        c = row // (KW * KH)
        ih = (p // OW) * sh - ph + i * dh
        iw = (p % OW) * sw - pw + j * dw
        if ih >= 0 and ih < H and iw >= 0 and iw < W:
            cols[n, row, p] = x[n, c, ih, iw]
        else:
            cols[n, row, p] = 0.0


KERNEL_SIGNATURES["_im2col"] = float_signatures(
    "{f}[:, :, :, ::1], int64, int64, int64, int64, int64, int64, int64, int64, int64, int64, {f}[:, :, ::1]")


@cuda.jit
def _col2im(dcols, KH, KW, sh, sw, ph, pw, dh, dw, OH, OW, dx):
    """One thread per dx[n, c, h, w]: the sum over the (i, j, oh, ow) that read it."""
    N, C, H, W = dx.shape
    for e in range(cuda.grid(1), N * C * H * W, cuda.gridsize(1)):
        n, c, h, w = unravel4(e, C, H, W)
        acc = 0.0
        for i in range(KH):
            th = h + ph - i * dh
            if th < 0 or th % sh != 0:
                continue
            oh = th // sh
            if oh >= OH:
                continue
            for j in range(KW):
                tw = w + pw - j * dw
                if tw < 0 or tw % sw != 0:
                    continue
                ow = tw // sw
                if ow >= OW:
                    continue
                acc += dcols[n, (c * KH + i) * KW + j, oh * OW + ow]
        dx[n, c, h, w] = acc


KERNEL_SIGNATURES["_col2im"] = float_signatures(
    "{f}[:, :, ::1], int64, int64, int64, int64, int64, int64, int64, int64, int64, int64, {f}[:, :, :, ::1]")


@cuda.jit
def _channel_sum(dy, out):
    """out[o] = sum over (n, p) of dy[n, o, p]; one block per o (block reduction)."""
    shm = cuda.shared.array(0, float64)
    N, O, P = dy.shape
    o = cuda.blockIdx.x
    acc = 0.0
    for e in range(cuda.threadIdx.x, N * P, cuda.blockDim.x):
        acc += dy[e // P, o, e % P]
    s, _ = block_sum2(acc, 0.0, shm)
    if cuda.threadIdx.x == 0:
        out[o] = s


KERNEL_SIGNATURES["_channel_sum"] = float_signatures(
    "{f}[:, :, ::1], {f}[::1]")


def forward(x, weight, bias, stride, padding, dilation, groups, out_hw):
    """-> (y (N, O, OH, OW), kept): kept is what backward needs, here the cols (N, K, P)."""
    N = x.shape[0]
    O, KH, KW, K, P, Og, Kg = conv_dims(weight.shape, out_hw, groups)
    OH, OW = out_hw
    G = groups
    cols = device_array((N, K, P), x.dtype)
    launch_1d(_im2col, N * K * P, x, KH, KW, stride[0], stride[1], padding[0], padding[1],
               dilation[0], dilation[1], OH, OW, cols)
    y = device_array((N, O, OH, OW), x.dtype)
    gemm(weight.reshape((G, Og, Kg)), cols.reshape((N * G, Kg, P)), y.reshape((N * G, Og, P)),
         bias=bias, bias_mode=0 if bias is None else 1)
    return y, cols


def backward(dy, kept, weight, x_shape, stride, padding, dilation, groups, has_bias, need_dx,
             need_params):
    """dy (N, O, OH, OW), kept from forward (the cols) -> (dx (N, C, H, W) or None, dweight or
    None, dbias or None)."""
    cols = kept
    N, OH, OW = dy.shape[0], dy.shape[2], dy.shape[3]
    O, KH, KW, K, P, Og, Kg = conv_dims(weight.shape, (OH, OW), groups)
    G = groups
    dy3 = dy.reshape((N, O, P))
    dweight = dbias = dx = None
    if need_params:
        dweight = device_array(tuple(weight.shape), dy.dtype)
        gemm_dw(dy.reshape((N * G, Og, P)), cols.reshape((N * G, Kg, P)), G,
                dweight.reshape((G, Og, Kg)))
        if has_bias:
            t = threads()
            dbias = device_array(O, dy.dtype)
            launch(_channel_sum, O, t, shared_bytes(t))(dy3, dbias)
    if need_dx:
        dcols = device_array((N, K, P), dy.dtype)
        gemm(weight.reshape((G, Og, Kg)), dy.reshape((N * G, Og, P)), dcols.reshape((N * G, Kg, P)),
             ta=True)
        dx = device_array(tuple(x_shape), dy.dtype)
        launch_1d(_col2im, size(x_shape), dcols, KH, KW, stride[0], stride[1], padding[0], padding[1],
                   dilation[0], dilation[1], OH, OW, dx)
    return dx, dweight, dbias
