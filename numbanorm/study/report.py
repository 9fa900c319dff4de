"""numbanorm-study's outputs, each written atomically: REPORT.md (a header, a summary of the
verdicts, then per experiment its claim, setup, table, plot and verdict), one PNG per
experiment (matplotlib, Agg) and results.json (everything REPORT.md shows, plus the curves).

Every figure in REPORT.md is a cell of results.json's rows shown with its column's format
(format_cell), so the two always agree.
"""
import json
import math

import numpy as np

from .._fileio import atomic_open


def format_cell(value, fmt):
    """A table cell: a number with its column's format, a label as it is."""
    if isinstance(value, str):
        return value
    if fmt == "d":
        return str(int(value))
    return format(value, fmt)


def markdown_table(columns, rows):
    head = "| " + " | ".join(c[0] for c in columns) + " |"
    rule = "|" + "|".join("---" if c[1] == "s" else "---:" for c in columns) + "|"
    body = ["| " + " | ".join(format_cell(v, c[1]) for v, c in zip(row, columns)) + " |" for row in rows]
    return "\n".join([head, rule] + body)


def render(meta, sections):
    """REPORT.md's text from the run's metadata and its sections (name -> section dict)."""
    out = ["# numbanorm-study: normalization claims, reproduced and measured", "",
           f"Command: `{meta['command']}`  ",
           f"Dataset: {meta['dataset']} ({meta['train_images']:,} training / {meta['test_images']:,} test "
           f"images available; each experiment uses the subset its setup names), profile "
           f"{meta['profile']}, seed {meta['seed']}, device {meta['device']}  ",
           f"Wall time: {meta['wall_seconds']:.0f} s on {meta['machine']}  ",
           f"Versions: {meta['versions']}", "",
           "Every number below was measured in this run (results.json holds the same figures and "
           "the curves); each verdict is computed from its table with the thresholds in "
           "numbanorm/study/experiments.py.", "", "## Summary", "",
           "| experiment | verdict |", "|---|---|"]
    for name, sec in sections.items():
        verdict = sec["reason"] if sec["status"] == "skipped" else sec["verdict"]
        out.append(f"| [{name}](#{name}) | {verdict} |")
    for i, (name, sec) in enumerate(sections.items(), 1):
        out += ["", f'<a id="{name}"></a>', f"## {i}. {sec['title']} (`{name}`)", "",
                f"*Claim.* {sec['claim']}", ""]
        if sec["status"] == "skipped":
            out.append(f"**{sec['reason']}**")
            continue
        out += [f"*Setup.* {sec['setup']} ({sec['seconds']:.0f} s)", "",
                markdown_table(sec["columns"], sec["rows"]), "",
                f"![{name}]({sec['plot']})", "", f"**Verdict.** {sec['verdict']}"]
    return "\n".join(out) + "\n"


def write_text(path, text):
    with atomic_open(path, "w") as f:
        f.write(text)


def write_json(path, doc):
    with atomic_open(path, "w") as f:
        json.dump(doc, f, indent=1, allow_nan=False)
        f.write("\n")


# ---------------------------------------------------------------- plots

def _figure(ncols=1, width=6.0):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, 4.0))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, ncols)
    return fig, (list(axes) if ncols > 1 else [axes])


def _nan(values):
    return [math.nan if v is None else v for v in values]


def _smooth(values):
    values = np.asarray(values, dtype=np.float64)
    k = max(1, min(10, len(values) // 20))
    return np.convolve(values, np.ones(k) / k, mode="valid"), k


def plot(name, section, path):
    """Draw the experiment's curves into path (PNG)."""
    c = section["curves"]
    if name == "convergence":
        fig, (ax_l, ax_a) = _figure(2)
        for norm, cur in c.items():
            if cur["step_losses"]:
                sm, k = _smooth(cur["step_losses"])
                ax_l.plot(np.arange(len(sm)) + k, sm, label=norm)
            if cur["test_acc"]:
                ax_a.plot(*zip(*cur["test_acc"]), marker="o", label=norm)
        ax_l.set(xlabel="training step", ylabel="training loss (smoothed)", title="Training loss")
        ax_a.set(xlabel="training step", ylabel="test accuracy (%)", title="Test accuracy (eval mode)")
    elif name in ("learning-rate", "batch-size", "weight-standardization"):
        fig, (ax,) = _figure(1, 6.5)
        xs = c["lrs"] if name == "learning-rate" else c["batches"]
        for label, accs in c.items():
            if label in ("lrs", "batches"):
                continue
            ax.plot(xs, _nan(accs), marker="o", label=label)
            bad = [x for x, a in zip(xs, accs) if a is None]
            if bad:
                ax.plot(bad, [0.0] * len(bad), "x", color=ax.lines[-1].get_color(), markersize=10,
                        label=f"{label}: diverged")
        ax.set_xscale("log", base=10 if name == "learning-rate" else 2)
        ax.set_xticks(xs)
        ax.set_xticklabels([f"{x:g}" for x in xs])
        ax.set(xlabel="learning rate" if name == "learning-rate" else "batch size",
               ylabel="test accuracy (%)", title=section["title"].split(":")[0])
    elif name == "train-eval":
        fig, (ax_g, ax_a) = _figure(2)
        for m, pts in c.items():
            steps = [p[0] for p in pts]
            ax_g.plot(steps, [p[1] for p in pts], marker="o", label=f"momentum {m}")
            ax_a.plot(steps, [p[2] - p[3] for p in pts], marker="o", label=f"momentum {m}")
        ax_g.set(xlabel="training step", ylabel="stats gap", title="Running vs batch statistics (1st BatchNorm)")
        ax_g.set_yscale("log")
        ax_a.set(xlabel="training step", ylabel="points",
                 title="Test accuracy: batch stats - running stats")
        ax_a.axhline(0.0, color="black", linewidth=0.8)
    elif name == "regularization":
        fig, (ax,) = _figure(1, 7.0)
        labels = [r[0] for r in section["rows"] if isinstance(r[1], float)]
        rows = [r for r in section["rows"] if isinstance(r[1], float)]
        x = np.arange(len(rows))
        ax.bar(x - 0.2, [r[1] for r in rows], 0.4, label="train acc")
        ax.bar(x + 0.2, [r[2] for r in rows], 0.4, label="test acc")
        ax.set_xticks(x)
        ax.set_xticklabels(labels)
        lo = min([r[2] for r in rows] + [100.0])
        ax.set_ylim(max(0.0, lo - 10.0), 100.5)
        ax.set(ylabel="accuracy (%), eval mode", title="Train vs test accuracy")
    else:
        raise ValueError(f"no plot for experiment {name!r}")
    for ax in fig.axes:
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=100)
