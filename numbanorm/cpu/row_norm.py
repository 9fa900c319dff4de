"""CPU kernels for per-row normalization (LayerNorm, GroupNorm, InstanceNorm).

Shape legend: x is a C-contiguous (R, M) view with R = N * G rows of M = Cg * S elements: row
r = n * G + g holds the Cg channels of group g of sample n, each with S spatial elements.
The affine weight/bias have G * Cg entries; element (r, c * S + s) uses entry g * Cg + c.
  LayerNorm:    G = 1, Cg = prod(normalized_shape), S = 1 (per-element affine)
  GroupNorm:    G = num_groups, Cg = C // G, S = prod(spatial)
  InstanceNorm: G = C, Cg = 1, S = prod(spatial)

x, dy, y and dx are float32, float64 or float16 (uint16 bits in the kernels, read and written
through numbanorm.cpu.half's load/store; elementwise math in float32); weight/bias are float32
for float16 data, else x's dtype; statistics and parameter gradients are float64 sums (for
16-bit data of float32 block sums: numbanorm.cpu.half.shifted_sums). The backward's sums over
dy run in the work type over blocks and add into float64: per channel plane in blocks of
SUM_BLOCK (S > 1), per element over blocks of up to ROW_BLOCK rows (S == 1), and rows of
>= PAIR_ROWS_FROM elements in blocks of SUM_BLOCK.

Each task owns whole rows (a shape-determined number of them) and makes both passes over a
row (or a pair of rows) back to back, so the second pass reads the row from cache, not memory.
"""
import numpy as np
from numba import njit, prange

from . import _memory
from ._parallel import FASTMATH, SERIAL_BELOW, TASK_SIZE
from .half import SUM_BLOCK, bits, load, shifted_sums, store, work, work_empty


@njit(cache=True, fastmath=FASTMATH, inline="always")
def _row_stats(xr, eps):
    """(mean, rstd) of one row in float64, from sums shifted by the row's first value (the
    shift keeps the variance free of cancellation for data with a large mean)."""
    M = xr.size
    shift = np.float64(load(xr, 0))
    a1, a2 = shifted_sums(xr, shift)
    d_mean = a1 / M
    return shift + d_mean, 1.0 / np.sqrt(max(a2 / M - d_mean * d_mean, 0.0) + eps)


@njit(cache=True, fastmath=FASTMATH, inline="always")
def _normalize_row(r, x, weight, bias, G, Cg, S, y, m, rs):
    """y[r] = (x[r] - m) * rs * weight + bias, per channel of the row's group.

    The elementwise pass runs in x's work type (float32 for float16) on (x - m_x), m_x the mean
    rounded to it: the subtraction is exact for data near the mean, and the rounding m_x - mean
    is folded into the offset, so data with a large mean keeps float64-reference accuracy at
    float32 vector width.
    """
    xr = x[r]
    yr = y[r]
    m_x = work(xr, m)
    c = (np.float64(m_x) - m) * rs  # xhat = (x - m_x) * rs + c
    base = (r % G) * Cg
    if S == 1:
        rs_x = work(xr, rs)
        c_x = work(xr, c)
        wv = weight[base:base + Cg]
        bv = bias[base:base + Cg]
        for k in range(Cg):
            store(yr, k, ((load(xr, k) - m_x) * rs_x + c_x) * wv[k] + bv[k])
    else:
        for k in range(Cg):
            w = np.float64(weight[base + k])
            xv = xr[k * S:(k + 1) * S]
            yv = yr[k * S:(k + 1) * S]
            a_x = work(xr, rs * w)
            b_x = work(xr, c * w + bias[base + k])
            for j in range(S):
                store(yv, j, (load(xv, j) - m_x) * a_x + b_x)


ROW_AT_ONCE_FROM = 512  # row length from which _forward_task normalizes each row at once


