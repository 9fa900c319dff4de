"""numbanorm.demo: short real training runs on a slice of the embedded digits (seconds each)."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from numbanorm import demo
from numbanorm.cuda_support import cuda_available

SIMULATOR = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"  # set by conftest.py without a GPU

TINY = ["--limit-train", "256", "--limit-test", "128", "--epochs", "1", "--no-progress"]


@pytest.fixture(scope="module")
def two_norm_run(tmp_path_factory):
    """One run comparing batch and none, with every output written."""
    out = tmp_path_factory.mktemp("demo")
    argv = TINY + ["--norm", "batch", "--norm", "none", "--json", str(out / "runs.json"),
                   "--plot", str(out / "curves.png"), "--save", str(out / "model.npz")]
    status = demo.main(argv)
    return status, out


def test_two_norms_json_plot_and_save(two_norm_run, capsys):
    status, out = two_norm_run
    assert status == 0
    doc = json.loads((out / "runs.json").read_text())
    assert [r["norm"] for r in doc["runs"]] == ["batch", "none"]
    for r in doc["runs"]:
        assert r["diverged"] is None
        (ep,) = r["epochs"]
        assert ep["epoch"] == 1
        assert np.isfinite(ep["train_loss"]) and 0 < ep["train_loss"] < 10
        assert 0.0 <= ep["test_acc"] <= 1.0
        assert ep["seconds"] > 0 and ep["images_per_second"] == pytest.approx(256 / ep["seconds"])
    # the PNG is a real image
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert os.path.getsize(out / "curves.png") > 10_000
    # no temp files left behind
    assert sorted(os.listdir(out)) == ["curves.png", "model-batch.npz", "model-none.npz", "runs.json"]


def test_saved_state_dict_reproduces_the_reported_accuracy(two_norm_run):
    from numbanorm import datasets

    _, out = two_norm_run
    doc = json.loads((out / "runs.json").read_text())
    _, _, test_x, test_y = datasets.load_digits()
    for run in doc["runs"]:
        model = demo.build_model(run["norm"], seed=12345)  # other initial weights
        with np.load(out / f"model-{run['norm']}.npz") as z:
            model.load_state_dict({k: z[k] for k in z.files})
        acc, finite = demo.evaluate(model, test_x[:128], test_y[:128], "cpu")
        assert finite
        assert acc == run["epochs"][0]["test_acc"]


def test_runs_share_init_and_batch_order(two_norm_run):
    """The 'none' run alone gives the same figures as inside the two-norm run (same seed)."""
    _, out = two_norm_run
    first = json.loads((out / "runs.json").read_text())["runs"][1]
    assert demo.main(TINY + ["--norm", "none", "--json", str(out / "alone.json")]) == 0
    alone = json.loads((out / "alone.json").read_text())["runs"][0]
    assert alone["epochs"][0]["train_loss"] == first["epochs"][0]["train_loss"]
    assert alone["epochs"][0]["test_acc"] == first["epochs"][0]["test_acc"]
    os.remove(out / "alone.json")


def test_divergence_stops_with_a_clear_message(tmp_path, capsys):
    argv = ["--limit-train", "640", "--limit-test", "64", "--batch-size", "64", "--epochs", "3",
            "--no-progress", "--norm", "none", "--lr", "1e6", "--json", str(tmp_path / "r.json")]
    assert demo.main(argv) == 1
    err = capsys.readouterr().err
    assert "[none] diverged" in err and ("nan" in err.lower() or "inf" in err.lower())
    assert "Try a smaller --lr" in err
    run = json.loads((tmp_path / "r.json").read_text())["runs"][0]
    assert run["diverged"]["epoch"] == 1 and run["diverged"]["step"] < 10  # stopped in epoch 1
    assert run["epochs"] == []


@pytest.mark.parametrize("given, want", [
    (["--norm", "batch,group", "--norm", "layer"], ["batch", "group", "layer"]),
    (["--norm", "instance, none,instance"], ["instance", "none"]),
    ([], ["batch", "none"]),
])
def test_norm_lists(given, want):
    assert demo.parse_args(given).norms == want


def test_bad_arguments_exit_with_usage_errors(capsys):
    for argv in (["--norm", "batch,weight"], ["--epochs", "0"], ["--lr", "-1"], ["--download"]):
        with pytest.raises(SystemExit) as info:
            demo.parse_args(argv)
        assert info.value.code == 2
    assert "unknown norm 'weight'" in capsys.readouterr().err


def test_lr_defaults_follow_the_optimizer():
    assert demo.parse_args([]).lr == 0.01
    assert demo.parse_args(["--optimizer", "adam"]).lr == 0.001
    assert demo.parse_args(["--optimizer", "adam", "--lr", "0.01"]).lr == 0.01


def test_every_norm_builds_the_reference_model():
    import numbanorm.nn as nn

    kinds = {"batch": nn.BatchNorm2d, "layer": nn.GroupNorm, "group": nn.GroupNorm,
             "instance": nn.InstanceNorm2d}
    weights = None
    for norm in demo.NORMS:
        model = demo.build_model(norm, seed=0)
        layers = list(model)
        convs = [m for m in layers if isinstance(m, nn.Conv2d)]
        assert [(c.in_channels, c.out_channels) for c in convs] == [(1, 32), (32, 64)]
        assert [(m.in_features, m.out_features) for m in layers if isinstance(m, nn.Linear)] == [(3136, 128), (128, 10)]
        if norm == "none":
            assert all(c.bias is not None for c in convs) and len(layers) == 10
        else:
            norms = [m for m in layers if isinstance(m, kinds[norm])]
            assert len(norms) == 2 and all(c.bias is None for c in convs) and len(layers) == 12
            if norm == "layer":
                assert [m.num_groups for m in norms] == [1, 1]
            if norm == "group":
                assert [m.num_groups for m in norms] == [demo.GROUPS, demo.GROUPS]
            if norm == "instance":
                assert all(m.affine for m in norms)
        w = [convs[0].weight.data, convs[1].weight.data]
        if weights is not None:  # the same initial conv weights whatever the norm
            np.testing.assert_array_equal(w[0], weights[0])
            np.testing.assert_array_equal(w[1], weights[1])
        weights = w


def test_runs_without_matplotlib_unless_plot_is_asked(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None if name == "matplotlib" else object())
    with pytest.raises(SystemExit) as info:
        demo.parse_args(["--plot", str(tmp_path / "p.png")])
    assert info.value.code == 2 and "matplotlib" in capsys.readouterr().err
    argv = ["--limit-train", "64", "--limit-test", "32", "--epochs", "1", "--no-progress", "--norm", "group"]
    assert demo.main(argv) == 0
    assert "group" in capsys.readouterr().out


def test_device_choice(monkeypatch):
    if SIMULATOR:  # auto never picks the (very slow) simulator
        assert demo.resolve_device("auto") == "cpu"
    monkeypatch.setattr("numbanorm.cuda_support.cuda_available", lambda: False)
    assert demo.resolve_device("auto") == "cpu"
    with pytest.raises(SystemExit, match="no usable GPU"):
        demo.resolve_device("cuda")


@pytest.mark.skipif(SIMULATOR or not cuda_available(),
                    reason="needs a real GPU: under the CUDA simulator (one Python thread per CUDA "
                           "thread) even one batch of this CNN takes minutes")
def test_gpu_run_matches_cpu(tmp_path):
    argv = TINY + ["--norm", "batch", "--device", "cuda", "--json", str(tmp_path / "gpu.json")]
    assert demo.main(argv) == 0
    assert demo.main(TINY + ["--norm", "batch", "--device", "cpu", "--json", str(tmp_path / "cpu.json")]) == 0
    gpu = json.loads((tmp_path / "gpu.json").read_text())
    cpu = json.loads((tmp_path / "cpu.json").read_text())
    assert gpu["device"] == "cuda"
    assert gpu["runs"][0]["epochs"][0]["train_loss"] == pytest.approx(cpu["runs"][0]["epochs"][0]["train_loss"], rel=1e-3)


@pytest.mark.skipif(shutil.which("numbanorm-demo") is None, reason="package not installed (pip install -e .)")
def test_console_script_help():
    out = subprocess.run(["numbanorm-demo", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "GroupNorm(1, C)" in out.stdout


def test_python_dash_m_help():
    out = subprocess.run([sys.executable, "-m", "numbanorm.demo", "--help"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0 and "--limit-train" in out.stdout


# ---------------------------------------------------------------- it learns; honest messages

def test_training_lowers_the_loss_and_beats_chance():
    """12 steps of batch 16 with BatchNorm: the last steps' loss is well below the first
    steps' (which start near chance, ln 10 = 2.3) and the test accuracy far above chance (10%)."""
    run, _ = demo.train_one("batch", _data(192, 128), demo.parse_args(
        ["--batch-size", "16", "--epochs", "1", "--no-progress"]), "cpu", lambda msg: None)
    losses = run["step_losses"]
    assert len(losses) == 12
    assert np.mean(losses[:3]) > 1.8
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3]), losses
    assert run["epochs"][0]["test_acc"] > 0.3, run["epochs"][0]


