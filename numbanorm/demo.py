"""numbanorm-demo: train a small CNN on MNIST digits with each normalization and compare them.

    numbanorm-demo                                  # embedded digits, BatchNorm vs no norm
    numbanorm-demo --norm batch,layer,group,instance,none --epochs 3 --plot curves.png
    numbanorm-demo --dataset mnist --data-dir ~/mnist --download --json runs.json
    python -m numbanorm.demo --help
    mpiexec -n 2 numbanorm-demo --distributed       # data-parallel over MPI (numbanorm[mpi])

The model (the same for every norm, same initial weights and batch order for a given --seed):

    Conv2d(1, 32, 3, padding=1) - norm(32) - ReLU - MaxPool2d(2)
    Conv2d(32, 64, 3, padding=1) - norm(64) - ReLU - MaxPool2d(2)
    Flatten - Linear(3136, 128) - ReLU - Linear(128, 10)        + CrossEntropyLoss

(on MNIST; with --dataset cifar10 the first conv takes 3 channels and the Linear 64*8*8 inputs.)

norm(C) is BatchNorm2d(C) ('batch'), GroupNorm(1, C) ('layer': layer norm over (C, H, W) with a
per-channel affine, the usual CNN form; it equals LayerNorm([C, H, W]) up to the affine's shape),
GroupNorm(8, C) ('group'), InstanceNorm2d(C, affine=True) ('instance'), or nothing ('none'). The
convolutions have a bias only with 'none' (a norm's shift makes a conv bias redundant).
"""
import argparse
import json
import os
import sys
import time

import numpy as np

from .training import (GROUPS, NORM_HELP as _ALL_NORM_HELP, NORMS, Diverged, TrainConfig,  # noqa: F401
                       build_model, default_data_dir, evaluate, fit, make_norm, resolve_device)

DEFAULT_EPOCHS = 3
NORM_HELP = {k: _ALL_NORM_HELP[k] for k in NORMS}


def load_data(args):
    from . import training

    return training.load_data(args.dataset, args.data_dir, args.download, progress=not args.no_progress)


# ---------------------------------------------------------------- compile time, environment

def compile_watch(on_first_compile=None):
    """A Numba event listener counting compilations (cache misses only: a kernel loaded from
    Numba's on-disk cache is not compiled) and their wall time in .seconds; install it with
    numba.core.event.install_listener("numba:compile", watch). on_first_compile() runs once,
    when the first compilation starts."""
    from numba.core import event

    class CompileWatch(event.Listener):
        def __init__(self):
            self.count, self.seconds, self._depth, self._start = 0, 0.0, 0, 0.0

        def on_start(self, ev):
            if self._depth == 0:  # nested compilations (callees) are inside the outer one
                self._start = time.perf_counter()
                if self.count == 0 and on_first_compile is not None:
                    on_first_compile()
                self.count += 1
            self._depth += 1

        def on_end(self, ev):
            self._depth -= 1
            if self._depth == 0:
                self.seconds += time.perf_counter() - self._start

    return CompileWatch()


def environment(device):
    """Versions (Python, NumPy, Numba, BLAS) and the machine, for --json."""
    import platform

    import numba

    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        blas = f"{blas.get('name')} {blas.get('version')}"
    except Exception:  # older NumPy: no dict form
        blas = "unknown"
    env = {"python": platform.python_version(), "numpy": np.__version__, "numba": numba.__version__,
           "blas": blas, "machine": platform.machine(), "platform": platform.platform(),
           "processor": platform.processor() or None, "cpu_count": os.cpu_count(),
           "numba_threads": numba.get_num_threads()}
    if device == "cuda":
        from numba import cuda

        env["gpu"] = cuda.get_current_device().name.decode() if hasattr(
            cuda.get_current_device().name, "decode") else str(cuda.get_current_device().name)
    return env


# ---------------------------------------------------------------- training

