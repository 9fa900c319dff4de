"""Settings shared by every CPU kernel.

Kernel shape: each kernel is a small `njit` task function (the work of task t) and a driver
that runs the tasks either on the calling thread (`range`) or on the thread pool (`prange`):

    @njit(parallel=True, cache=True, fastmath=FASTMATH)
    def _kernel(..., serial):
        if serial:
            for t in range(T): _task(t, ...)
        else:
            for t in prange(T): _task(t, ...)

The serial branch never wakes the pool: for small inputs that wake-up costs more than a second
core saves (microseconds on an idle machine, milliseconds on a busy one). Both branches run
the same tasks with the same partial sums, so they give the same bits.

Whether the task is inlined (`inline="always"`) or a plain `@njit` call is measured per
kernel: row_norm's forward task runs 2x faster as a plain call (LayerNorm 32x64: 1.0 against
2.1 us per call), its backward task faster inlined.
"""

# reassoc lets LLVM vectorise the reductions (float64 sums of float32 data stay bandwidth-bound);
# no nnan/ninf, so NaN still propagates to the channel that holds it.
# Inner loops run over a sliced view from 0 (`v = x[n, c, s0:s1]; for s in range(v.size)`):
# a loop `for s in range(s0, s1)` keeps Numba's negative-index wraparound check, which stops
# LLVM vectorising it (measured 7 GB/s against 57 GB/s for the sliced form).
FASTMATH = {"reassoc", "contract"}

# Elements per parallel task. Tasks depend on the shape only, never on the thread count, and
# their partial sums are merged in a fixed order: results are bitwise the same for any count.
TASK_SIZE = 16384

# Inputs with fewer elements than this run serially (see above). At 16384 elements the serial
# kernels were the faster (GroupNorm 8x64x8x8 row_norm forward 5.3 against 6.8 us, backward
# 8.6 against 13.3 us with 2 threads on the shared machine); at 32768 the pool starts to pay.
SERIAL_BELOW = 1 << 15

# One-pass element-wise kernels (ReLU, dropout, optimizer updates, the loss) run serially up to
# this size: 1 MiB of float32 takes ~0.1 ms on one core, less than waking the pool costs on a
# busy machine (measured in the training step: a 16K-element ReLU took 0.03 ms at best but
# 6 ms at the median with the pool, since each launch waits for a second core).
STREAM_SERIAL_BELOW = 1 << 18


def serial(x, below=SERIAL_BELOW):
    """Whether a kernel over x (below: the size threshold) should run on the calling thread only."""
    return x.size < below