def _data(n_train, n_test):
    from numbanorm import datasets

    tx, ty, vx, vy = datasets.load_digits()
    return tx[:n_train], ty[:n_train], vx[:n_test], vy[:n_test]


def test_compile_message_only_when_numba_compiles(capsys):
    """With every kernel already compiled (a second run in this process) the demo says nothing
    about compiling; compile_watch counts real compilations (a fresh njit function)."""
    argv = ["--limit-train", "64", "--limit-test", "32", "--epochs", "1", "--no-progress", "--norm", "batch"]
    assert demo.main(argv) == 0
    capsys.readouterr()
    assert demo.main(argv) == 0
    out = capsys.readouterr().out
    assert "compil" not in out.lower(), out

    from numba import njit
    from numba.core import event

    calls = []
    watch = demo.compile_watch(lambda: calls.append(1))

    @njit
    def fresh(a):
        return a + 1

    with event.install_listener("numba:compile", watch):
        fresh(1)
        fresh(2)  # no new compilation
    assert watch.count == 1 and watch.seconds > 0 and calls == [1]


def test_json_records_versions_and_machine(two_norm_run):
    import numba

    _, out = two_norm_run
    env = json.loads((out / "runs.json").read_text())["environment"]
    assert env["python"] == ".".join(map(str, sys.version_info[:3]))
    assert env["numpy"] == np.__version__ and env["numba"] == numba.__version__
    assert env["blas"] and env["machine"] and env["cpu_count"] >= 1


