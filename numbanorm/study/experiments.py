"""The six experiments of numbanorm-study, each a function (Context) -> section dict:

    {"title", "claim", "setup", "columns": [[header, format], ...], "rows": [[cell, ...], ...],
     "curves": {...what the plot draws...}, "verdict", "reproduced": bool, "status": "ok"}

or {"status": "skipped", "reason": ...} when a layer it needs is missing. A cell is a number
(shown with its column's format) or a label; accuracies are in percent. The verdict is computed
from the rows by the experiment's verdict function (VERDICTS[name](rows)), with the thresholds
named below; "Not reproduced" whenever the numbers do not show the claim.

Every model is numbanorm.training.build_model trained by numbanorm.training.fit: the same
initial weights and batch order for a given --seed, on fixed random subsets of the data.
"""
import dataclasses
import math

import numpy as np

from .. import training

#: Accuracy differences (points) below this count as no difference in the verdicts.
MARGIN = 0.5
#: 'learning-rate': a learning rate is usable when its accuracy is at least this fraction of
#: the best accuracy in the sweep (and the run did not diverge).
USABLE_FRACTION = 0.9
#: 'convergence': the test accuracy whose first reaching is counted in steps.
TARGET_ACC = 90.0

LR_MOMENTUM = 0.9  # SGD momentum of every experiment except 'learning-rate' (plain SGD there)

#: Subset sizes and schedules: "full" (minutes on 2 cores) and "quick" (CI).
PROFILES = {
    "full": {
        "convergence": dict(train=6000, test=1000, epochs=2, batch=128, lr=0.01, evals=8),
        "learning-rate": dict(train=3000, test=1000, epochs=1, batch=64, lrs=(0.01, 0.03, 0.1, 0.3, 1.0)),
        "batch-size": dict(train=1000, test=1000, epochs=3, batches=(2, 4, 8, 16, 32, 128), base_lr=0.1),
        "train-eval": dict(train=2000, test=1000, epochs=1, batch=32, lr=0.02, evals=8,
                           momenta=(0.01, 0.1, 0.5)),
        "regularization": dict(train=500, test=1000, epochs=15, batch=50, lr=0.02, dropout=0.5),
        "weight-standardization": dict(train=1000, test=1000, epochs=3, batches=(4, 128), base_lr=0.1),
    },
    "quick": {
        "convergence": dict(train=384, test=200, epochs=1, batch=64, lr=0.01, evals=3),
        "learning-rate": dict(train=192, test=200, epochs=1, batch=64, lrs=(0.01, 0.03, 0.1, 0.3, 1.0)),
        "batch-size": dict(train=64, test=200, epochs=1, batches=(2, 4, 8, 16, 32, 128), base_lr=0.1),
        "train-eval": dict(train=192, test=200, epochs=1, batch=32, lr=0.02, evals=2,
                           momenta=(0.01, 0.1, 0.5)),
        "regularization": dict(train=96, test=200, epochs=2, batch=32, lr=0.02, dropout=0.5),
        "weight-standardization": dict(train=64, test=200, epochs=1, batches=(4, 128), base_lr=0.1),
    },
}


@dataclasses.dataclass
class Context:
    """What every experiment runs with: the whole dataset, where and how to train, the profile."""
    data: tuple  # (train_x, train_y, test_x, test_y)
    device: str = "cpu"
    seed: int = 0
    profile: str = "full"
    progress: bool = True
    log: object = print

    def settings(self, name):
        return PROFILES[self.profile][name]

    def subset(self, n_train, n_test):
        """The first n_train / n_test images of one fixed (per seed) shuffle of each split, so
        every class is represented whatever the order of the files."""
        train_x, train_y, test_x, test_y = self.data
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, 2]))
        tr = np.sort(rng.permutation(len(train_x))[:n_train])
        te = np.sort(rng.permutation(len(test_x))[:n_test])
        return (np.ascontiguousarray(train_x[tr]), train_y[tr],
                np.ascontiguousarray(test_x[te]), test_y[te])

    def model(self, norm, **kw):
        x = self.data[0]
        return training.build_model(norm, seed=self.seed, in_channels=x.shape[1],
                                    image_size=x.shape[2], **kw).to(self.device)

    def train(self, model, data, name, epochs, batch_size, lr, momentum=LR_MOMENTUM, on_step=None):
        """fit() with the experiment's schedule; returns the run record ('diverged' set, no
        exception, when the loss became NaN/inf)."""
        config = training.TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, momentum=momentum,
                                      seed=self.seed, progress=self.progress)
        try:
            with np.errstate(over="ignore", invalid="ignore"):
                return training.fit(model, data, config, name=name, device=self.device,
                                    log=self.log, on_step=on_step)
        except training.Diverged as e:
            self.log(f"  {e}")
            return e.run


