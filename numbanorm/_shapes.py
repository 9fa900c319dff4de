"""Output-size arithmetic shared by the functional ops and both backends (PyTorch's formulas).

conv: OH = (H + 2*ph - dh*(KH - 1) - 1) // sh + 1
pool: OH = floor or ceil((H + 2*ph - (KH - 1) - 1) / sh) + 1, and with ceil_mode the last
      window must start inside the input or its left padding.
Plain Python, also callable inside the kernels of both backends (register_jitable).
"""
from numba.extending import register_jitable



def conv_out_size(size, k, stride, pad, dilation=1):
    return (size + 2 * pad - dilation * (k - 1) - 1) // stride + 1


def pool_out_size(size, k, stride, pad, ceil_mode=False):
    span = size + 2 * pad - (k - 1) - 1
    out = (span + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def conv_dims(weight_shape, out_hw, groups):
    """(O, KH, KW, K, P, Og, Kg) of a convolution with weight (O, C/G, KH, KW): K = C*KH*KW
    rows of the im2col matrix, P = OH*OW columns, Og = O/G and Kg = K/G per group."""
    O, Cg, KH, KW = (int(d) for d in weight_shape)
    K = Cg * groups * KH * KW
    return O, KH, KW, K, int(out_hw[0]) * int(out_hw[1]), O // groups, K // groups


@register_jitable
def avg_pool_divisor(oh, ow, kh, kw, sh, sw, ph, pw, H, W, count_include_pad):
    """The divisor of output (oh, ow) of an average pool, as PyTorch: the window clipped to the
    padded input, or to the input itself when count_include_pad is False."""
    h0 = oh * sh - ph
    w0 = ow * sw - pw
    h1 = min(h0 + kh, H + ph)
    w1 = min(w0 + kw, W + pw)
    size = (h1 - h0) * (w1 - w0)
    if count_include_pad:
        return size
    return (min(h1, H) - max(h0, 0)) * (min(w1, W) - max(w0, 0))
