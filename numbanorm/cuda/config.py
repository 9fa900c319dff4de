"""Launch configuration of the GPU backend, read at every launch (tests shrink THREADS).

THREADS           threads per block: a power of two from 32 to 1024.
ITEMS_PER_THREAD  a BatchNorm partial block is given at least THREADS * ITEMS_PER_THREAD
                  elements of its channel (fewer, larger blocks when the channel is short).
TARGET_BLOCKS     how many blocks a per-channel reduction aims for: enough to fill the 132 SMs
                  of an H100 several waves deep even when C is small.
ROW_CACHE_BYTES   shared memory per block that keeps a row norm's row between its two passes
                  (float64: rows up to ROW_CACHE_BYTES / 8 elements forward, / 16 backward);
                  0 reads x twice. Capped at 48 KB minus the reduction's 16 * THREADS bytes.
"""
THREADS = 256
ITEMS_PER_THREAD = 16
TARGET_BLOCKS = 132 * 8
ROW_CACHE_BYTES = 32 * 1024
