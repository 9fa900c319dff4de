"""The trainer issue's throughput and accuracy targets on real MNIST: `numbanorm-demo` against the
same recipe in PyTorch CPU, EACH IN ITS OWN PROCESS AT ITS DEFAULTS (no thread or wait-policy
variables set by this script), one after the other in one run.

    python benchmarks/mnist_vs_torch.py --data-dir DIR [--epochs 1] [--lr 0.05] [--norm batch]
        [--out benchmarks/mnist_vs_torch.json]

Both train the reference CNN (see numbanorm/demo.py) with SGD(lr, momentum 0.9), batch 128, on
the 60k training images in the same shuffled order, and report test accuracy on the 10k test
images after every epoch with training images/s (the epoch's wall time, data slicing included).
Initial weights differ (each framework draws its own default init), so accuracies agree in
expectation, not bit for bit. PyTorch is skipped when it is not installed.
"""
import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np


def run_numbanorm(args, out):
    """numbanorm-demo in a fresh process (the user's command, nothing set)."""
    cmd = [sys.executable, "-c", "import sys; from numbanorm.demo import main; sys.exit(main())",
           "--dataset", "mnist", "--data-dir", args.data_dir, "--norm", args.norm,
           "--epochs", str(args.epochs), "--lr", str(args.lr), "--seed", str(args.seed),
           "--batch-size", "128", "--no-progress", "--json", out]
    subprocess.run(cmd, check=True)
    with open(out) as f:
        return json.load(f)["runs"][0]["epochs"]


def torch_worker(args):
    """The PyTorch side (run in its own process by main)."""
    import torch

    from numbanorm import datasets

    train_x, train_y, test_x, test_y = (torch.from_numpy(a) for a in datasets.load_mnist(args.data_dir))
    torch.manual_seed(args.seed)
    nn = torch.nn
    norm = {"batch": nn.BatchNorm2d, "none": None}[args.norm]
    layers = [nn.Conv2d(1, 32, 3, padding=1)] + ([norm(32)] if norm else [])
    layers += [nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(32, 64, 3, padding=1)]
    layers += ([norm(64)] if norm else []) + [nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                                              nn.Linear(3136, 128), nn.ReLU(), nn.Linear(128, 10)]
    model = nn.Sequential(*layers)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    shuffle = np.random.default_rng(np.random.SeedSequence([args.seed, 1]))  # the demo's order
    N, bs = len(train_x), 128
    epochs = []
    for epoch in range(1, args.epochs + 1):
        order = torch.from_numpy(shuffle.permutation(N))
        model.train()
        t0 = time.perf_counter()
        for step in range(math.ceil(N / bs)):
            idx = order[step * bs:(step + 1) * bs]
            opt.zero_grad()
            loss = loss_fn(model(train_x[idx]), train_y[idx])
            loss.backward()
            opt.step()
        seconds = time.perf_counter() - t0
        model.eval()
        with torch.no_grad():
            correct = sum(int((model(test_x[i:i + 500]).argmax(1) == test_y[i:i + 500]).sum())
                          for i in range(0, len(test_x), 500))
        epochs.append({"epoch": epoch, "test_acc": correct / len(test_x), "seconds": seconds,
                       "images_per_second": N / seconds})
    with open(args.torch_worker, "w") as f:
        json.dump({"epochs": epochs, "torch": torch.__version__, "threads": torch.get_num_threads()}, f)


def run_torch(args, out):
    try:
        import torch  # noqa: F401
    except ImportError:
        print("PyTorch is not installed: its side is skipped", file=sys.stderr)
        return None
    cmd = [sys.executable, os.path.abspath(__file__), "--data-dir", args.data_dir, "--norm", args.norm,
           "--epochs", str(args.epochs), "--lr", str(args.lr), "--seed", str(args.seed),
           "--torch-worker", out]
    subprocess.run(cmd, check=True)
    with open(out) as f:
        return json.load(f)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--norm", choices=["batch", "none"], default="batch")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="write the figures as JSON here")
    ap.add_argument("--torch-worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.torch_worker:
        return torch_worker(args)
    with tempfile.TemporaryDirectory() as tmp:
        ours = run_numbanorm(args, os.path.join(tmp, "ours.json"))
        theirs = run_torch(args, os.path.join(tmp, "theirs.json"))
    t_epochs = theirs["epochs"] if theirs else None
    print(f"\nMNIST, norm={args.norm}, lr={args.lr}, batch 128, each framework in its own process "
          f"at its defaults ({os.cpu_count()} logical CPUs)")
    print("epoch  numbanorm acc  torch acc   numbanorm img/s  torch img/s  ratio")
    for k, e in enumerate(ours):
        t = t_epochs[k] if t_epochs else None
        print(f"{e['epoch']:5d}  {100 * e['test_acc']:12.2f}%  "
              + (f"{100 * t['test_acc']:8.2f}%" if t else "       --")
              + f"  {e['images_per_second']:15.0f}  "
              + (f"{t['images_per_second']:11.0f}  {e['images_per_second'] / t['images_per_second']:5.2f}x"
                 if t else "         --"))
    if args.out:
        from numbanorm._fileio import atomic_open

        with atomic_open(args.out, "w") as f:
            json.dump({"args": {k: v for k, v in vars(args).items() if k != "torch_worker"},
                       "machine": platform.processor() or platform.machine(),
                       "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d"),
                       "numbanorm": ours, "torch": theirs}, f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    main()
