"""pytest-benchmark JSON -> benchmarks/RESULTS.md (tables) and benchmarks/RESULTS.png (chart).

    python -m pytest benchmarks --benchmark-json=benchmarks/results.json
    python benchmarks/report.py benchmarks/results.json [--out-dir benchmarks]
        [--call-budget benchmarks/call_budget.md]   (the table from benchmarks/call_budget.py)

Per op and shape: the median (and min) time of each contender, its ratio to the memory floor and to
PyTorch, and the effective bandwidth (the floor's bytes / time). The headline gives, per op and
direction, numbanorm's worst ratios against the targets (<= 1.5x the floor, faster than PyTorch).
Both outputs are written to a temporary file and renamed into place.
"""
import argparse
import json
import os
import sys
import tempfile
from collections import OrderedDict, defaultdict

FLOOR_TARGET = 1.5
FLOOR_OF = {"cpu": "floor", "cuda": "copy-d2d"}
TORCH_OF = {"cpu": "torch", "cuda": "torch-cuda"}
OURS_OF = {"cpu": "numbanorm", "cuda": "numbanorm-cuda"}
STAT = "median"  # the statistic ratios use; --stat min on a loaded machine (noise only adds)
LARGE = 1 << 19  # elements: below this a case shows per-call overhead rather than bandwidth


def atomic_write(path, write):
    """Call write(tmp_path), then rename tmp_path onto path (same directory)."""
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-", suffix=os.path.splitext(path)[1])
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def fmt_time(s):
    if s is None:
        return "-"
    for unit, k in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if s >= k:
            return f"{s / k:.3g} {unit}"
    return f"{s / 1e-9:.3g} ns"


def fmt_ratio(r):
    if r is None:
        return "-"
    return f"{r:.2f}x" if r >= 0.1 else f"{r:.2g}x"


def numel(shape):
    n = 1
    for d in shape:
        n *= d
    return n


def load(path):
    with open(path) as f:
        data = json.load(f)
    groups = OrderedDict()
    other = defaultdict(list)
    for b in data["benchmarks"]:
        ei = b.get("extra_info", {})
        if not b.get("stats"):
            continue
        entry = {"name": b["name"], "t": b["stats"][STAT], "p50": b["stats"]["median"],
                 "min": b["stats"]["min"], "rounds": b["stats"]["rounds"], **ei}
        if ei.get("op") in ("coldstart", "trainer"):
            other[ei["op"]].append(entry)
        elif "contender" in ei:
            groups.setdefault(b["group"], []).append(entry)
    return data, groups, other


def analyse(groups):
    """Per group: rows with ratios; per (device, op, direction): worst numbanorm ratios."""
    tables, worst = [], OrderedDict()
    for group, entries in groups.items():
        dev = entries[0].get("device", "cpu")
        by = {e["contender"]: e for e in entries}
        floor = by.get(FLOOR_OF[dev], {}).get("t")
        torch = by.get(TORCH_OF[dev], {}).get("t")
        rows = []
        for e in entries:
            t = e["t"]
            rows.append({**e, "x_floor": t / floor if floor else None,
                         "x_torch": t / torch if torch else None,
                         "gbs": e["bytes"] / t / 1e9 if e.get("bytes") else None})
        tables.append((group, rows))
        ours = by.get(OURS_OF[dev])
        if ours is None:
            continue
        # float16 / channels-last cases (layout "float16", "channels-last") get their own rows
        variant = ours.get("layout", "C")
        key = (dev, ours["op"] + ("" if variant == "C" else f" {variant}"), ours["direction"])
        w = worst.setdefault(key, {"floor": None, "torch": None, "floor_large": None,
                                   "torch_large": None})
        shape = "x".join(map(str, ours["shape"]))
        large = numel(ours["shape"]) >= LARGE
        for kind, base in (("floor", floor), ("torch", torch)):
            if not base:
                continue
            r = ours["t"] / base
            for k in (kind, kind + "_large") if large else (kind,):
                if w[k] is None or r > w[k][0]:
                    w[k] = (r, shape)
    return tables, worst


