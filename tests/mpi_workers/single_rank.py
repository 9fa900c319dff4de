"""MPI worker (1 rank): SyncBatchNorm on one rank equals BatchNorm, bitwise or to rounding,
for every option that changes the code path: momentum=None (cumulative average),
affine=False, track_running_stats=False, and eval mode; and debug mode catches x modified in
place before a SyncBatchNorm backward. Prints OK or raises.

    mpiexec -n 1 python single_rank.py
"""
import numpy as np
from mpi4py import MPI

import numbanorm
from numbanorm import nn


def compare(kwargs, shape, steps=3):
    rng = np.random.default_rng(1)
    bn = nn.BatchNorm2d(shape[1], dtype=np.float64, **kwargs) if len(shape) == 4 else \
        nn.BatchNorm1d(shape[1], dtype=np.float64, **kwargs)
    sbn = nn.SyncBatchNorm(shape[1], dtype=np.float64, comm=MPI.COMM_WORLD, **kwargs)
    for step in range(steps + 1):
        if step == steps:  # last: eval mode
            bn.eval()
            sbn.eval()
        x = rng.standard_normal(shape) * 3 + step
        dy = rng.standard_normal(shape)
        y1, y2 = bn(x), sbn(x)
        dx1, dx2 = bn.backward(dy), sbn.backward(dy)
        for name, a, b in (("y", y1, y2), ("dx", dx1, dx2)):
            np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-12, err_msg=f"{kwargs} step {step} {name}")
    s1, s2 = bn.state_dict(), sbn.state_dict()
    assert list(s1) == list(s2), (kwargs, list(s1), list(s2))
    for k in s1:
        np.testing.assert_allclose(s2[k], s1[k], rtol=1e-12, atol=1e-12, err_msg=f"{kwargs} {k}")
    for (k, p1), (_, p2) in zip(bn.named_parameters(), sbn.named_parameters()):
        np.testing.assert_allclose(p2.grad, p1.grad, rtol=1e-12, atol=1e-12, err_msg=f"{kwargs} {k}.grad")
    if kwargs.get("track_running_stats", True):
        assert int(sbn.num_batches_tracked) == steps


for kwargs in ({}, {"momentum": None}, {"affine": False}, {"track_running_stats": False},
               {"momentum": None, "affine": False}):
    for shape in ((6, 3, 4, 5), (7, 4)):
        compare(kwargs, shape)

# debug mode: a SyncBatchNorm training forward fingerprints what it saved like every op
numbanorm.set_debug(True)
sbn = nn.SyncBatchNorm(3, dtype=np.float64, comm=MPI.COMM_WORLD)
x = np.random.default_rng(2).standard_normal((5, 3))
sbn(x)
x[0, 0] += 1.0
try:
    sbn.backward(np.ones_like(x))
    raise AssertionError("debug mode missed x modified in place")
except RuntimeError as e:
    assert str(e).startswith("x saved by the sync_batch_norm forward was modified in place"), e
print("OK", flush=True)
