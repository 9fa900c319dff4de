"""The memory floor: streaming kernels that move the same bytes as a normalization, no more.

A normalization cannot beat the traffic it needs (x of B bytes):
  training forward   one read of x (statistics) + one read-write pass (y = x*a + b)   3B
  training backward  one read of (x, dy) (two sums) + a pass reading x, dy, writing dx   5B
  eval forward       one read-write pass (the statistics are constants)                2B
  eval backward      one pass reading x, dy, writing dx = a*dy, summing dy*x            3B

Each floor runs exactly that: the same passes with the arithmetic reduced to one multiply-add,
in the fastest form measured here: fixed chunks of a flat array as parallel tasks, each looping
over a sliced view from 0 (so LLVM vectorises it; `fastmath={"reassoc", "contract"}`, float64
accumulators), partial sums added afterwards. Below SERIAL_BELOW elements the floor is one
serial jitted call doing all the passes: for tiny inputs that call is the least any op costs.
float16 arrays move half the bytes, read and written as the norm kernels do (numbanorm.cpu.half).
"""
import numpy as np
from numba import njit, prange

from numbanorm.cpu.half import bits, load, store

FASTMATH = {"reassoc", "contract"}
SERIAL_BELOW = 1 << 16  # elements
CHUNK = 16384  # elements per task


@njit(fastmath=FASTMATH, cache=True, inline="always")
def _task(t, kind, x, dy, a, b, out):
    """Chunk t of one pass; returns its partial sum. kind 0: sum x; 1: out = x*a + b;
    2: sum x*dy; 3: out = dy*a + x*b; 4: out = dy*a and sum x*dy."""
    lo = t * CHUNK
    hi = min(x.size, lo + CHUNK)
    xv = x[lo:hi]
    s = 0.0
    if kind == 0:
        for i in range(xv.size):
            s += load(xv, i)
    elif kind == 1:
        ov = out[lo:hi]
        for i in range(xv.size):
            store(ov, i, load(xv, i) * a + b)
    else:
        gv = dy[lo:hi]
        if kind == 2:
            for i in range(xv.size):
                s += np.float64(load(xv, i)) * load(gv, i)
        elif kind == 3:
            ov = out[lo:hi]
            for i in range(xv.size):
                store(ov, i, load(gv, i) * a + load(xv, i) * b)
        else:
            ov = out[lo:hi]
            for i in range(xv.size):
                g = load(gv, i)
                store(ov, i, g * a)
                s += np.float64(load(xv, i)) * g
    return s


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def _pass(kind, x, dy, a, b, out):
    T = -(-x.size // CHUNK)
    parts = np.zeros(T)
    for t in prange(T):
        parts[t] = _task(t, kind, x, dy, a, b, out)
    return parts.sum()


def _run(kind, x, dy, a, b, out):
    return _pass(kind, x, dy, np.float32(a), np.float32(b), out)


@njit(fastmath=FASTMATH, cache=True)
def _small_forward(x, y, training):
    """Both forward passes in one serial call: on tiny inputs the floor is one jitted call."""
    s = 0.0
    if training:
        for i in range(x.size):
            s += load(x, i)
    b = np.float32(s * 0.0 + 0.25)
    for i in range(x.size):
        store(y, i, load(x, i) * np.float32(0.5) + b)
    return s


@njit(fastmath=FASTMATH, cache=True)
def _small_backward(x, dy, dx, training):
    s = 0.0
    for i in range(x.size):
        s += np.float64(load(x, i)) * load(dy, i)
    if training:
        b = np.float32(s * 0.0 + 0.25)
        for i in range(x.size):
            store(dx, i, load(dy, i) * np.float32(0.5) + load(x, i) * b)
    else:
        for i in range(x.size):
            store(dx, i, load(dy, i) * np.float32(0.5))
    return s


def _flat(a):
    return bits(a).reshape(-1)  # a view for the C-contiguous arrays the benchmarks make


def forward(x, y, training=True):
    """Floor of a forward: x -> y (same shape, float32 or float16). Returns the (meaningless) sum."""
    x1, y1 = _flat(x), _flat(y)
    if x1.size < SERIAL_BELOW:
        return _small_forward(x1, y1, training)
    s = _run(0, x1, x1, 0.0, 0.0, y1) if training else 0.0
    _run(1, x1, x1, 0.5, s * 0.0 + 0.25, y1)
    return s


def backward(x, dy, dx, training=True):
    """Floor of a backward: (x, dy) -> dx. Returns the (meaningless) sum."""
    x1, g1, d1 = _flat(x), _flat(dy), _flat(dx)
    if x1.size < SERIAL_BELOW:
        return _small_backward(x1, g1, d1, training)
    if not training:
        return _run(4, x1, g1, 0.5, 0.0, d1)
    s = _run(2, x1, g1, 0.0, 0.0, d1)
    _run(3, x1, g1, 0.5, s * 0.0 + 0.25, d1)
    return s


def floor_bytes(nbytes, direction, training=True):
    """Bytes a normalization of an input of `nbytes` must move (see the module docstring)."""
    if direction == "forward":
        return (3 if training else 2) * nbytes
    return (5 if training else 3) * nbytes
