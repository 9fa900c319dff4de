"""Training throughput of the reference CNN: one SGD step, numbanorm vs PyTorch CPU.

Model: conv(1->32, 3x3, pad 1)-BatchNorm2d-ReLU-maxpool2-conv(32->64, 3x3, pad 1)-BatchNorm2d-
ReLU-maxpool2-flatten-linear(3136->128)-ReLU-linear(128->10); batch of 128 random 28x28 inputs
(8 in quick mode); SGD(lr=0.05, momentum=0.9). The timed step is zero_grad, forward, cross-entropy,
backward, optimizer step. Both models start from the same weights (numbanorm's, loaded into
torch); before timing, each contender's first two losses (the second one follows a backward and
an SGD step) are compared with the other framework's, and the first with a plain float64 NumPy
forward of the same weights. Images/s go in extra_info.
"""
import importlib.util

import numba
import numpy as np
import pytest

from .common import info

try:
    from numbanorm.nn import (BatchNorm2d, Conv2d, CrossEntropyLoss, Flatten, Linear, MaxPool2d,
                              ReLU, Sequential)
    from numbanorm.optim import SGD

    MISSING = None
except ImportError as e:  # the trainer layers are not there yet
    MISSING = f"numbanorm trainer layers not importable yet ({e})"

LR, MOMENTUM = 0.05, 0.9


def ours_model():
    return Sequential(
        Conv2d(1, 32, 3, padding=1, rng=0), BatchNorm2d(32), ReLU(), MaxPool2d(2),
        Conv2d(32, 64, 3, padding=1, rng=1), BatchNorm2d(64), ReLU(), MaxPool2d(2),
        Flatten(), Linear(3136, 128, rng=2), ReLU(), Linear(128, 10, rng=3))


def torch_model(torch):
    t = torch.nn
    return t.Sequential(
        t.Conv2d(1, 32, 3, padding=1), t.BatchNorm2d(32), t.ReLU(), t.MaxPool2d(2),
        t.Conv2d(32, 64, 3, padding=1), t.BatchNorm2d(64), t.ReLU(), t.MaxPool2d(2),
        t.Flatten(), t.Linear(3136, 128), t.ReLU(), t.Linear(128, 10))


def numpy_first_loss(state, x, labels):
    """The mean cross-entropy of the model in training mode, float64 NumPy, from a state_dict."""
    from numpy.lib.stride_tricks import sliding_window_view

    s = {k: v.astype(np.float64) for k, v in state.items()}

    def conv(a, i):
        a = np.pad(a, ((0, 0), (0, 0), (1, 1), (1, 1)))
        win = sliding_window_view(a, (3, 3), axis=(2, 3))  # (N, C, H, W, 3, 3)
        return np.einsum("nchwij,ocij->nohw", win, s[f"{i}.weight"]) + s[f"{i}.bias"][:, None, None]

    def bn(a, i):
        mean, var = a.mean((0, 2, 3), keepdims=True), a.var((0, 2, 3), keepdims=True)
        return (a - mean) / np.sqrt(var + 1e-5) * s[f"{i}.weight"][:, None, None] + s[f"{i}.bias"][:, None, None]

    def pool(a):
        n, c, h, w = a.shape
        return a.reshape(n, c, h // 2, 2, w // 2, 2).max((3, 5))

    a = pool(np.maximum(bn(conv(x.astype(np.float64), 0), 1), 0))
    a = pool(np.maximum(bn(conv(a, 4), 5), 0)).reshape(len(x), -1)
    a = np.maximum(a @ s["9.weight"].T + s["9.bias"], 0) @ s["11.weight"].T + s["11.bias"]
    a = a - a.max(1, keepdims=True)
    logp = a - np.log(np.exp(a).sum(1, keepdims=True))
    return float(-logp[np.arange(len(x)), labels].mean())


def make_step(contender, x, labels):
    """(step callable returning the loss as a float, the model's initial state_dict)."""
    model = ours_model()
    state = model.state_dict()
    if contender == "numbanorm":
        crit = CrossEntropyLoss()
        opt = SGD(model.parameters(), lr=LR, momentum=MOMENTUM)

        def step():
            opt.zero_grad()
            loss = crit.forward(model.forward(x), labels)
            model.backward(crit.backward(), input_grad=False)  # as torch: x needs no grad
            opt.step()
            return float(loss)

        return step
    torch = pytest.importorskip("torch", reason="PyTorch not installed")
    torch.set_num_threads(numba.get_num_threads())
    tm = torch_model(torch)
    tm.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    topt = torch.optim.SGD(tm.parameters(), lr=LR, momentum=MOMENTUM)
    tcrit = torch.nn.CrossEntropyLoss()
    xt, lt = torch.from_numpy(x), torch.from_numpy(labels)

    def step():
        topt.zero_grad()
        loss = tcrit(tm(xt), lt)
        loss.backward()
        topt.step()
        return loss.item()

    return step


@pytest.mark.parametrize("contender", ["numbanorm", "torch"])
def test_train_step(benchmark, contender, quick):
    if MISSING:
        pytest.skip(MISSING)
    batch = 8 if quick else 128
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, 1, 28, 28)).astype(np.float32)
    labels = rng.integers(0, 10, batch).astype(np.int64)
    step = make_step(contender, x, labels)
    # also compiles numbanorm's kernels before timing
    losses = [step(), step()]
    # the same weights and data give the same losses in both frameworks (the second checks the
    # backward and the optimizer step) and the same first loss as plain float64 NumPy
    want = numpy_first_loss(ours_model().state_dict(), x, labels)
    assert abs(losses[0] - want) < 1e-4 * max(1.0, abs(want)), (losses[0], want)
    other = "numbanorm" if contender == "torch" else "torch"
    if other == "numbanorm" or importlib.util.find_spec("torch") is not None:
        other_step = make_step(other, x, labels)
        other_losses = [other_step(), other_step()]
        for ours, theirs in zip(losses, other_losses):
            assert abs(ours - theirs) < 1e-4 * max(1.0, abs(theirs)), (contender, losses, other_losses)
    benchmark.group = f"trainer CNN SGD step, batch {batch}"
    info(benchmark, op="trainer", direction="step", shape=[batch, 1, 28, 28], contender=contender,
         device="cpu", dtype="float32", batch=batch)
    benchmark(step)
    if benchmark.stats is not None:  # None under --benchmark-disable
        benchmark.extra_info["images_per_s"] = batch / benchmark.stats.stats.median