@njit(cache=True, fastmath=FASTMATH)
def _forward_task(t, rows_per_task, x, weight, bias, G, Cg, S, eps, y, mean, rstd):
    """Rows [t * rows_per_task, (t + 1) * rows_per_task), at most TASK_SIZE elements: the
    statistics of every row, then every row normalized, from cache. The same arithmetic in
    either order: short rows take the whole task's statistics first (a row's normalization
    waits on its division and square root, and back to back the CPU overlaps those waits: 2x
    on rows of 64); rows of ROW_AT_ONCE_FROM or more are normalized right after their
    statistics, from L1 not L2 (LayerNorm (8192, 768), 1 thread: 1.5x -> 0.9x PyTorch).
    """
    R, M = x.shape
    r0 = t * rows_per_task
    r1 = min(R, r0 + rows_per_task)
    if M >= ROW_AT_ONCE_FROM:
        for r in range(r0, r1):
            mean[r], rstd[r] = _row_stats(x[r], eps)
            _normalize_row(r, x, weight, bias, G, Cg, S, y, mean[r], rstd[r])
        return
    for r in range(r0, r1):
        mean[r], rstd[r] = _row_stats(x[r], eps)
    for r in range(r0, r1):
        _normalize_row(r, x, weight, bias, G, Cg, S, y, mean[r], rstd[r])


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def _forward(x, weight, bias, G, Cg, S, eps, y, mean, rstd, serial):
    R, M = x.shape
    rows_per_task = max(1, TASK_SIZE // M)
    T = -(-R // rows_per_task)
    if serial:
        for t in range(T):
            _forward_task(t, rows_per_task, x, weight, bias, G, Cg, S, eps, y, mean, rstd)
    else:
        for t in prange(T):
            _forward_task(t, rows_per_task, x, weight, bias, G, Cg, S, eps, y, mean, rstd)


def forward(x, weight, bias, G, Cg, S, eps):
    """Row-norm forward. weight/bias: (G*Cg,) arrays of x's dtype, float32 for float16 x
    (ones/zeros when absent).

    Returns (y, mean, rstd); mean and rstd are float64 of shape (R,).
    """
    R = x.shape[0]
    y = _memory.empty_like(x)
    mean = np.empty(R)  # allocated here: cheaper than returning arrays made in compiled code
    rstd = np.empty(R)
    _forward(bits(x), weight, bias, G, Cg, S, eps, bits(y), mean, rstd, x.size < SERIAL_BELOW)
    return y, mean, rstd


# At most this many backward tasks: each keeps a float64 partial of dweight/dbias (G*Cg each),
# merged afterwards, so fewer, larger tasks keep that merge small. A shape-only rule.
MAX_BACKWARD_TASKS = 64
MERGE_COLUMNS = 1024  # columns per parallel task of that merge
# S == 1: a task sums the per-element dweight/dbias terms of up to this many rows in x's work
# type (float32 vectors), then adds them into its float64 partial: a float64 read-modify-write
# per element made the LayerNorm (2048, 4096) backward 1.3x slower (1 thread). Blocks of 16
# rows cost 1.3x on (16384, 256) against 64 (the adds into float64 took ~0.5 us per block);
# 64 float32 terms per block sum to ~1e-6 relative, the block sums add in float64.
ROW_BLOCK = 64
PAIR_ROWS_FROM = 2048  # elements per row (see _backward_task)


@njit(cache=True, fastmath=FASTMATH, inline="always")
def _backward_task(t, x, dy, mean, rstd, weight, G, Cg, S, rows_per_task, dx, part_dw, part_db):
    """Rows of task t: dx, plus this task's partial sums of dweight/dbias in part_*[t].

    S == 1, G == 1 (LayerNorm) and rows of at least PAIR_ROWS_FROM elements: rows go in pairs
    whose first passes run together, adding both rows' dweight/dbias terms into the block sums
    in one read-modify-write (2 threads, vs the floor: (2048, 4096) 1.35x -> 1.10x, (4096,
    2048) 1.18x -> 1.06x; on shorter rows pairs were slower: (8192, 768) 0.77x -> 1.10x).
    """
    R = x.shape[0]
    pw_all = part_dw[t]
    pb_all = part_db[t]
    for k in range(pw_all.size):  # a loop, not `[:] = 0`: parallel=True would make that a parfor
        pw_all[k] = 0.0
        pb_all[k] = 0.0
    r0 = t * rows_per_task
    r1 = min(R, r0 + rows_per_task)
    if S == 1:
        block_w = work_empty(x, pw_all.size)
        block_b = work_empty(x, pw_all.size)
        for b0 in range(r0, r1, ROW_BLOCK):
            for k in range(block_w.size):
                block_w[k] = 0.0
                block_b[k] = 0.0
            b1 = min(r1, b0 + ROW_BLOCK)
            pairs = (b1 - b0) // 2 if G == 1 and Cg >= PAIR_ROWS_FROM else 0
            for i in range(pairs):
                _backward_pair(b0 + 2 * i, x, dy, mean, rstd, weight, dx, block_w, block_b)
            for r in range(b0 + 2 * pairs, b1):
                base = (r % G) * Cg
                wv = weight[base:base + Cg]
                m_x, c = _centering(x[r], mean[r], rstd[r])
                s1, s2 = _element_sums(x[r], dy[r], wv, m_x, rstd[r], c, block_w[base:base + Cg],
                                       block_b[base:base + Cg])
                _element_dx(x[r], dy[r], dx[r], wv, m_x, rstd[r], c, s1, s2)
            for k in range(block_w.size):
                pw_all[k] += block_w[k]
                pb_all[k] += block_b[k]
    else:
        for r in range(r0, r1):
            _backward_plane_row(r, x, dy, mean, rstd, weight, G, Cg, S, dx, pw_all, pb_all)


@njit(cache=True, fastmath=FASTMATH, inline="always")
def _centering(xr, m, rs):
    """(m_x, c): the row mean m rounded to the work type, and c with xhat = (x - m_x) * rs + c.
    As in the forward, elementwise work runs in x's work type on (x - m_x)."""
    m_x = work(xr, m)
    return m_x, (np.float64(m_x) - m) * rs


@njit(cache=True, fastmath=FASTMATH, inline="always")
def _backward_pair(r, x, dy, mean, rstd, weight, dx, pw, pb):
    """Rows r and r + 1 of a G == 1, S == 1 row norm: dx, and their dweight/dbias terms added
    into pw/pb."""
    ma, ca = _centering(x[r], mean[r], rstd[r])
    mb, cb = _centering(x[r + 1], mean[r + 1], rstd[r + 1])
    s1a, s2a, s1b, s2b = _pair_sums(x[r], dy[r], x[r + 1], dy[r + 1], weight, ma, rstd[r], ca, mb,
                                    rstd[r + 1], cb, pw, pb)
    _element_dx(x[r], dy[r], dx[r], weight, ma, rstd[r], ca, s1a, s2a)
    _element_dx(x[r + 1], dy[r + 1], dx[r + 1], weight, mb, rstd[r + 1], cb, s1b, s2b)


@njit(cache=True, fastmath=FASTMATH, inline="always")
def _element_sums(xr, gr, wv, m_x, rs, c, pw, pb):
    """Pass 1 of an S == 1 row: float64 (sum(w*dy), sum(w*dy*xhat)), and the row's dy*xhat and
    dy added into pw/pb (per element, x's work type)."""
    rs_x = work(xr, rs)
    c_x = work(xr, c)
    s1 = 0.0
    s2 = 0.0
    for k in range(wv.size):
        g = load(gr, k)
        gx = g * ((load(xr, k) - m_x) * rs_x + c_x)
        w = wv[k]
        s1 += w * g
        s2 += w * gx
        pw[k] += gx
        pb[k] += g
    return s1, s2


@njit(cache=True, fastmath=FASTMATH, inline="always")
def _pair_sums(xa, ga, xb, gb, wv, ma, rsa, ca, mb, rsb, cb, pw, pb):
    """_element_sums of rows a and b at once: (s1a, s2a, s1b, s2b), both rows' terms added
    into pw/pb in one read-modify-write.

    The row sums run in the work type over blocks of SUM_BLOCK elements, added into float64
    (as numbanorm.cpu.half does for 16-bit data): four float64 sums per element cost more
    than the memory traffic here.
    """
    M = wv.size
    zero = work(xa, 0.0)
    rsa_x, ca_x, rsb_x, cb_x = work(xa, rsa), work(xa, ca), work(xa, rsb), work(xa, cb)
    s1a = 0.0
    s2a = 0.0
    s1b = 0.0
    s2b = 0.0
    for k0 in range(0, M, SUM_BLOCK):
        k1 = min(M, k0 + SUM_BLOCK)
        w_, xa_, ga_, xb_, gb_ = wv[k0:k1], xa[k0:k1], ga[k0:k1], xb[k0:k1], gb[k0:k1]
        pw_, pb_ = pw[k0:k1], pb[k0:k1]
        t1a = zero
        t2a = zero
        t1b = zero
        t2b = zero
        for k in range(k1 - k0):
            w = w_[k]
            g = load(ga_, k)
            h = load(gb_, k)
            gx = g * ((load(xa_, k) - ma) * rsa_x + ca_x)
            hx = h * ((load(xb_, k) - mb) * rsb_x + cb_x)
            t1a += w * g
            t2a += w * gx
            t1b += w * h
            t2b += w * hx
            pw_[k] += gx + hx
            pb_[k] += g + h
        s1a += t1a
        s2a += t2a
        s1b += t1b
        s2b += t2b
    return s1a, s2a, s1b, s2b


@njit(cache=True, fastmath=FASTMATH, inline="always")
def _element_dx(xr, gr, dxr, wv, m_x, rs, c, s1, s2):
    """Pass 2 of an S == 1 row: dx = rstd * (w*dy - (s1 + xhat*s2) / M)
                                    = (rstd*w) * dy + b * (x - m_x) + d."""
    M = wv.size
    f1 = s1 / M
    f2 = s2 / M
    b_x = work(xr, -rs * rs * f2)
    d_x = work(xr, -rs * (f1 + c * f2))
    rs_x = work(xr, rs)
    for k in range(M):
        store(dxr, k, (rs_x * wv[k]) * load(gr, k) + b_x * (load(xr, k) - m_x) + d_x)


@njit(cache=True, fastmath=FASTMATH, inline="always")
def _plane_sums(gv, xv, m_x):
    """(sum(dy), sum(dy * (x - m_x))) of one channel plane in float64, summed in x's work type
    over blocks of SUM_BLOCK elements (as _pair_sums): on GroupNorm's short planes the
    conversion of every term to float64 cost more than the rest of the first pass."""
    S = xv.size
    if S <= SUM_BLOCK:  # one block, without the slicing (it cost as much as the sums here)
        return _work_sums(gv, xv, m_x)
    a1 = 0.0
    a2 = 0.0
    for j0 in range(0, S, SUM_BLOCK):
        gb = gv[j0:min(S, j0 + SUM_BLOCK)]
        t1, t2 = _work_sums(gb, xv[j0:j0 + gb.size], m_x)
        a1 += t1
        a2 += t2
    return a1, a2


@njit(cache=True, fastmath=FASTMATH, inline="always")
def _work_sums(gv, xv, m_x):
    """(sum(dy), sum(dy * (x - m_x))) over one block, summed in the work type, as float64."""
    t1 = work(xv, 0.0)
    t2 = work(xv, 0.0)
    for j in range(xv.size):
        g = load(gv, j)
        t1 += g
        t2 += g * (load(xv, j) - m_x)
    return np.float64(t1), np.float64(t2)


@njit(cache=True, fastmath=FASTMATH, inline="always")
def _backward_plane_row(r, x, dy, mean, rstd, weight, G, Cg, S, dx, pw_all, pb_all):
    """dx[r] for S > 1 (GroupNorm, InstanceNorm: Cg planes of S elements), and the row's
    per-channel sums of dy * xhat and dy added into pw_all/pb_all (float64, G*Cg entries)."""
    M = x.shape[1]
    rs = rstd[r]
    base = (r % G) * Cg
    xr, gr, dxr = x[r], dy[r], dx[r]
    m_x, c = _centering(xr, mean[r], rs)
    # pass 1: s1 = sum(w * dy), s2 = sum(w * dy * xhat) over the row
    s1 = 0.0
    s2 = 0.0
    for k in range(Cg):
        sg, sgx = _plane_sums(gr[k * S:(k + 1) * S], xr[k * S:(k + 1) * S], m_x)
        sgx = sgx * rs + c * sg  # sum(dy * xhat)
        w = np.float64(weight[base + k])
        s1 += w * sg
        s2 += w * sgx
        pw_all[base + k] += sgx
        pb_all[base + k] += sg
    # pass 2: dx = (rstd*w) * dy + b * (x - m_x) + d, as _element_dx
    f1 = s1 / M
    f2 = s2 / M
    b_x = work(xr, -rs * rs * f2)
    d_x = work(xr, -rs * (f1 + c * f2))
    for k in range(Cg):
        xv = xr[k * S:(k + 1) * S]
        gv = gr[k * S:(k + 1) * S]
        dv = dxr[k * S:(k + 1) * S]
        a_x = work(xr, rs * weight[base + k])
        for j in range(S):
            store(dv, j, a_x * load(gv, j) + b_x * (load(xv, j) - m_x) + d_x)


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def _backward(x, dy, mean, rstd, weight, G, Cg, S, dx, dweight, dbias, serial):
    """dx, and dweight/dbias (weight's dtype, summed in float64 in task order) written."""
    R, M = x.shape
    C = G * Cg
    rows_per_task = max(TASK_SIZE // M, -(-R // MAX_BACKWARD_TASKS), 1)
    T = -(-R // rows_per_task)
    # one array: malloc hands the freed block back on the next call; two separate multi-MB
    # partials were returned to the OS on free and faulted ~1000 pages in on every call
    # ((2048, 4096): ~1 ms of a 4 ms backward). Allocated in Python it cost 0.4 us per small call.
    parts = np.empty((2, T, C))
    part_dw = parts[0]
    part_db = parts[1]
    if serial:
        for t in range(T):
            _backward_task(t, x, dy, mean, rstd, weight, G, Cg, S, rows_per_task, dx, part_dw, part_db)
    else:
        for t in prange(T):
            _backward_task(t, x, dy, mean, rstd, weight, G, Cg, S, rows_per_task, dx, part_dw, part_db)
    # one block of columns is merged here: a second parallel region costs its own wake-up
    if serial or C <= MERGE_COLUMNS:
        _merge_columns(0, C, part_dw, part_db, dweight, dbias)
    else:
        for k in prange(-(-C // MERGE_COLUMNS)):
            _merge_columns(k * MERGE_COLUMNS, min(C, (k + 1) * MERGE_COLUMNS), part_dw, part_db,
                           dweight, dbias)


@njit(cache=True, fastmath=FASTMATH, inline="always")
def _merge_columns(c0, c1, part_dw, part_db, dweight, dbias):
    """Columns [c0, c1) of the partials summed over tasks in task order."""
    acc_w = np.empty(c1 - c0)
    acc_b = np.empty(c1 - c0)
    for i in range(c1 - c0):  # not np.zeros: parallel=True would make that a parfor
        acc_w[i] = 0.0
        acc_b[i] = 0.0
    for t in range(part_dw.shape[0]):
        pw = part_dw[t, c0:c1]
        pb = part_db[t, c0:c1]
        for i in range(c1 - c0):
            acc_w[i] += pw[i]
            acc_b[i] += pb[i]
    for i in range(c1 - c0):
        dweight[c0 + i] = acc_w[i]
        dbias[c0 + i] = acc_b[i]


def backward(x, dy, mean, rstd, weight, G, Cg, S):
    """Row-norm backward -> (dx, dweight, dbias); dweight/dbias of weight's dtype, shape (G*Cg,)."""
    dx = _memory.empty_like(x)
    dweight = np.empty(G * Cg, weight.dtype)  # allocated here: cheaper than returned arrays
    dbias = np.empty(G * Cg, weight.dtype)
    _backward(bits(x), bits(dy), mean, rstd, weight, G, Cg, S, bits(dx), dweight, dbias,
              x.size < SERIAL_BELOW)
    return dx, dweight, dbias


def instance_running_update(mean, rstd, eps, N, C, S, running_mean, running_var, momentum):
    """InstanceNorm running statistics: per-instance mean and unbiased variance, averaged over N.

    mean/rstd: float64 (N*C,) per-instance statistics from forward. Updates in place.
    """
    var = (1.0 / (rstd * rstd) - eps) * (S / (S - 1))
    running_mean *= 1.0 - momentum
    running_mean += (momentum * mean.reshape(N, C).mean(axis=0)).astype(running_mean.dtype)
    running_var *= 1.0 - momentum
    running_var += (momentum * var.reshape(N, C).mean(axis=0)).astype(running_var.dtype)
