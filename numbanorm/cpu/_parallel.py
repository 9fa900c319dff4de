"""Settings shared by every CPU kernel, and the switch to one thread for small inputs."""
import functools

import numba

# reassoc lets LLVM vectorise the reductions (float64 sums of float32 data stay bandwidth-bound);
# no nnan/ninf, so NaN still propagates to the channel that holds it.
# Inner loops run over a sliced view from 0 (`v = x[n, c, s0:s1]; for s in range(v.size)`):
# a loop `for s in range(s0, s1)` keeps Numba's negative-index wraparound check, which stops
# LLVM vectorising it (measured 7 GB/s against 57 GB/s for the sliced form).
FASTMATH = {"reassoc", "contract"}

# Elements per parallel task. Tasks depend on the shape only, never on the thread count, and
# their partial sums are merged in a fixed order: results are bitwise the same for any count.
TASK_SIZE = 16384

# Below this many elements a call runs its kernels on the calling thread alone: waking the
# thread pool costs microseconds on an idle machine and milliseconds on a busy one, more than
# a second core can save on so little data. Same kernels, same tasks, so the same bits.
SERIAL_BELOW = 1 << 16


def serial_when_small(fn):
    """Run fn(x, ...) with one Numba thread when x has fewer than SERIAL_BELOW elements."""

    @functools.wraps(fn)
    def wrapper(x, *args):
        if x.size >= SERIAL_BELOW:
            return fn(x, *args)
        threads = numba.get_num_threads()
        numba.set_num_threads(1)
        try:
            return fn(x, *args)
        finally:
            numba.set_num_threads(threads)

    return wrapper