def test_committed_demo_json_records_versions_and_machine():
    from pathlib import Path

    doc = json.loads((Path(__file__).resolve().parent.parent / "docs" / "demo.json").read_text())
    env = doc["environment"]
    for key in ("python", "numpy", "numba", "blas", "machine", "cpu_count"):
        assert env[key], key


@pytest.mark.parametrize("epochs", [1, 3])
def test_plot_has_integer_ticks_and_readable_single_epoch(epochs):
    """One epoch: both panels per training step (a curve, not a column of dots); several:
    per epoch, with integer ticks."""
    steps = 12
    rng = np.random.default_rng(0)
    run = {"norm": "batch", "steps_per_epoch": steps, "diverged": None,
           "step_losses": list(2.3 * np.exp(-np.arange(steps * epochs) / 10)),
           "step_accs": list(rng.uniform(0, 1, steps * epochs)),
           "epochs": [{"epoch": e, "test_acc": 0.5 + 0.1 * e} for e in range(1, epochs + 1)]}
    fig = demo.plot_figure([run])
    ax_loss, ax_acc = fig.axes
    for ax in (ax_loss, ax_acc):
        assert ax.get_xlabel() == ("training step" if epochs == 1 else "epoch")
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
    curves = [ln for ln in ax_acc.get_lines() if len(ln.get_xdata()) > 1]
    assert curves, "the accuracy panel needs a per-step curve"
    assert len(ax_loss.get_lines()[0].get_xdata()) > 1


def test_cifar10_run_follows_the_data(tmp_path):
    """--dataset cifar10: 3 input channels and a 64*8*8 Linear, from the data's shape."""
    from tests.test_datasets import write_fake_cifar10

    write_fake_cifar10(tmp_path / "cifar", per_file=8)
    argv = ["--dataset", "cifar10", "--data-dir", str(tmp_path / "cifar"), "--epochs", "1",
            "--batch-size", "8", "--no-progress", "--norm", "group", "--json", str(tmp_path / "r.json")]
    assert demo.main(argv) == 0
    run = json.loads((tmp_path / "r.json").read_text())["runs"][0]
    n = sum(int(np.prod(p.data.shape)) for p in demo.build_model("group", in_channels=3, image_size=32).parameters())
    assert run["parameters"] == n == 3 * 32 * 9 + 2 * 32 + 32 * 64 * 9 + 2 * 64 + 64 * 8 * 8 * 128 + 128 + 128 * 10 + 10
    assert 0.0 <= run["epochs"][0]["test_acc"] <= 1.0
