"""The one training loop and model builder shared by numbanorm-demo and numbanorm-study.

    model = build_model("batch", in_channels=1, image_size=28, seed=0)
    run = fit(model, (train_x, train_y, test_x, test_y), TrainConfig(epochs=3), name="batch")

The model (the same for every norm, same initial weights for a given seed):

    conv(C_in, 32, 3, padding=1) - norm(32) - ReLU - MaxPool2d(2)
    conv(32, 64, 3, padding=1) - norm(64) - ReLU - MaxPool2d(2)
    Flatten - Linear(64 * (S/4)^2, 128) - ReLU - [Dropout(p)] - Linear(128, 10)

for (N, C_in, S, S) images; conv is Conv2d (or StdConv2d, weight standardization). norm(C) is
one of NORM_HELP. The convolutions have a bias only with 'none' (a norm's shift makes a conv
bias redundant). fit() trains with SGD/Adam and cross-entropy, one fixed batch order per seed,
and evaluates on the test set after each epoch.
"""
import dataclasses
import math
import os
import sys
import time

import numpy as np

from . import _backend

NORMS = ("batch", "layer", "group", "instance", "none")  # the demo's choices
GROUPS = 8  # GroupNorm groups for 'group'

NORM_HELP = {
    "batch": "BatchNorm2d(C)",
    "layer": "GroupNorm(1, C): layer norm over (C, H, W), per-channel affine",
    "group": f"GroupNorm({GROUPS}, C)",
    "instance": "InstanceNorm2d(C, affine=True)",
    "none": "no normalization (convs get a bias)",
    "renorm": "BatchRenorm2d(C) (rmax 3, dmax 5)",
}


class Diverged(Exception):
    """The training loss became NaN or infinite; .run holds the record up to that point."""

    def __init__(self, message, run):
        super().__init__(message)
        self.run = run


# ---------------------------------------------------------------- model

