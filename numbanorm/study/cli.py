"""The numbanorm-study command line: parse, load the data, run the chosen experiments, write
REPORT.md, the PNGs and results.json into --out."""
import argparse
import os
import shlex
import sys
import time

from ..demo import environment
from . import experiments, report


def _experiment_list(text):
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in experiments.EXPERIMENTS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown experiment(s) {', '.join(map(repr, unknown)) or '(none given)'}; choose from "
            f"{', '.join(experiments.EXPERIMENTS)}")
    return [n for n in experiments.EXPERIMENTS if n in names]  # the report's order


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="numbanorm-study",
        description="Reproduce the documented claims about BatchNorm and its relatives with "
                    "numbanorm's trainer; write DIR/REPORT.md (tables, plots, verdicts computed "
                    "from the figures), DIR/*.png and DIR/results.json.",
        epilog=f"Experiments: {', '.join(experiments.EXPERIMENTS)}. Exit status: 0, 2 for bad arguments.")
    p.add_argument("--out", metavar="DIR", default="study-out", help="output directory (default: study-out)")
    p.add_argument("--quick", action="store_true",
                   help="small subsets and few steps (a few minutes; what CI runs)")
    p.add_argument("--dataset", choices=("digits", "mnist", "cifar10"), default="digits",
                   help="digits: the embedded MNIST subset (default); mnist: the IDX files in "
                        "--data-dir; cifar10: the CIFAR-10 binary version in --data-dir")
    p.add_argument("--data-dir", metavar="DIR", help="where the mnist or cifar10 files are")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the initial weights, batch order and subsets (default: 0)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="auto: the GPU when numba.cuda finds one, else the CPU (default: auto)")
    p.add_argument("--experiments", type=_experiment_list, default=list(experiments.EXPERIMENTS),
                   metavar="NAME,...", help="which experiments to run (default: all)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    if args.dataset == "digits" and args.data_dir:
        p.error("--data-dir applies to --dataset mnist or cifar10")
    return args


def versions(env):
    return f"Python {env['python']}, NumPy {env['numpy']}, Numba {env['numba']}, BLAS {env['blas']}"


def main(argv=None):
    args = parse_args(argv)
    from .. import training

    device = training.resolve_device(args.device, prog="numbanorm-study")
    data = training.load_data(args.dataset, args.data_dir, progress=not args.no_progress)
    command = "numbanorm-study " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    profile = "quick" if args.quick else "full"
    ctx = experiments.Context(data=data, device=device, seed=args.seed, profile=profile,
                              progress=not args.no_progress, log=lambda m: print(m, flush=True))
    print(f"numbanorm-study: {args.dataset}, profile {profile}, device {device}, experiments: "
          f"{', '.join(args.experiments)}; writing {args.out}/", flush=True)
    os.makedirs(args.out, exist_ok=True)
    t_start = time.perf_counter()
    sections = {}
    for name in args.experiments:
        print(f"== {name}", flush=True)
        t0 = time.perf_counter()
        sec = experiments.run_experiment(name, ctx)
        sec["seconds"] = time.perf_counter() - t0
        if sec["status"] == "ok":
            sec["plot"] = f"{name}.png"
            report.plot(name, sec, os.path.join(args.out, sec["plot"]))
            print(f"   {sec['verdict']}  ({sec['seconds']:.0f} s)", flush=True)
        else:
            print(f"   {sec['reason']}", flush=True)
        sections[name] = sec
    env = environment(device)
    meta = {"command": command, "dataset": args.dataset, "profile": profile, "seed": args.seed,
            "device": device, "train_images": len(data[0]), "test_images": len(data[2]),
            "wall_seconds": time.perf_counter() - t_start, "versions": versions(env),
            "machine": f"{env['machine']}, {env['cpu_count']} CPU(s), {env['numba_threads']} Numba thread(s)",
            "environment": env,
            "margin_points": experiments.MARGIN, "usable_fraction": experiments.USABLE_FRACTION}
    report.write_json(os.path.join(args.out, "results.json"), {"meta": meta, "experiments": sections})
    report.write_text(os.path.join(args.out, "REPORT.md"), report.render(meta, sections))
    print(f"wrote {os.path.join(args.out, 'REPORT.md')} ({meta['wall_seconds']:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
