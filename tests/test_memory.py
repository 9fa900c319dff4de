"""The CPU output pool: large buffers are reused only once nothing refers to them."""
import numpy as np

from numbanorm import functional as F
from numbanorm.cpu import _memory


def address(a):
    return a.__array_interface__["data"][0]


def test_buffer_is_reused_only_after_every_reference_is_gone():
    shape = (1024, _memory.MIN_BYTES // 4096 + 1)  # just over MIN_BYTES of float32
    a = _memory.empty(shape, np.float32)
    b = _memory.empty(shape, np.float32)
    assert address(a) != address(b)
    view = a[::2]
    a_addr = address(a)
    del a
    c = _memory.empty(shape, np.float32)
    assert address(c) != a_addr  # a view still refers to a's memory
    del view
    d = _memory.empty(shape, np.float32)
    assert address(d) == a_addr
    del b, c, d


def test_small_arrays_are_not_pooled():
    before = len(_memory._pool)
    small = _memory.empty((16, 16), np.float64)
    assert small.shape == (16, 16) and len(_memory._pool) == before


def test_idle_buffers_beyond_the_limit_are_released():
    held = [_memory.empty((_memory.MIN_BYTES // 8 + k,), np.float64) for k in range(_memory.MAX_BUFFERS + 5)]
    del held
    _memory.empty((_memory.MIN_BYTES // 8 + 10_000,), np.float64)  # triggers the release
    assert len(_memory._pool) <= _memory.MAX_BUFFERS + 1


def test_release_behind_a_buffer_in_use():
    """Idle buffers after one still in use are released too (removal by identity: comparing
    arrays of other sizes with == raised 'operands could not be broadcast' in a long training
    run whose evaluation batches made many buffer sizes)."""
    busy = _memory.empty((_memory.MIN_BYTES // 4 + 7,), np.float32)  # first in the pool, in use
    held = [_memory.empty((_memory.MIN_BYTES // 8 + 3 * k + 1,), np.float64) for k in range(_memory.MAX_BUFFERS + 5)]
    del held
    _memory.empty((_memory.MIN_BYTES // 8 + 20_000,), np.float64)  # triggers the release
    assert len(_memory._pool) <= _memory.MAX_BUFFERS + 2
    assert busy.sum() is not None  # still valid


def test_outputs_held_by_the_caller_are_never_overwritten():
    rng = np.random.default_rng(0)
    x1 = rng.standard_normal((16, 64, 32, 32)).astype(np.float32)  # 4 MiB: pooled
    x2 = rng.standard_normal(x1.shape).astype(np.float32) * 5 + 3
    y1, _ = F.batch_norm(x1)
    y1_copy = y1.copy()
    y2, _ = F.batch_norm(x2)
    assert address(y1) != address(y2)
    assert np.array_equal(y1, y1_copy)