def make_norm(kind, channels, momentum=0.1):
    """The norm layer `kind` (a NORM_HELP key other than 'none') over `channels` channels;
    momentum is the running-statistics momentum of 'batch' and 'renorm'."""
    from . import nn

    if kind == "batch":
        return nn.BatchNorm2d(channels, momentum=momentum)
    if kind == "layer":
        return nn.GroupNorm(1, channels)
    if kind == "group":
        return nn.GroupNorm(GROUPS, channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    if kind == "renorm":
        return nn.BatchRenorm2d(channels, momentum=momentum)
    raise ValueError(f"unknown norm {kind!r}; choose from {', '.join(k for k in NORM_HELP if k != 'none')}")


def build_model(norm="batch", seed=0, in_channels=1, image_size=28, dropout=0.0, conv=None,
                momentum=0.1):
    """The CNN of the module docstring on the CPU, float32, for (N, in_channels, image_size,
    image_size) inputs; image_size must be a multiple of 4.

    conv: the convolution class (default nn.Conv2d; nn.StdConv2d for weight standardization).
    dropout: probability of the Dropout before the last Linear (0: no Dropout layer).
    Each weighted layer draws from its own generator spawned from `seed`, so the convolution
    and linear weights are the same whichever norm, conv class or dropout is chosen.
    """
    from . import nn

    if image_size % 4:
        raise ValueError(f"image_size must be a multiple of 4 (two 2x2 poolings), got {image_size}")
    conv = nn.Conv2d if conv is None else conv
    rngs = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(5)]
    bias = norm == "none"
    norm_layer = (lambda c: []) if norm == "none" else (lambda c: [make_norm(norm, c, momentum)])
    layers = [conv(in_channels, 32, 3, padding=1, bias=bias, rng=rngs[0]), *norm_layer(32),
              nn.ReLU(), nn.MaxPool2d(2), conv(32, 64, 3, padding=1, bias=bias, rng=rngs[1]),
              *norm_layer(64), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
              nn.Linear(64 * (image_size // 4) ** 2, 128, rng=rngs[2]), nn.ReLU()]
    layers += [nn.Dropout(dropout, rng=rngs[4])] if dropout else []
    layers += [nn.Linear(128, 10, rng=rngs[3])]
    return nn.Sequential(*layers)


def make_optimizer(name, params, lr, momentum):
    from . import optim

    if name == "sgd":
        return optim.SGD(params, lr=lr, momentum=momentum)
    if name == "adam":
        return optim.Adam(params, lr=lr)
    raise ValueError(f"unknown optimizer {name!r}")


# ---------------------------------------------------------------- data, device

def default_data_dir(dataset="mnist"):
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "numbanorm", dataset)


def load_data(dataset, data_dir=None, download=False, progress=True):
    """(train_x, train_y, test_x, test_y) of 'digits' (embedded), 'mnist' or 'cifar10'."""
    from . import datasets

    if dataset == "digits":
        return datasets.load_digits()
    data_dir = data_dir or default_data_dir(dataset)
    if dataset == "cifar10":
        return datasets.load_cifar10(data_dir)
    if dataset != "mnist":
        raise ValueError(f"unknown dataset {dataset!r}; choose digits, mnist or cifar10")
    if download:
        datasets.download_mnist(data_dir, progress=progress)
    return datasets.load_mnist(data_dir)


def resolve_device(device, prog="numbanorm-demo"):
    """'auto' -> 'cuda' when a real GPU is usable (never the simulator), else 'cpu'."""
    from .cuda_support import cuda_available

    if device == "auto":
        simulator = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
        return "cuda" if not simulator and cuda_available() else "cpu"
    if device == "cuda" and not cuda_available():
        raise SystemExit(f"{prog}: --device cuda, but numba.cuda finds no usable GPU "
                         "(pip install 'numbanorm[cuda]' on a machine with an NVIDIA driver, "
                         "or use --device cpu)")
    return device


def to_device(a, device):
    """a (a host batch) on `device` (numbanorm._backend.transfer)."""
    return _backend.transfer(a, device)


def host(a):
    """a (logits, statistics) as a NumPy array (numbanorm._backend.transfer)."""
    return _backend.transfer(a, "cpu")


def progress_bar(total, desc, enabled):
    """A tqdm bar, or None without tqdm / when disabled."""
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, unit="batch", leave=False, dynamic_ncols=True, file=sys.stderr)


# ---------------------------------------------------------------- evaluation, training

def evaluate(model, x, y, device, batch_size=500):
    """(accuracy, all logits finite) of model in eval mode on (x, y)."""
    model.eval()
    correct, finite = 0, True
    try:
        for start in range(0, len(x), batch_size):
            logits = host(model.forward(to_device(np.ascontiguousarray(x[start:start + batch_size]), device)))
            finite = finite and bool(np.isfinite(logits).all())
            correct += int((logits.argmax(axis=1) == y[start:start + batch_size]).sum())
    finally:
        model.train()
    return correct / max(len(x), 1), finite


@dataclasses.dataclass
class TrainConfig:
    """How fit() trains: epochs over the training set in batches of batch_size (the last one
    smaller), the optimizer ('sgd' with momentum, or 'adam'), and the seed of the batch order."""
    epochs: int = 3
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    seed: int = 0
    progress: bool = True


def fit(model, data, config, *, name, device="cpu", log=None, comm=None, on_step=None,
        record=None, compiles=None):
    """Train `model` (already on `device`) on data = (train_x, train_y, test_x, test_y) and
    evaluate it on the test set after every epoch. Returns the run record: record (a dict the
    caller may seed with its own fields) plus 'parameters', 'steps_per_epoch', 'epochs'
    (per-epoch train_loss, train_acc -- of the training batches as they were trained on --,
    test_acc, seconds, images_per_second, eval_seconds, compile_seconds), and the per-step
    'step_losses' and 'step_accs' (training-batch accuracy).

    on_step(step, loss, model), when given, runs after every optimizer step (step counts from
    1 over all epochs), e.g. to take measurements; it leaves the model in training mode.
    A NaN/inf loss stops training at once and raises Diverged, whose .run has a 'diverged'
    entry and the epochs completed before it.

    comm (the demo's --distributed): every rank draws the same batch and keeps its block of
    it, BatchNorm is SyncBatchNorm (the caller converts), the loss gradient is weighted by the
    rank's share of the batch and the gradients are summed across ranks -- the same steps as
    one process with the whole batch. compiles: a demo.compile_watch() the caller installed,
    to report Numba compile time per epoch.
    """
    from . import nn

    log = log or (lambda msg: None)
    train_x, train_y, test_x, test_y = data
    if comm is not None:
        from . import distributed as D
    n_params = sum(int(np.prod(p.data.shape)) for p in model.parameters())
    opt = make_optimizer(config.optimizer, model.parameters(), config.lr, config.momentum)
    crit = nn.CrossEntropyLoss()
    shuffle = np.random.default_rng(np.random.SeedSequence([config.seed, 1]))  # same order for every model
    N, bs = len(train_x), config.batch_size
    steps = math.ceil(N / bs)
    run = dict(record or {})
    run.update({"parameters": n_params, "epochs": [], "step_losses": [], "step_accs": [],
                "steps_per_epoch": steps, "diverged": None})
    global_step = 0
    for epoch in range(1, config.epochs + 1):
        order = shuffle.permutation(N)
        bar = progress_bar(steps, f"[{name}] epoch {epoch}/{config.epochs}", config.progress)
        loss_sum, correct, seen = 0.0, 0, 0
        compiled_before = compiles.seconds if compiles is not None else 0.0
        t0 = time.perf_counter()
        try:
            for step in range(steps):
                idx = order[step * bs:(step + 1) * bs]
                n_batch = len(idx)
                if comm is not None:
                    if n_batch < comm.Get_size():  # a rank would get no image: skip (all ranks)
                        continue
                    idx = D.shard(idx, comm)
                xb, yb = to_device(np.ascontiguousarray(train_x[idx]), device), train_y[idx]
                logits = model.forward(xb)
                loss = crit.forward(logits, yb)
                n_correct = int((host(logits).argmax(axis=1) == yb).sum())
                if comm is not None:  # the whole batch's mean loss and correct count
                    total = D.allreduce_sum(np.array([loss * len(idx), n_correct]), comm, "loss and accuracy")
                    loss, n_correct = float(total[0]) / n_batch, int(total[1])
                if not math.isfinite(loss):
                    run["diverged"] = {"epoch": epoch, "step": step + 1, "loss": str(loss)}
                    raise Diverged(
                        f"[{name}] diverged: the training loss is {loss} at epoch {epoch}, step "
                        f"{step + 1}/{steps} (--lr {config.lr}, --optimizer {config.optimizer}); this "
                        f"run is stopped instead of training on garbage. Try a smaller --lr.", run)
                model.zero_grad()
                model.backward(crit.backward(len(idx) / n_batch), input_grad=False)  # x is data
                if comm is not None:
                    D.allreduce_gradients(model.parameters(), comm, average=False)
                opt.step()
                loss_sum += loss * n_batch
                correct += n_correct
                seen += n_batch
                global_step += 1
                run["step_losses"].append(loss)
                run["step_accs"].append(n_correct / n_batch)
                if on_step is not None:
                    on_step(global_step, loss, model)
                if bar is not None:
                    bar.update(1)
                    if step % 10 == 0:
                        bar.set_postfix(loss=f"{loss:.4f}")
        finally:
            if bar is not None:
                bar.close()
        seconds = time.perf_counter() - t0
        compile_seconds = (compiles.seconds if compiles is not None else 0.0) - compiled_before
        t1 = time.perf_counter()
        test_acc, finite = evaluate(model, test_x, test_y, device)
        if not finite:
            run["diverged"] = {"epoch": epoch, "step": steps, "loss": "non-finite test logits"}
            raise Diverged(
                f"[{name}] diverged: the model gives NaN/inf outputs on the test set after epoch "
                f"{epoch} (--lr {config.lr}, --optimizer {config.optimizer}); this run is stopped "
                f"instead of training on garbage. Try a smaller --lr.", run)
        record = {"epoch": epoch, "train_loss": loss_sum / seen, "train_acc": correct / seen,
                  "test_acc": test_acc, "seconds": seconds, "images_per_second": seen / seconds,
                  "eval_seconds": time.perf_counter() - t1, "compile_seconds": compile_seconds}
        run["epochs"].append(record)
        log(f"[{name}] epoch {epoch}/{config.epochs}  train_loss {record['train_loss']:.4f}  "
            f"train_acc {100 * record['train_acc']:.2f}%  test_acc {100 * test_acc:.2f}%  "
            f"{seconds:.1f} s  {record['images_per_second']:.0f} img/s"
            + (f"  (includes {compile_seconds:.1f} s of Numba compile time)" if compile_seconds > 0 else ""))
    return run