def machine_lines(data, groups, other):
    mi = data.get("machine_info", {})
    nb = mi.get("numbanorm", {})
    cpu = nb.get("cpu_model") or mi.get("cpu", {}).get("brand_raw") or mi.get("processor", "?")
    loads = [e["loadavg"] for es in list(groups.values()) + list(other.values()) for e in es
             if "loadavg" in e]
    lines = [
        f"- Machine: {cpu}, {nb.get('logical_cpus', '?')} logical CPUs; "
        f"{nb.get('threads', '?')} threads for Numba and PyTorch",
        f"- numba {nb.get('numba', '?')}, numpy {nb.get('numpy', '?')}, torch {nb.get('torch') or 'not installed'}, "
        f"Python {mi.get('python_version', '?')}; numbanorm at git {nb.get('git') or '?'}",
        f"- Date: {nb.get('date') or data.get('datetime', '?')}"
        + ("; QUICK MODE (tiny shapes): not a measurement" if nb.get("quick") else ""),
    ]
    if loads:
        lo, hi = min(loads), max(loads)
        lines.append(f"- 1-minute load average during the run: {lo:.1f} to {hi:.1f}")
        ncpu = nb.get("logical_cpus") or 0
        if ncpu and hi > 0.5 * ncpu:
            lines.append(
                f"- **The run was made while other jobs were using the machine** (load up to "
                f"{hi:.1f} on {ncpu} logical CPUs). Parallel kernels (numbanorm's, PyTorch's and "
                "the parallel floor) lose most when a thread waits for a busy core, so their "
                "times are inflated and noisy; compare ratios within a group, not across runs.")
    return lines


def headline(worst):
    out = ["| device | op | direction | worst x floor (shape) | worst x floor, large shapes | "
           "worst x PyTorch (shape) | worst x PyTorch, large shapes | targets met |",
           "|---|---|---|---|---|---|---|---|"]

    def cell(v):
        return "-" if v is None else f"{v[0]:.2f}x ({v[1]})"

    for (dev, op, direction), w in worst.items():
        ok_floor = w["floor"] is not None and w["floor"][0] <= FLOOR_TARGET
        ok_torch = w["torch"] is not None and w["torch"][0] < 1.0
        verdict = ("yes" if ok_floor and ok_torch else
                   "floor only" if ok_floor else "PyTorch only" if ok_torch else "no")
        out.append(f"| {dev} | {op} | {direction} | {cell(w['floor'])} | {cell(w['floor_large'])} | "
                   f"{cell(w['torch'])} | {cell(w['torch_large'])} | {verdict} |")
    return out