def train_one(norm, data, args, device, log, comm=None, compiles=None):
    """Train one model with numbanorm.training.fit; returns (run record, model). A NaN/inf
    loss raises Diverged, whose .run has a 'diverged' entry and the epochs completed before it.
    comm (--distributed): BatchNorm becomes SyncBatchNorm and fit shards every batch.
    compiles: a compile_watch() installed by the caller, to report compile time per epoch."""
    from . import nn

    train_x = data[0]
    model = build_model(norm, seed=args.seed, in_channels=train_x.shape[1], image_size=train_x.shape[2])
    if comm is not None:
        from . import distributed as D

        model = nn.SyncBatchNorm.convert_sync_batchnorm(model, comm)
        D.broadcast_parameters(model, comm)
    model = model.to(device)
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, optimizer=args.optimizer,
                         lr=args.lr, momentum=args.momentum, seed=args.seed,
                         progress=not args.no_progress and args.root)
    n_params = sum(int(np.prod(p.data.shape)) for p in model.parameters())
    log(f"[{norm}] {NORM_HELP[norm]}; {n_params:,} parameters")
    run = fit(model, data, config, name=norm, device=device, log=log, comm=comm, compiles=compiles,
              record={"norm": norm, "description": NORM_HELP[norm]})
    return run, model


def comparison_table(runs):
    head = f"{'norm':<10}{'params':>10}{'train_loss':>12}{'test_acc':>10}{'best_acc':>10}{'time (s)':>10}{'img/s':>9}"
    lines = [head, "-" * len(head)]
    for r in runs:
        eps = r["epochs"]
        if not eps:
            lines.append(f"{r['norm']:<10}{r['parameters']:>10,}   diverged in epoch {r['diverged']['epoch']}")
            continue
        last = eps[-1]
        total = sum(e["seconds"] for e in eps)
        ips = sum(e["images_per_second"] * e["seconds"] for e in eps) / total
        row = (f"{r['norm']:<10}{r['parameters']:>10,}{last['train_loss']:>12.4g}"
               f"{100 * last['test_acc']:>9.2f}%{100 * max(e['test_acc'] for e in eps):>9.2f}%"
               f"{total:>10.1f}{ips:>9.0f}")
        if r["diverged"]:
            row += f"  diverged in epoch {r['diverged']['epoch']}"
        lines.append(row)
    return "\n".join(lines)


# ---------------------------------------------------------------- outputs (written atomically)

def write_json(path, runs, args, device):
    from ._fileio import atomic_open

    doc = {"dataset": args.dataset, "device": device, "optimizer": args.optimizer, "lr": args.lr,
           "momentum": args.momentum, "batch_size": args.batch_size, "seed": args.seed,
           "environment": environment(device),
           "runs": [{k: v for k, v in r.items() if k not in ("step_losses", "step_accs")} for r in runs]}
    with atomic_open(path, "w") as f:
        json.dump(doc, f, indent=2, allow_nan=False)
        f.write("\n")


def save_path(path, norm, several):
    """--save PATH for one norm; PATH with '-<norm>' before the extension for several."""
    if not several:
        return path
    root, ext = os.path.splitext(path)
    return f"{root}-{norm}{ext or '.npz'}"


def write_state_dict(path, model):
    from ._fileio import atomic_open

    with atomic_open(path, "wb") as f:
        np.savez(f, **model.state_dict())


