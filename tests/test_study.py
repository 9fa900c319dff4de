"""numbanorm-study: one real --quick run (every experiment, the embedded digits) and the
report's structure; the verdict functions on made-up tables."""
import json
import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from numbanorm import nn
from numbanorm.study import cli, experiments, report

NEEDS = {"batch-size": "BatchRenorm2d", "weight-standardization": "StdConv2d"}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    status = cli.main(["--quick", "--out", str(out), "--no-progress", "--seed", "0"])
    return status, out


def _tables(markdown):
    """name -> (header cells, body rows of cells) of each experiment's table in REPORT.md."""
    sections = re.split(r'\n<a id="([a-z-]+)"></a>\n', markdown)[1:]
    out = {}
    for name, body in zip(sections[::2], sections[1::2]):
        lines = [ln for ln in body.splitlines() if ln.startswith("|")]
        cells = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines]
        out[name] = (cells[0], cells[2:]) if cells else (None, [])
    return out


def test_quick_run_writes_every_section(quick_run):
    status, out = quick_run
    assert status == 0
    doc = json.loads((out / "results.json").read_text())
    text = (out / "REPORT.md").read_text()
    assert list(doc["experiments"]) == list(experiments.EXPERIMENTS)
    assert doc["meta"]["profile"] == "quick" and doc["meta"]["wall_seconds"] > 0
    pngs = []
    for i, (name, sec) in enumerate(doc["experiments"].items(), 1):
        assert f'<a id="{name}"></a>\n## {i}. ' in text
        if name in NEEDS and not hasattr(nn, NEEDS[name]):
            assert sec["status"] == "skipped" and f"nn.{NEEDS[name]}" in sec["reason"]
            assert sec["reason"] in text
            continue
        assert sec["status"] == "ok", name  # runs whenever its layers exist
        assert f"![{name}]({name}.png)" in text
        png = (out / sec["plot"]).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
        pngs.append(sec["plot"])
    # nothing else (no temp files)
    assert sorted(os.listdir(out)) == sorted(["REPORT.md", "results.json"] + pngs)


def test_every_figure_in_the_report_is_a_number_from_the_run(quick_run):
    _, out = quick_run
    doc = json.loads((out / "results.json").read_text())
    tables = _tables((out / "REPORT.md").read_text())
    for name, sec in doc["experiments"].items():
        if sec["status"] != "ok":
            continue
        header, body = tables[name]
        assert header == [c[0] for c in sec["columns"]]
        assert len(body) == len(sec["rows"]) > 0
        for cells, row in zip(body, sec["rows"]):
            for cell, value, (col, fmt) in zip(cells, row, sec["columns"]):
                if isinstance(value, str):  # a label, or 'diverged' / 'not reached'
                    assert cell == value
                    assert fmt == "s" or value in ("diverged", "not reached"), (name, col, value)
                    continue
                shown = float(cell)
                assert math.isfinite(value) and math.isfinite(shown)
                decimals = int(fmt[1]) if fmt.startswith(".") and fmt.endswith("f") else None
                tol = 0.5 * 10.0 ** -decimals + 1e-9 if decimals is not None else 1e-4 * max(abs(value), 1)
                assert abs(shown - value) <= tol, (name, col, cell, value)
                if "acc (%)" in col or col.startswith("test acc") or col.startswith("mean test acc"):
                    assert 0.0 <= value <= 100.0


def test_verdicts_are_computed_from_the_tables(quick_run):
    _, out = quick_run
    doc = json.loads((out / "results.json").read_text())
    text = (out / "REPORT.md").read_text()
    for name, sec in doc["experiments"].items():
        if sec["status"] != "ok":
            continue
        ok, verdict = experiments.VERDICTS[name](sec["rows"])
        assert (ok, verdict) == (sec["reproduced"], sec["verdict"])
        assert verdict.startswith("Reproduced: " if ok else "Not reproduced: ")
        assert f"**Verdict.** {verdict}" in text


def test_figures_agree_across_measurements(quick_run):
    """The last per-step evaluation and fit's end-of-epoch evaluation see the same model."""
    _, out = quick_run
    conv = json.loads((out / "results.json").read_text())["experiments"]["convergence"]
    for row in conv["rows"]:
        curve = conv["curves"][row[0]]["test_acc"]
        assert curve[-1][1] == pytest.approx(row[3], abs=1e-9)
        assert row[2] == pytest.approx(np.mean([a for _, a in curve]))
    # the BatchNorm momentum changes only the running statistics: the same weights, so the same
    # accuracy with batch statistics whatever the momentum
    te = json.loads((out / "results.json").read_text())["experiments"]["train-eval"]
    assert len({row[3] for row in te["rows"]}) == 1


def test_the_quick_run_is_deterministic(quick_run, tmp_path):
    _, out = quick_run
    assert cli.main(["--quick", "--out", str(tmp_path), "--no-progress", "--experiments", "learning-rate"]) == 0
    again = json.loads((tmp_path / "results.json").read_text())["experiments"]["learning-rate"]["rows"]
    assert again == json.loads((out / "results.json").read_text())["experiments"]["learning-rate"]["rows"]