def group_table(group, rows):
    out = [f"### {group}", "",
           f"| contender | median | min | x floor ({STAT}) | x PyTorch ({STAT}) | GB/s ({STAT}) | rounds |",
           "|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: r["t"]):
        gbs = "-" if r["gbs"] is None else f"{r['gbs']:.1f}"
        out.append(f"| {r['contender']} | {fmt_time(r['p50'])} | {fmt_time(r['min'])} | "
                   f"{fmt_ratio(r['x_floor'])} | {fmt_ratio(r['x_torch'])} | {gbs} | {r['rounds']} |")
    return out + [""]


def coldstart_table(entries):
    if not entries:
        return []
    ops = entries[0].get("ops", [])
    out = ["## Cold start (first call in a fresh process)", "",
           f"Whole process (interpreter start included) and the in-process split; ops: {', '.join(ops)} "
           "(forward + backward each, on (8, 16, 8, 8) float32).", "",
           f"| Numba cache | process ({STAT}) | import numbanorm | " + " | ".join(ops) + " |",
           "|---|---|---|" + "---|" * len(ops)]
    for e in sorted(entries, key=lambda e: e["t"], reverse=True):
        s = e.get("seconds", {})
        out.append(f"| {e['cache']} | {fmt_time(e['t'])} | {fmt_time(s.get('import'))} | "
                   + " | ".join(fmt_time(s.get(o)) for o in ops) + " |")
    return out + [""]


def trainer_table(entries):
    if not entries:
        return []
    torch = next((e["t"] for e in entries if e["contender"] == "torch"), None)
    out = ["## Trainer: one SGD step of the reference CNN", "",
           f"Batch {entries[0].get('batch')}, 28x28 inputs, conv-BN-ReLU-pool x2, linear x2, "
           "SGD(lr=0.05, momentum=0.9).", "",
           f"| contender | {STAT} step | images/s | x PyTorch |", "|---|---|---|---|"]
    for e in sorted(entries, key=lambda e: e["t"]):
        ips = e["batch"] / e["t"]
        out.append(f"| {e['contender']} | {fmt_time(e['t'])} | {ips:.0f} | "
                   f"{fmt_ratio(e['t'] / torch if torch else None)} |")
    return out + [""]


def plot(tables, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tables = [(g, rows) for g, rows in tables if any(r["x_floor"] for r in rows)]
    contenders = [c for c in ("numbanorm", "torch", "numpy", "numbanorm-cuda", "torch-cuda")
                  if any(r["contender"] == c for _, rows in tables for r in rows)]
    if not tables or not contenders:
        return False
    height = 0.8 / len(contenders)
    fig, ax = plt.subplots(figsize=(11, 0.45 * len(tables) * max(2, len(contenders)) / 2 + 1.5))
    for i, c in enumerate(contenders):
        ys, xs = [], []
        for j, (g, rows) in enumerate(tables):
            r = next((r for r in rows if r["contender"] == c), None)
            if r is not None and r["x_floor"]:
                ys.append(j + i * height)
                xs.append(r["x_floor"])
        ax.barh(ys, xs, height=height, label=c)
    ax.set_yticks([j + 0.4 - height / 2 for j in range(len(tables))])
    ax.set_yticklabels([g for g, _ in tables], fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.axvline(1.0, color="k", lw=0.8)
    ax.axvline(FLOOR_TARGET, color="r", lw=0.8, ls="--", label=f"target {FLOOR_TARGET}x floor")
    ax.set_xlabel(f"{STAT} time / memory floor (log scale; lower is better)")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title("numbanorm vs contenders, relative to the memory floor")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return True


def call_budget_section(path):
    """The per-call budget table written by `python -m benchmarks.call_budget --markdown PATH`."""
    if not path:
        return []
    with open(path) as f:
        table = f.read().strip()
    return ["## Per-call budget of the small calls", "",
            "Where one small call's time goes (`python -m benchmarks.call_budget`, best of 7 loops): "
            "validation (argument checks and backend selection), dispatch (Python between the "
            "checks and the compiled code: views, output allocation, saved state, layer "
            "bookkeeping), numba call (Numba's cost of entering compiled code with these "
            "arguments) and kernel (the compiled work), next to PyTorch CPU's time for the same "
            "call.", "", table, ""]


def render(data, groups, other, png_name, notes=(), call_budget=None):
    tables, worst = analyse(groups)
    lines = ["# numbanorm benchmark results", "",
             "Generated by `benchmarks/report.py` from a pytest-benchmark JSON file "
             "(`python -m pytest benchmarks --benchmark-json=benchmarks/results.json`).", ""]
    lines += machine_lines(data, groups, other) + [f"- Note: {n}" for n in notes] + [""]
    lines += ["## Headline: numbanorm's worst ratios per op", "",
              f"Ratios and GB/s use each benchmark's **{STAT}** time"
              + (" (the machine was shared: interference only adds time, so the minimum is the "
                 "better estimate of each contender's own cost; medians are in the tables)."
                 if STAT == "min" else "."), "",
              f"Targets: every op, forward and backward, within {FLOOR_TARGET}x of the memory "
              "floor and faster than PyTorch (x PyTorch < 1). \"Large shapes\" have at least "
              f"{LARGE:,} elements; the small ones measure per-call overhead.", ""]
    lines += headline(worst) + [""]
    lines += ["How to read the tables: the floor (`benchmarks/floor.py`) runs streaming kernels "
              "that move the op's minimal traffic (training forward 3 passes of x's bytes, "
              "training backward 5, eval forward 2, eval backward 3); GB/s is that traffic "
              "divided by each contender's time. `numpy` is the tests' textbook reference "
              "(tests/reference.py) run on float32; `torch` forwards run under no_grad and "
              "backwards call the aten native backward kernels directly.", ""]
    if png_name:
        lines += [f"![ratio to the memory floor]({png_name})", ""]
    lines += ["## Ops", ""]
    for group, rows in tables:
        lines += group_table(group, rows)
    lines += call_budget_section(call_budget)
    lines += coldstart_table(other.get("coldstart", []))
    lines += trainer_table(other.get("trainer", []))
    return "\n".join(lines) + "\n", worst


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("json", nargs="?", default=os.path.join(os.path.dirname(__file__), "results.json"))
    ap.add_argument("--out-dir", default=os.path.dirname(os.path.abspath(__file__)))
    ap.add_argument("--stat", choices=("median", "min"), default="median",
                    help="statistic for ratios and GB/s (min on a loaded machine)")
    ap.add_argument("--note", action="append", default=[], help="a line added to the header")
    ap.add_argument("--call-budget", help="markdown table from `python -m benchmarks.call_budget "
                    "--markdown FILE`, included as the per-call budget section")
    args = ap.parse_args(argv)
    global STAT
    STAT = args.stat
    data, groups, other = load(args.json)
    if not groups and not other:
        sys.exit(f"{args.json}: no timed benchmarks (was it run with --benchmark-disable?)")
    os.makedirs(args.out_dir, exist_ok=True)
    png = os.path.join(args.out_dir, "RESULTS.png")
    has_png = plot(analyse(groups)[0], png)
    text, worst = render(data, groups, other, "RESULTS.png" if has_png else None,
                         args.note, args.call_budget)
    md = os.path.join(args.out_dir, "RESULTS.md")

    def write(tmp):
        with open(tmp, "w") as f:
            f.write(text)

    atomic_write(md, write)
    print(f"wrote {md}" + (f" and {png}" if has_png else ""))
    for (dev, op, direction), w in worst.items():
        f, t = w["floor"], w["torch"]
        print(f"{dev} {op} {direction}: worst x floor {f[0]:.2f} ({f[1]})" if f else "",
              f"worst x torch {t[0]:.2f} ({t[1]})" if t else "")


if __name__ == "__main__":
    main()