def pct(x):
    return 100.0 * x


def eval_metrics(model, x, y, device, batch_size=500, train_mode=False):
    """(accuracy %, mean cross-entropy) of model on (x, y). train_mode=True uses batch
    statistics (batches of batch_size) and restores every parameter and running statistic
    afterwards, so the measurement changes nothing."""
    state = model.state_dict() if train_mode else None
    model.train(train_mode)
    correct, loss_sum = 0, 0.0
    try:
        with np.errstate(over="ignore", invalid="ignore"):
            for start in range(0, len(x), batch_size):
                logits = training.host(model.forward(training.to_device(
                    np.ascontiguousarray(x[start:start + batch_size]), device))).astype(np.float64)
                yb = y[start:start + batch_size]
                correct += int((logits.argmax(axis=1) == yb).sum())
                z = logits - logits.max(axis=1, keepdims=True)
                logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
                loss_sum += float(-logp[np.arange(len(yb)), yb].sum())
    finally:
        model.train(True)
        if state is not None:
            model.load_state_dict(state)
    return pct(correct / max(len(x), 1)), loss_sum / max(len(x), 1)


def checkpoints(total_steps, count):
    """count training steps spread evenly over 1..total_steps (the last one included)."""
    return sorted({max(1, round(total_steps * (i + 1) / count)) for i in range(count)})


def final_acc(run):
    """Test accuracy (%) after the last epoch, or None when the run diverged."""
    return None if run["diverged"] or not run["epochs"] else pct(run["epochs"][-1]["test_acc"])


def _fmt_pts(x):
    return f"{x:+.1f} points"


def _missing_layers(*names):
    """The names in `names` that numbanorm.nn does not have (yet)."""
    from .. import nn

    return [n for n in names if not hasattr(nn, n)]


def _skipped(title, claim, missing):
    return {"title": title, "claim": claim, "status": "skipped",
            "reason": f"skipped: needs {', '.join('nn.' + m for m in missing)} (issue 12, the variants)"}


# ---------------------------------------------------------------- 1. convergence

CONVERGENCE_NORMS = ("none", "batch", "layer", "group", "instance")


