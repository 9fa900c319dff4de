"""CPU kernels for per-row normalization (LayerNorm, GroupNorm, InstanceNorm).

Shape legend: x is a C-contiguous (R, M) view with R = N * G rows of M = Cg * S elements: row
r = n * G + g holds the Cg channels of group g of sample n, each with S spatial elements.
The affine weight/bias have G * Cg entries; element (r, c * S + s) uses entry g * Cg + c.
  LayerNorm:    G = 1, Cg = prod(normalized_shape), S = 1 (per-element affine)
  GroupNorm:    G = num_groups, Cg = C // G, S = prod(spatial)
  InstanceNorm: G = C, Cg = 1, S = prod(spatial)

Each task owns whole rows (a shape-determined number of them) and makes both passes over a
row back to back, so the second pass reads the row from cache, not memory.
"""
import numpy as np
from numba import njit, prange

from . import _memory
from ._parallel import FASTMATH, TASK_SIZE, serial


def _rows_per_task(M):
    return max(1, TASK_SIZE // max(M, 1))


@njit(cache=True, fastmath=FASTMATH, inline="always")
def _forward_row(r, x, weight, bias, G, Cg, S, eps, y, mean, rstd):
    """Row r: statistics, then normalize and apply the affine (the row is still in cache)."""
    M = x.shape[1]
    xr = x[r]
    yr = y[r]
    # pass 1: shifted sums (the shift keeps the variance free of cancellation)
    shift = np.float64(xr[0])
    a1 = 0.0
    a2 = 0.0
    for j in range(M):
        d = np.float64(xr[j]) - shift
        a1 += d
        a2 += d * d
    d_mean = a1 / M
    m = shift + d_mean
    rs = 1.0 / np.sqrt(max(a2 / M - d_mean * d_mean, 0.0) + eps)
    mean[r] = m
    rstd[r] = rs
    # pass 2: y = (x - mean) * rstd * weight + bias
    base = (r % G) * Cg
    if S == 1:
        wv = weight[base:base + Cg]
        bv = bias[base:base + Cg]
        for c in range(Cg):
            yr[c] = (np.float64(xr[c]) - m) * (rs * wv[c]) + bv[c]
    else:
        for c in range(Cg):
            a = rs * weight[base + c]
            b = np.float64(bias[base + c])
            xv = xr[c * S:(c + 1) * S]
            yv = yr[c * S:(c + 1) * S]
            for j in range(S):
                yv[j] = (np.float64(xv[j]) - m) * a + b


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def _forward(x, weight, bias, G, Cg, S, eps, rows_per_task, y, mean, rstd, serial):
    R = x.shape[0]
    T = -(-R // rows_per_task)
    if serial:
        for r in range(R):
            _forward_row(r, x, weight, bias, G, Cg, S, eps, y, mean, rstd)
    else:
        for t in prange(T):
            for r in range(t * rows_per_task, min(R, (t + 1) * rows_per_task)):
                _forward_row(r, x, weight, bias, G, Cg, S, eps, y, mean, rstd)


def forward(x, weight, bias, G, Cg, S, eps):
    """Row-norm forward. weight/bias: (G*Cg,) arrays of x's dtype (ones/zeros when absent).

    Returns (y, mean, rstd); mean and rstd are float64 of shape (R,).
    """
    R, M = x.shape
    y = _memory.empty_like(x)
    mean = np.empty(R)
    rstd = np.empty(R)
    _forward(x, weight, bias, G, Cg, S, eps, _rows_per_task(M), y, mean, rstd, serial(x))
    return y, mean, rstd


@njit(cache=True, fastmath=FASTMATH, inline="always")
def _backward_task(t, x, dy, mean, rstd, weight, G, Cg, S, rows_per_task, dx, part_dw, part_db):
    """Rows of task t: dx, plus this task's partial sums of dweight/dbias in part_*[t]."""
    R, M = x.shape
    pw_all = part_dw[t]
    pb_all = part_db[t]
    pw_all[:] = 0.0
    pb_all[:] = 0.0
    for r in range(t * rows_per_task, min(R, (t + 1) * rows_per_task)):
        m = mean[r]
        rs = rstd[r]
        base = (r % G) * Cg
        xr, gr, dxr = x[r], dy[r], dx[r]
        # pass 1: s1 = sum(w * dy), s2 = sum(w * dy * xhat) over the row, and the
        # per-channel sums of dy * xhat and dy for dweight / dbias
        s1 = 0.0
        s2 = 0.0
        if S == 1:
            wv = weight[base:base + Cg]
            pw = pw_all[base:base + Cg]
            pb = pb_all[base:base + Cg]
            for c in range(Cg):
                g = np.float64(gr[c])
                gx = g * (np.float64(xr[c]) - m) * rs
                w = np.float64(wv[c])
                s1 += w * g
                s2 += w * gx
                pw[c] += gx
                pb[c] += g
        else:
            for c in range(Cg):
                sg = 0.0
                sgx = 0.0
                xv = xr[c * S:(c + 1) * S]
                gv = gr[c * S:(c + 1) * S]
                for j in range(S):
                    g = np.float64(gv[j])
                    sg += g
                    sgx += g * (np.float64(xv[j]) - m)
                sgx *= rs
                w = np.float64(weight[base + c])
                s1 += w * sg
                s2 += w * sgx
                pw_all[base + c] += sgx
                pb_all[base + c] += sg
        # pass 2: dx = rstd * (w*dy - (s1 + xhat*s2) / M)
        f1 = s1 / M
        f2 = s2 / M
        if S == 1:
            wv = weight[base:base + Cg]
            for c in range(Cg):
                xh = (np.float64(xr[c]) - m) * rs
                dxr[c] = rs * (wv[c] * np.float64(gr[c]) - f1 - xh * f2)
        else:
            for c in range(Cg):
                w = np.float64(weight[base + c])
                xv = xr[c * S:(c + 1) * S]
                gv = gr[c * S:(c + 1) * S]
                dv = dxr[c * S:(c + 1) * S]
                for j in range(S):
                    xh = (np.float64(xv[j]) - m) * rs
                    dv[j] = rs * (w * np.float64(gv[j]) - f1 - xh * f2)


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def _backward(x, dy, mean, rstd, weight, G, Cg, S, rows_per_task, dx, part_dw, part_db, serial):
    T = part_dw.shape[0]
    if serial:
        for t in range(T):
            _backward_task(t, x, dy, mean, rstd, weight, G, Cg, S, rows_per_task, dx, part_dw, part_db)
    else:
        for t in prange(T):
            _backward_task(t, x, dy, mean, rstd, weight, G, Cg, S, rows_per_task, dx, part_dw, part_db)


@njit(cache=True)
def _sum_rows(p):
    out = np.zeros(p.shape[1])
    for t in range(p.shape[0]):
        for i in range(p.shape[1]):
            out[i] += p[t, i]
    return out


def backward(x, dy, mean, rstd, weight, G, Cg, S):
    """Row-norm backward -> (dx, dweight, dbias); dweight/dbias float64 of shape (G*Cg,)."""
    R, M = x.shape
    rows_per_task = _rows_per_task(M)
    ntask = -(-R // rows_per_task)
    dx = _memory.empty_like(x)
    part_dw = np.empty((ntask, G * Cg))
    part_db = np.empty((ntask, G * Cg))
    _backward(x, dy, mean, rstd, weight, G, Cg, S, rows_per_task, dx, part_dw, part_db, serial(x))
    return dx, _sum_rows(part_dw), _sum_rows(part_db)


def instance_running_update(mean, rstd, eps, N, C, S, running_mean, running_var, momentum):
    """InstanceNorm running statistics: per-instance mean and unbiased variance, averaged over N.

    mean/rstd: float64 (N*C,) per-instance statistics from forward. Updates in place.
    """
    var = (1.0 / (rstd * rstd) - eps) * (S / (S - 1))
    running_mean *= 1.0 - momentum
    running_mean += (momentum * mean.reshape(N, C).mean(axis=0)).astype(running_mean.dtype)
    running_var *= 1.0 - momentum
    running_var += (momentum * var.reshape(N, C).mean(axis=0)).astype(running_var.dtype)