def plot_figure(runs):
    """The matplotlib Figure of --plot: training loss, and accuracy, of every run."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(11, 4.2))
    FigureCanvasAgg(fig)
    ax_loss, ax_acc = fig.subplots(1, 2)
    # one epoch: x is the training step; several: x is the epoch (integer ticks), steps placed
    # at fractions of it. Accuracy: the training batches' (per step, smoothed) and the test
    # set's after each epoch (markers).
    one_epoch = max((len(r["epochs"]) for r in runs), default=0) <= 1
    for i, r in enumerate(runs):
        color = f"C{i}"
        per_epoch = 1 if one_epoch else max(r.get("steps_per_epoch", 1), 1)
        for ax, values, scale in ((ax_loss, r["step_losses"], 1.0), (ax_acc, r.get("step_accs", []), 100.0)):
            values = np.asarray(values, dtype=np.float64) * scale
            if len(values):
                k = max(1, min(10, len(values) // 20))  # light smoothing of per-step values
                smooth = np.convolve(values, np.ones(k) / k, mode="valid")
                ax.plot((np.arange(len(smooth)) + k) / per_epoch, smooth, color=color,
                        label=r["norm"] + (" (train batches)" if ax is ax_acc else ""),
                        alpha=0.6 if ax is ax_acc else 1.0)
        if r["epochs"]:
            steps = r.get("steps_per_epoch", 1)
            xs = [(e["epoch"] * steps if one_epoch else e["epoch"]) for e in r["epochs"]]
            ax_acc.plot(xs, [100 * e["test_acc"] for e in r["epochs"]], marker="o", linestyle="--",
                        color=color, label=f"{r['norm']} (test)")
    xlabel = "training step" if one_epoch else "epoch"
    ax_loss.set(xlabel=xlabel, ylabel="training loss (per step, smoothed)", title="Training loss")
    ax_acc.set(xlabel=xlabel, ylabel="accuracy (%)", title="Accuracy: training batches and test set")
    for ax in (ax_loss, ax_acc):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


def write_plot(path, runs):
    from ._fileio import atomic_open

    fig = plot_figure(runs)
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110)


# ---------------------------------------------------------------- command line

def _norm_list(values):
    out = []
    for v in values:
        for item in v.split(","):
            item = item.strip().lower()
            if not item:
                continue
            if item not in NORMS:
                raise argparse.ArgumentTypeError(f"unknown norm {item!r}; choose from {', '.join(NORMS)}")
            if item not in out:
                out.append(item)
    return out


def _positive(kind):
    def parse(s):
        v = kind(s)
        if not v > 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {s}")
        return v
    return parse


def parse_args(argv=None):
    norms = "; ".join(f"{k} = {v}" for k, v in NORM_HELP.items())
    p = argparse.ArgumentParser(
        prog="numbanorm-demo", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train a small CNN on MNIST digits with numbanorm's layers and compare "
                    "normalizations.\n\n" + __doc__[__doc__.index("The model"):].strip(),
        epilog="Exit status: 0, 1 when a run diverged (NaN/inf loss), 2 for bad arguments.")
    p.add_argument("--dataset", choices=("digits", "mnist", "cifar10"), default="digits",
                   help="digits: the 10,000 + 2,000 image MNIST subset shipped in the package (no "
                        "download); mnist: the full 60,000 + 10,000 from --data-dir; cifar10: the "
                        "CIFAR-10 binary version (data_batch_1.bin ... test_batch.bin) from --data-dir "
                        "(default: digits)")
    p.add_argument("--data-dir", metavar="DIR",
                   help=f"directory with the four MNIST IDX files, .gz or raw (default: "
                        f"{default_data_dir('mnist')}), or the CIFAR-10 .bin files (default: "
                        f"{default_data_dir('cifar10')})")
    p.add_argument("--download", action="store_true",
                   help="with --dataset mnist: download the files into --data-dir if missing")
    p.add_argument("--norm", action="append", metavar="NORM",
                   help=f"normalization to train with, repeatable or comma-separated, from {{{','.join(NORMS)}}} "
                        f"(default: batch,none). {norms}")
    p.add_argument("--epochs", type=_positive(int), default=DEFAULT_EPOCHS,
                   help=f"epochs per run (default: {DEFAULT_EPOCHS})")
    p.add_argument("--batch-size", type=_positive(int), default=128, help="(default: 128)")
    p.add_argument("--optimizer", choices=("sgd", "adam"), default="sgd", help="(default: sgd)")
    p.add_argument("--lr", type=_positive(float), default=None,
                   help="learning rate (default: 0.01 for sgd, where the norms differ most; 0.001 for adam)")
    p.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (default: 0.9)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed for initial weights and batch order, the same for every norm (default: 0)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="auto: the GPU when numba.cuda finds one, else the CPU (default: auto)")
    p.add_argument("--limit-train", type=_positive(int), metavar="N", help="use the first N training images")
    p.add_argument("--limit-test", type=_positive(int), metavar="N", help="use the first N test images")
    p.add_argument("--plot", metavar="PATH.png", help="write loss and accuracy curves of every run (needs matplotlib)")
    p.add_argument("--save", metavar="PATH.npz",
                   help="write the trained model's state_dict (.npz; with several norms, PATH-<norm>.npz)")
    p.add_argument("--json", metavar="PATH", help="write per-epoch figures of every run as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--distributed", action="store_true",
                   help="data-parallel over MPI (mpiexec -n P numbanorm-demo --distributed ...): each "
                        "rank takes its block of every batch (--batch-size is the total over ranks), "
                        "BatchNorm becomes SyncBatchNorm, gradients are summed with one allreduce per "
                        "bucket; rank 0 prints and writes files. Needs numbanorm[mpi]")
    args = p.parse_args(argv)
    args.root = True  # this process prints and writes files (with --distributed: rank 0 only)
    if args.distributed:
        import importlib.util

        if importlib.util.find_spec("mpi4py") is None:
            p.error("--distributed needs mpi4py and MPI: pip install 'numbanorm[mpi]'")
    try:
        args.norms = _norm_list(args.norm or ["batch,none"])
    except argparse.ArgumentTypeError as e:
        p.error(f"--norm: {e}")
    if not args.norms:
        p.error("--norm: no normalization given")
    if args.lr is None:
        # SGD 0.01: where normalization's effect shows (at the reference 0.05 both do well)
        args.lr = 0.01 if args.optimizer == "sgd" else 0.001
    if args.download and args.dataset != "mnist":
        p.error("--download only applies to --dataset mnist")
    if args.plot:
        import importlib.util

        if importlib.util.find_spec("matplotlib") is None:
            p.error("--plot needs matplotlib: pip install 'numbanorm[demo]'")
    return args


def main(argv=None):
    """Run the demo; returns the exit status (0, or 1 when a run diverged)."""
    args = parse_args(argv)
    if not args.distributed:
        return _run(args, None)
    from . import distributed as D

    comm = D.get_comm()
    args.root = comm.Get_rank() == 0
    with D.abort_on_error(comm):  # an error on one rank stops every rank (no hang)
        return _run(args, comm)


def _run(args, comm):
    def log(msg):
        if args.root:
            print(msg, flush=True)

    device = resolve_device(args.device)
    data = list(load_data(args))
    if args.limit_train:
        data[0], data[1] = data[0][:args.limit_train], data[1][:args.limit_train]
    if args.limit_test:
        data[2], data[3] = data[2][:args.limit_test], data[3][:args.limit_test]
    log(f"numbanorm-demo: {args.dataset}, {len(data[0]):,} train / {len(data[2]):,} test images, "
        f"device {device}, {args.optimizer} lr={args.lr}"
        + (f" momentum={args.momentum}" if args.optimizer == "sgd" else "")
        + f", batch {args.batch_size}, {args.epochs} epoch(s), norms: {', '.join(args.norms)}"
        + (f", {comm.Get_size()} MPI ranks" if comm is not None else ""))
    from numba.core import event

    compiles = compile_watch(lambda: log(
        "(compiling numbanorm's Numba kernels: the first run after installing can take a few "
        "minutes on a small machine; they are cached for later runs)"))
    runs, status = [], 0
    t_start = time.perf_counter()
    for norm in args.norms:
        try:
            # overflow warnings from NumPy would only repeat what the divergence check reports
            with np.errstate(over="ignore", invalid="ignore"), \
                    event.install_listener("numba:compile", compiles):
                run, model = train_one(norm, data, args, device, log, comm, compiles)
        except Diverged as e:
            if args.root:
                print(f"numbanorm-demo: {e}", file=sys.stderr, flush=True)
            runs.append(e.run)
            status = 1
            continue
        runs.append(run)
        if args.save and args.root:
            path = save_path(args.save, norm, len(args.norms) > 1)
            write_state_dict(path, model)
            log(f"[{norm}] saved the state_dict to {path}")
    log("")
    log(comparison_table(runs))
    log(f"total wall time {time.perf_counter() - t_start:.1f} s")
    if args.json and args.root:
        write_json(args.json, runs, args, device)
        log(f"wrote {args.json}")
    if args.plot and args.root:
        write_plot(args.plot, runs)
        log(f"wrote {args.plot}")
    return status


if __name__ == "__main__":
    sys.exit(main())