def convergence(ctx):
    s = ctx.settings("convergence")
    data = ctx.subset(s["train"], s["test"])
    total = math.ceil(s["train"] / s["batch"]) * s["epochs"]
    marks = checkpoints(total, s["evals"])
    rows, curves = [], {}
    for norm in CONVERGENCE_NORMS:
        accs = []

        def on_step(step, loss, model):
            if step in marks:
                accs.append([step, eval_metrics(model, data[2], data[3], ctx.device)[0]])

        run = ctx.train(ctx.model(norm), data, norm, s["epochs"], s["batch"], s["lr"], on_step=on_step)
        losses = run["step_losses"]
        tail = losses[-max(1, len(losses) // 10):]
        reach = next((st for st, a in accs if a >= TARGET_ACC), None)
        fin = final_acc(run)
        rows.append([norm, float(np.mean(tail)) if tail else "diverged",
                     float(np.mean([a for _, a in accs])) if accs else "diverged",
                     fin if fin is not None else "diverged", reach if reach is not None else "not reached"])
        curves[norm] = {"step_losses": losses, "test_acc": accs}
    return {
        "title": "Convergence: does a norm speed up training and raise accuracy?",
        "claim": "BatchNorm speeds up convergence and raises accuracy (Ioffe & Szegedy 2015, MNIST); "
                 "LayerNorm, GroupNorm and InstanceNorm are its batch-independent relatives.",
        "setup": f"{s['train']:,} training / {s['test']:,} test images, batch {s['batch']}, SGD lr "
                 f"{s['lr']} momentum {LR_MOMENTUM}, {s['epochs']} epoch(s) = {total} steps; test "
                 f"accuracy (eval mode) at {len(marks)} evenly spaced steps.",
        "columns": [["norm", "s"], ["final train loss (last 10% of steps)", ".4f"],
                    ["mean test acc over training (%)", ".2f"], ["final test acc (%)", ".2f"],
                    [f"steps to {TARGET_ACC:g}% test acc", "d"]],
        "rows": rows, "curves": curves,
    }


def convergence_verdict(rows):
    by = {r[0]: r for r in rows}
    b, n = by["batch"], by["none"]
    if not all(isinstance(v, float) for v in (b[2], b[3], n[2], n[3])):
        return False, "Not reproduced: a run diverged (see the table)."
    speed, final = b[2] - n[2], b[3] - n[3]
    best = max((r for r in rows if isinstance(r[3], float)), key=lambda r: r[3])
    ok = speed >= MARGIN and final >= MARGIN
    head = "Reproduced" if ok else "Not reproduced"
    return ok, (f"{head}: BatchNorm vs none: mean test accuracy over training {_fmt_pts(speed)}, final "
                f"test accuracy {_fmt_pts(final)} (both must be >= +{MARGIN}); best final: "
                f"{best[0]} ({best[3]:.2f}%).")


# ---------------------------------------------------------------- 2. learning rate

def learning_rate(ctx):
    s = ctx.settings("learning-rate")
    data = ctx.subset(s["train"], s["test"])
    rows, curves = [], {"lrs": list(s["lrs"])}
    for norm in ("batch", "none"):
        accs = []
        for lr in s["lrs"]:
            run = ctx.train(ctx.model(norm), data, f"{norm} lr={lr:g}", s["epochs"], s["batch"], lr,
                            momentum=0.0)
            fin = final_acc(run)
            accs.append(fin)
            rows.append([norm, lr, fin if fin is not None else "diverged"])
        curves[norm] = accs
    return {
        "title": "Learning rate: does BatchNorm tolerate larger learning rates?",
        "claim": "BatchNorm allows much higher learning rates without divergence (Ioffe & Szegedy 2015).",
        "setup": f"{s['train']:,} training / {s['test']:,} test images, batch {s['batch']}, plain SGD "
                 f"(no momentum, so lr is the step size), {s['epochs']} epoch(s) at each lr; a NaN/inf "
                 f"loss stops a run ('diverged'). The norms follow the two convolutions only: the two "
                 f"Linear layers are unnormalized in both models.",
        "columns": [["norm", "s"], ["lr", "g"], ["final test acc (%)", ".2f"]],
        "rows": rows, "curves": curves,
    }


def learning_rate_verdict(rows):
    accs = [r[2] for r in rows if isinstance(r[2], float)]
    if not accs:
        return False, "Not reproduced: every run diverged."
    bar = USABLE_FRACTION * max(accs)

    def largest_usable(norm):
        usable = [r[1] for r in rows if r[0] == norm and isinstance(r[2], float) and r[2] >= bar]
        return max(usable) if usable else None

    b, n = largest_usable("batch"), largest_usable("none")
    ok = b is not None and (n is None or b > n)
    show = lambda v: "no lr" if v is None else f"lr {v:g}"  # noqa: E731
    return ok, (f"{'Reproduced' if ok else 'Not reproduced'}: the largest usable learning rate "
                f"(accuracy >= {USABLE_FRACTION:g} x the sweep's best, {bar:.1f}%) is {show(b)} with "
                f"BatchNorm and {show(n)} without a norm (BatchNorm's must be larger).")


# ---------------------------------------------------------------- 3. batch size

BATCH_SIZE_NORMS = ("batch", "group", "renorm", "layer")


def _batch_sweep(ctx, s, data, label, make_model, rows):
    """Train a fresh make_model() at each batch size of s["batches"] with lr = s["base_lr"] *
    batch / 128; appends [label, batch, lr, steps, final test acc or "diverged"] to rows and
    returns the final accuracies (None where diverged)."""
    accs = []
    for bs in s["batches"]:
        lr = s["base_lr"] * bs / 128
        run = ctx.train(make_model(), data, f"{label} batch {bs}", s["epochs"], bs, lr)
        fin = final_acc(run)
        accs.append(fin)
        rows.append([label, bs, lr, len(run["step_losses"]), fin if fin is not None else "diverged"])
    return accs


def batch_size(ctx):
    title = "Batch size: is BatchNorm weak at small batches, where GroupNorm/LayerNorm/BatchRenorm do better?"
    claim = ("BatchNorm's error grows as the batch shrinks; GroupNorm (Wu & He 2018), LayerNorm and "
             "Batch Renormalization (Ioffe 2017) depend less or not at all on the batch.")
    missing = _missing_layers("BatchRenorm2d")
    if missing:
        return _skipped(title, claim, missing)
    s = ctx.settings("batch-size")
    data = ctx.subset(s["train"], s["test"])
    rows, curves = [], {"batches": list(s["batches"])}
    for norm in BATCH_SIZE_NORMS:
        curves[norm] = _batch_sweep(ctx, s, data, norm, lambda: ctx.model(norm), rows)
    return {
        "title": title, "claim": claim,
        "setup": f"{s['train']:,} training / {s['test']:,} test images, {s['epochs']} epoch(s) at every "
                 f"batch size, SGD momentum {LR_MOMENTUM}, lr = {s['base_lr']} x batch / 128 (linear "
                 f"scaling), so large batches take few steps; test accuracy in eval mode (running "
                 f"statistics for BatchNorm/BatchRenorm).",
        "columns": [["norm", "s"], ["batch", "d"], ["lr", ".5g"], ["steps", "d"],
                    ["test acc, eval mode (%)", ".2f"]],
        "rows": rows, "curves": curves,
    }


def batch_size_verdict(rows):
    smallest = min(r[1] for r in rows)
    at = {r[0]: r[-1] for r in rows if r[1] == smallest}
    bn = at.get("batch")
    others = {k: v for k, v in at.items() if k != "batch" and isinstance(v, float)}
    if not others:
        return False, f"Not reproduced: every alternative diverged at batch {smallest}."
    best = max(others, key=others.get)
    bn_v = bn if isinstance(bn, float) else 0.0
    lead = others[best] - bn_v
    ok = lead >= MARGIN
    names = {"group": "GroupNorm", "layer": "LayerNorm", "renorm": "BatchRenorm"}
    parts = ", ".join(f"{names[k]} {_fmt_pts(v - bn_v)}" for k, v in others.items())
    return ok, (f"{'Reproduced' if ok else 'Not reproduced'}: at batch {smallest}, {names[best]} beats "
                f"BatchNorm{' (diverged)' if not isinstance(bn, float) else ''} by {lead:.1f} points "
                f"({others[best]:.2f}% vs {bn_v:.2f}%; vs BatchNorm: {parts}; must be >= {MARGIN}).")


# ---------------------------------------------------------------- 4. train / eval gap

def _first_batchnorm_stats_gap(model, x, device):
    """How far the first BatchNorm's running statistics are from its input's statistics over x
    (the whole-set batch statistics): mean over channels of |running_mean - mean| / std and of
    |running_var / var - 1|, summed."""
    layers = list(model)
    h = training.to_device(np.ascontiguousarray(x), device)
    model.eval()
    try:
        i = 0
        while not hasattr(layers[i], "running_mean"):
            h = layers[i].forward(h)
            i += 1
    finally:
        model.train()
    h = training.host(h).astype(np.float64)
    mean, var = h.mean(axis=(0, 2, 3)), h.var(axis=(0, 2, 3))
    bn = layers[i]
    rm, rv = training.host(bn.running_mean).astype(np.float64), training.host(bn.running_var).astype(np.float64)
    std = np.sqrt(var + bn.eps)
    return float(np.mean(np.abs(rm - mean) / std) + np.mean(np.abs(rv / (var + bn.eps) - 1.0)))


def train_eval(ctx):
    s = ctx.settings("train-eval")
    data = ctx.subset(s["train"], s["test"])
    total = math.ceil(s["train"] / s["batch"]) * s["epochs"]
    marks = checkpoints(total, s["evals"])
    probe = data[0][:500]
    rows, curves = [], {}
    for m in s["momenta"]:
        points = []

        def on_step(step, loss, model):
            if step in marks:
                acc_eval = eval_metrics(model, data[2], data[3], ctx.device)[0]
                acc_batch = eval_metrics(model, data[2], data[3], ctx.device, batch_size=s["batch"],
                                         train_mode=True)[0]
                points.append([step, _first_batchnorm_stats_gap(model, probe, ctx.device), acc_batch, acc_eval])

        ctx.train(ctx.model("batch", momentum=m), data, f"batch momentum={m:g}", s["epochs"], s["batch"],
                  s["lr"], on_step=on_step)
        if not points:
            rows.append([m, "diverged", "diverged", "diverged", "diverged", "diverged"])
            continue
        _, gap, acc_b, acc_e = points[-1]
        rows.append([m, gap, float(np.mean([p[1] for p in points])), acc_b, acc_e, acc_b - acc_e])
        curves[f"{m:g}"] = points
    return {
        "title": "Train/eval: batch statistics against running statistics, and the momentum",
        "claim": "In training BatchNorm normalizes with the batch's statistics, in eval mode with running "
                 "averages; the momentum of those averages sets how far they lag behind (small momentum) "
                 "or how noisy they are (large momentum).",
        "setup": f"BatchNorm model, {s['train']:,} training / {s['test']:,} test images, batch {s['batch']}, "
                 f"SGD lr {s['lr']} momentum {LR_MOMENTUM}, {total} steps, at {len(marks)} checkpoints: the "
                 f"first BatchNorm's statistics gap (|running mean - mean| / std + |running var / var - 1|, "
                 f"channel means, against the statistics of 500 training images) and the test accuracy "
                 f"with batch statistics (batches of {s['batch']}) and with running statistics. The "
                 f"momentum changes only the running statistics, so the runs train the same weights.",
        "columns": [["momentum", "g"], ["final stats gap", ".4f"], ["mean stats gap over training", ".4f"],
                    ["test acc, batch stats (%)", ".2f"], ["test acc, running stats (%)", ".2f"],
                    ["accuracy gap (points)", ".2f"]],
        "rows": rows, "curves": curves,
    }


def train_eval_verdict(rows):
    by = {r[0]: r for r in rows if isinstance(r[1], float)}
    if len(by) < 2:
        return False, "Not reproduced: runs diverged."
    ms = sorted(by)
    slow, mid = by[ms[0]], by[ms[1]]
    ok = slow[2] > mid[2]
    best = min(by.values(), key=lambda r: r[1])
    return ok, (f"{'Reproduced' if ok else 'Not reproduced'}: with momentum {ms[0]:g} the running "
                f"statistics lag: mean stats gap {slow[2]:.3f} vs {mid[2]:.3f} at {ms[1]:g}, accuracy gap "
                f"(batch - running stats) {slow[5]:+.2f} vs {mid[5]:+.2f} points; the smallest final "
                f"gap is at momentum {best[0]:g} ({best[1]:.3f}).")


# ---------------------------------------------------------------- 5. regularization

REGULARIZATION_RUNS = (("none", 0.0), ("none", "dropout"), ("batch", 0.0), ("batch", "dropout"))


def regularization(ctx):
    s = ctx.settings("regularization")
    data = ctx.subset(s["train"], s["test"])
    rows, curves = [], {}
    for norm, drop in REGULARIZATION_RUNS:
        p = s["dropout"] if drop else 0.0
        label = norm + (f" + dropout {p:g}" if p else "")
        model = ctx.model(norm, dropout=p)
        run = ctx.train(model, data, label, s["epochs"], s["batch"], s["lr"])
        if run["diverged"]:
            rows.append([label] + ["diverged"] * 5)
            continue
        tr_acc, tr_loss = eval_metrics(model, data[0], data[1], ctx.device)
        te_acc, te_loss = eval_metrics(model, data[2], data[3], ctx.device)
        rows.append([label, tr_acc, te_acc, tr_acc - te_acc, tr_loss, te_loss - tr_loss])
        curves[label] = [pct(e["test_acc"]) for e in run["epochs"]]
    return {
        "title": "Regularization: does BatchNorm's batch noise reduce overfitting?",
        "claim": "BatchNorm regularizes through the noise of batch statistics; in some cases it removes "
                 "the need for dropout (Ioffe & Szegedy 2015).",
        "setup": f"A small training set to overfit: {s['train']:,} training / {s['test']:,} test images, "
                 f"batch {s['batch']}, SGD lr {s['lr']} momentum {LR_MOMENTUM}, {s['epochs']} epochs; dropout "
                 f"p={s['dropout']} before the last Linear. Train and test figures in eval mode.",
        "columns": [["model", "s"], ["train acc (%)", ".2f"], ["test acc (%)", ".2f"],
                    ["train - test acc (points)", ".2f"], ["train loss", ".4f"],
                    ["test - train loss", ".4f"]],
        "rows": rows, "curves": curves,
    }


def regularization_verdict(rows):
    by = {r[0]: r for r in rows if isinstance(r[1], float)}
    if "none" not in by or "batch" not in by:
        return False, "Not reproduced: a run diverged."
    gap_none, gap_bn = by["none"][3], by["batch"][3]
    ok = gap_none - gap_bn >= MARGIN
    extra = ""
    drop = [k for k in by if k.startswith("batch +")]
    if drop:
        extra = f"; dropout on top of BatchNorm changes its gap by {by[drop[0]][3] - gap_bn:+.1f} points"
    return ok, (f"{'Reproduced' if ok else 'Not reproduced'}: train - test accuracy gap {gap_bn:.2f} points "
                f"with BatchNorm vs {gap_none:.2f} without a norm (must be smaller by >= {MARGIN}){extra}.")


# ---------------------------------------------------------------- 6. weight standardization

WS_RUNS = (("StdConv2d + GroupNorm", "group", "StdConv2d"), ("Conv2d + GroupNorm", "group", "Conv2d"),
           ("Conv2d + BatchNorm", "batch", "Conv2d"))


def weight_standardization(ctx):
    title = "Weight standardization: does StdConv2d + GroupNorm help, at small and large batches?"
    claim = ("Weight Standardization with GroupNorm matches or beats BatchNorm, also at micro-batches "
             "(Qiao et al. 2019).")
    missing = _missing_layers("StdConv2d")
    if missing:
        return _skipped(title, claim, missing)
    from .. import nn

    s = ctx.settings("weight-standardization")
    data = ctx.subset(s["train"], s["test"])
    rows, curves = [], {"batches": list(s["batches"])}
    for label, norm, conv in WS_RUNS:
        curves[label] = _batch_sweep(ctx, s, data, label,
                                     lambda: ctx.model(norm, conv=getattr(nn, conv)), rows)
    return {
        "title": title, "claim": claim,
        "setup": f"{s['train']:,} training / {s['test']:,} test images, {s['epochs']} epoch(s), SGD momentum "
                 f"{LR_MOMENTUM}, lr = {s['base_lr']} x batch / 128; test accuracy in eval mode.",
        "columns": [["model", "s"], ["batch", "d"], ["lr", ".5g"], ["steps", "d"], ["test acc (%)", ".2f"]],
        "rows": rows, "curves": curves,
    }


def weight_standardization_verdict(rows):
    acc = {(r[0], r[1]): (r[-1] if isinstance(r[-1], float) else 0.0) for r in rows}
    batches = sorted({r[1] for r in rows})
    diffs = [acc[("StdConv2d + GroupNorm", b)] - acc[("Conv2d + GroupNorm", b)] for b in batches]
    vs_bn = [acc[("StdConv2d + GroupNorm", b)] - acc[("Conv2d + BatchNorm", b)] for b in batches]
    ok = float(np.mean(diffs)) >= MARGIN
    per = ", ".join(f"batch {b}: {d:+.1f} vs GroupNorm, {v:+.1f} vs BatchNorm" for b, d, v in zip(batches, diffs, vs_bn))
    return ok, (f"{'Reproduced' if ok else 'Not reproduced'}: StdConv2d + GroupNorm against Conv2d + GroupNorm "
                f"averages {float(np.mean(diffs)):+.1f} points (must be >= +{MARGIN}); {per}.")


# ---------------------------------------------------------------- registry

EXPERIMENTS = {
    "convergence": convergence,
    "learning-rate": learning_rate,
    "batch-size": batch_size,
    "train-eval": train_eval,
    "regularization": regularization,
    "weight-standardization": weight_standardization,
}

VERDICTS = {
    "convergence": convergence_verdict,
    "learning-rate": learning_rate_verdict,
    "batch-size": batch_size_verdict,
    "train-eval": train_eval_verdict,
    "regularization": regularization_verdict,
    "weight-standardization": weight_standardization_verdict,
}


def run_experiment(name, ctx):
    """Run one experiment and attach its verdict (computed from its rows)."""
    section = EXPERIMENTS[name](ctx)
    if section.get("status") != "skipped":
        section["status"] = "ok"
        section["reproduced"], section["verdict"] = VERDICTS[name](section["rows"])
    return section