@pytest.mark.parametrize("name, rows, reproduced", [
    ("convergence", [["none", 0.5, 80.0, 90.0, 100], ["batch", 0.3, 85.0, 95.0, 50]], True),
    ("convergence", [["none", 0.5, 85.0, 95.0, 100], ["batch", 0.3, 85.2, 96.0, 50]], False),
    ("convergence", [["none", 0.5, 85.0, 95.0, 100], ["batch", "diverged", "diverged", "diverged", "not reached"]], False),
    ("learning-rate", [["batch", 0.1, 90.0], ["batch", 1.0, 88.0], ["none", 0.1, 91.0], ["none", 1.0, "diverged"]], True),
    ("learning-rate", [["batch", 0.1, 90.0], ["batch", 1.0, 50.0], ["none", 0.1, 91.0], ["none", 1.0, 60.0]], False),
    ("batch-size", [["batch", 2, 0.001, 500, 80.0], ["group", 2, 0.001, 500, 85.0],
                    ["batch", 128, 0.1, 8, 95.0], ["group", 128, 0.1, 8, 94.0]], True),
    ("batch-size", [["batch", 2, 0.001, 500, 85.0], ["group", 2, 0.001, 500, 85.2],
                    ["layer", 2, 0.001, 500, 70.0]], False),
    ("train-eval", [[0.01, 0.5, 0.9, 90.0, 80.0, 10.0], [0.1, 0.05, 0.2, 90.0, 89.0, 1.0],
                    [0.5, 0.06, 0.1, 90.0, 89.5, 0.5]], True),
    ("train-eval", [[0.01, 0.05, 0.1, 90.0, 89.0, 1.0], [0.1, 0.05, 0.2, 90.0, 89.0, 1.0]], False),
    ("regularization", [["none", 100.0, 90.0, 10.0, 0.01, 0.3], ["batch", 100.0, 95.0, 5.0, 0.01, 0.2]], True),
    ("regularization", [["none", 100.0, 95.0, 5.0, 0.01, 0.3], ["batch", 100.0, 95.0, 5.0, 0.01, 0.2]], False),
    ("weight-standardization", [["StdConv2d + GroupNorm", 4, 0.003, 250, 92.0],
                                ["Conv2d + GroupNorm", 4, 0.003, 250, 90.0],
                                ["Conv2d + BatchNorm", 4, 0.003, 250, 88.0]], True),
    ("weight-standardization", [["StdConv2d + GroupNorm", 4, 0.003, 250, 90.0],
                                ["Conv2d + GroupNorm", 4, 0.003, 250, 90.2],
                                ["Conv2d + BatchNorm", 4, 0.003, 250, 88.0]], False),
])
def test_verdict_follows_the_numbers(name, rows, reproduced):
    ok, text = experiments.VERDICTS[name](rows)
    assert ok is reproduced
    assert text.startswith("Reproduced: " if reproduced else "Not reproduced: ")


def test_markdown_table_formats_numbers_and_labels():
    table = report.markdown_table([["norm", "s"], ["acc", ".2f"], ["steps", "d"]],
                                  [["batch", 97.125, 12], ["none", 50.0, "not reached"]])
    assert table.splitlines() == ["| norm | acc | steps |", "|---|---:|---:|",
                                  "| batch | 97.12 | 12 |", "| none | 50.00 | not reached |"]


def test_bad_arguments_exit_with_usage_errors(capsys):
    for argv in (["--experiments", "convergence,bogus"], ["--experiments", ","],
                 ["--dataset", "svhn"], ["--data-dir", "/nowhere"]):
        with pytest.raises(SystemExit) as info:
            cli.parse_args(argv)
        assert info.value.code == 2
    assert "unknown experiment(s) 'bogus'" in capsys.readouterr().err
    assert cli.parse_args(["--experiments", "train-eval,convergence"]).experiments == ["convergence", "train-eval"]


def test_python_dash_m_help():
    out = subprocess.run([sys.executable, "-m", "numbanorm.study", "--help"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0 and "--experiments" in out.stdout and "weight-standardization" in out.stdout


def test_build_model_options_keep_the_initial_weights():
    """Dropout, BatchNorm momentum and the conv class change nothing else in the model."""
    from numbanorm import training

    base = training.build_model("batch", seed=3)
    for model in (training.build_model("batch", seed=3, dropout=0.5),
                  training.build_model("batch", seed=3, momentum=0.01)):
        a, b = base.state_dict(), model.state_dict()
        for key in ("0.weight", "4.weight"):  # the two convolutions
            np.testing.assert_array_equal(a[key], b[key])
        linears = [m.weight.data for m in model if isinstance(m, nn.Linear)]
        for got, want in zip(linears, [m.weight.data for m in base if isinstance(m, nn.Linear)]):
            np.testing.assert_array_equal(got, want)
    dropped = list(training.build_model("none", seed=3, dropout=0.25))
    assert isinstance(dropped[-2], nn.Dropout) and dropped[-2].p == 0.25
    assert [m.momentum for m in training.build_model("batch", momentum=0.5) if isinstance(m, nn.BatchNorm2d)] == [0.5, 0.5]
    with pytest.raises(ValueError, match="multiple of 4"):
        training.build_model("batch", image_size=30)
