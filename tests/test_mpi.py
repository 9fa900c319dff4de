"""MPI tests: real `mpiexec -n 2` / `-n 3` runs of the workers in tests/mpi_workers/.

They need mpi4py and an `mpiexec` (pip install mpi4py mpich, the `mpi` extra) and skip with that
reason otherwise. Each run has a timeout and is killed (whole process group) when it exceeds it,
so a hang fails the test instead of blocking CI. Workers run with one Numba thread per rank
(2 cores here) and share Numba's on-disk cache, which a single-rank warm-up run fills first so
that ranks do not compile concurrently.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from numbanorm import distributed as D

ROOT = Path(__file__).resolve().parent.parent
WORKERS = Path(__file__).resolve().parent / "mpi_workers"
TIMEOUT = 60  # seconds per mpiexec run (they take a few seconds once Numba's cache is warm)
WARMUP_TIMEOUT = 300  # the first run may compile every kernel


def _find_mpiexec():
    """The mpiexec beside this Python (the mpich wheel puts one in the venv), else on PATH."""
    local = Path(sys.executable).parent / "mpiexec"
    if local.exists():
        return str(local)
    return shutil.which("mpiexec")


MPIEXEC = _find_mpiexec()
try:
    import mpi4py  # noqa: F401  (the package only; MPI itself starts in the workers)

    HAVE_MPI4PY = True
except ImportError:
    HAVE_MPI4PY = False
needs_mpi = pytest.mark.skipif(
    not (HAVE_MPI4PY and MPIEXEC),
    reason="MPI tests need mpi4py and mpiexec: pip install mpi4py mpich (numbanorm[mpi])"
    + ("" if HAVE_MPI4PY else "; mpi4py is not installed")
    + ("" if MPIEXEC else "; no mpiexec found beside python or on PATH"),
)


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["NUMBA_NUM_THREADS"] = "1"  # ranks share 2 cores
    env["OMP_NUM_THREADS"] = env["OPENBLAS_NUM_THREADS"] = env["MKL_NUM_THREADS"] = "1"
    return env


def mpirun(n, script=None, *args, code=None, timeout=TIMEOUT):
    """Run `mpiexec -n n python script args` (a script of tests/mpi_workers), or with code
    `mpiexec -n n python -c code`; returns CompletedProcess (text). A run past `timeout` is
    killed with its whole process group and reported as a hang."""
    program = [str(WORKERS / script)] if code is None else ["-c", code]
    cmd = [MPIEXEC, "-n", str(n), sys.executable, *program, *map(str, args)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{' '.join(cmd[2:])} hung: killed after {timeout}s\nstdout:\n{out}\nstderr:\n{err}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def check_ok(res):
    assert res.returncode == 0, f"exit {res.returncode}\nstdout:\n{res.stdout}\nstderr:\n{res.stderr}"
    return res


@pytest.fixture(scope="module")
def warm(tmp_path_factory):
    """One single-rank run of each worker: compiles (and caches) every kernel they use."""
    d = tmp_path_factory.mktemp("warm")
    check_ok(mpirun(1, "sync_bn.py", "--sizes", "6", "--out", d / "r.json", timeout=WARMUP_TIMEOUT))
    check_ok(mpirun(1, "train.py", "--steps", "1", "--out", d / "t.npz", timeout=WARMUP_TIMEOUT))
    check_ok(mpirun(1, "train.py", "--steps", "1", "--dtype", "float32", "--out", d / "t32.npz",
                    timeout=WARMUP_TIMEOUT))


# ---------------------------------------------------------------- SyncBatchNorm vs one process

TOL = {"float64": 1e-12, "float32": 2e-6}  # times (1 + max |reference|)


def _cuda_usable():
    from numbanorm.cuda_support import cuda_available

    return cuda_available()


@needs_mpi
@pytest.mark.parametrize("device,sizes", [
    ("cpu", "6,6"), ("cpu", "3,8"), ("cpu", "1,4,7"), ("cpu", "5,0,3"), ("cpu", "0,9"),
    pytest.param("cuda", "1,0,6", id="cuda-3ranks-empty"),
], ids=["2ranks-equal", "2ranks-uneven", "3ranks-1-4-7", "3ranks-empty", "2ranks-empty-first", None])
def test_sync_batch_norm_equals_single_process(warm, tmp_path, device, sizes):
    """Two training steps (forward, backward with random dy, running stats) and one eval step of
    nn.SyncBatchNorm on P ranks vs nn.BatchNorm on the concatenated batch in one process (on
    the CPU). device="cuda": the ranks hold device arrays (a GPU, or the CUDA simulator that
    conftest selects when there is none; statistics are staged through the host for MPI)."""
    if device == "cuda" and not _cuda_usable():
        pytest.skip("CUDA (or its simulator) is not usable here")
    out = tmp_path / "result.json"
    check_ok(mpirun(len(sizes.split(",")), "sync_bn.py", "--sizes", sizes, "--device", device,
                    "--out", out, timeout=TIMEOUT if device == "cpu" else 3 * TIMEOUT))
    results = json.loads(out.read_text())
    assert len(results) == 3
    for case, r in results.items():
        tol = TOL["float32" if case.startswith("float32") else "float64"]
        for key in ("y", "dx", "dweight", "dbias", "running_mean", "running_var"):
            assert r[key] <= tol * (1 + r["scale"][key]), (case, key, r[key], r["scale"][key])
        assert r["y_eval"] <= tol * (1 + r["scale"]["y"]), (case, r["y_eval"])
        assert r["ranks_identical"], case
        assert r["num_batches_tracked"] == [2] * len(r["num_batches_tracked"]), case
    print(f"\n{device} {sizes}: " + "; ".join(
        f"{c}: " + " ".join(f"{k}={r[k]:.1e}" for k in ("y", "dx", "dweight", "dbias", "running_mean", "running_var"))
        for c, r in results.items()))


@needs_mpi
def test_one_value_per_channel_raises_on_every_rank(warm):
    """Training with a single value per channel over all ranks is an error on every rank alike
    (the count is global, known after the collective), so no rank is left waiting."""
    code = (
        "import numpy as np\n"
        "from mpi4py import MPI\n"
        "from numbanorm import distributed as D\n"
        "c = MPI.COMM_WORLD\n"
        "x = np.ones((1 if c.rank == 0 else 0, 3))\n"
        "try:\n"
        "    D.sync_batch_norm(x, comm=c)\n"
        "except ValueError as e:\n"
        "    print(f'rank {c.rank}: {e}', flush=True)\n"
        "c.Barrier()\n"
    )
    res = check_ok(mpirun(2, code=code))
    for rank in (0, 1):
        assert f"rank {rank}: Expected more than 1 value per channel" in res.stdout, res.stdout


def test_merge_stats_matches_concatenation():
    """Chan's merge in rank order (no MPI needed) equals the statistics of the concatenation,
    empty parts included."""
    rng = np.random.default_rng(0)
    chunks = [rng.standard_normal((n, 4)) * 3 + 1e4 for n in (0, 1, 5, 0, 12)]
    parts = np.zeros((len(chunks), 3, 4))
    for r, c in enumerate(chunks):
        if len(c):
            parts[r] = [np.full(4, len(c)), c.mean(0), ((c - c.mean(0)) ** 2).sum(0)]
    n, mean, m2 = D.merge_stats(parts)
    whole = np.concatenate(chunks)
    assert n == len(whole)
    np.testing.assert_allclose(mean, whole.mean(0), rtol=1e-15, atol=0)
    np.testing.assert_allclose(m2 / n, whole.var(0), rtol=1e-12)


def test_without_mpi4py_import_works_and_training_says_what_to_install():
    """With mpi4py unimportable: numbanorm imports, SyncBatchNorm in eval mode works (no
    communication), and a training forward raises ImportError naming the packages."""
    code = (
        "import sys\n"
        "sys.modules['mpi4py'] = None  # import mpi4py now raises ImportError\n"
        "import numpy as np\n"
        "import numbanorm\n"
        "from numbanorm import nn\n"
        "m = nn.SyncBatchNorm(3, dtype=np.float64)\n"
        "x = np.arange(12.0).reshape(4, 3)\n"
        "assert np.allclose(m.eval()(x), x / np.sqrt(1 + 1e-5))\n"
        "try:\n"
        "    m.train()(x)\n"
        "except ImportError as e:\n"
        "    print('ImportError:', e)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_env(), capture_output=True,
                         text=True, timeout=TIMEOUT)
    check_ok(res)
    assert "ImportError: numbanorm.distributed needs mpi4py" in res.stdout, res.stdout
    assert "pip install 'numbanorm[mpi]'" in res.stdout


@pytest.mark.parametrize("n,size", [(10, 3), (2, 3), (128, 2), (0, 2)])
def test_shard_range_covers_in_order(n, size):
    blocks = [D.shard_range(n, rank=r, size=size) for r in range(size)]
    assert [i for a, b in blocks for i in range(a, b)] == list(range(n))
    lengths = [b - a for a, b in blocks]
    assert max(lengths) - min(lengths) <= 1


# ---------------------------------------------------------------- data parallel

@needs_mpi
def test_allreduce_gradients_bucketed_and_broadcast(warm):
    res = check_ok(mpirun(3, "grads.py"))
    assert "OK" in res.stdout


@needs_mpi
@pytest.mark.parametrize("dtype,tol", [("float64", 1e-12), ("float32", 2e-5)])
def test_two_ranks_track_one_rank(warm, tmp_path, dtype, tol):
    """SGD on Linear -> (Sync)BatchNorm1d -> ReLU -> Linear: 2 ranks x batch 64 vs 1 rank x 128."""
    one, two = tmp_path / "one" / "ckpt.npz", tmp_path / "two" / "ckpt.npz"
    check_ok(mpirun(1, "train.py", "--global-batch", 128, "--steps", 4, "--dtype", dtype, "--out", one))
    check_ok(mpirun(2, "train.py", "--global-batch", 128, "--steps", 4, "--dtype", dtype, "--out", two))
    a, b = np.load(one), np.load(two)
    assert sorted(a.files) == sorted(b.files)
    assert a["losses"][-1] < a["losses"][0]  # it does train
    worst = {k: float(np.max(np.abs(a[k].astype(np.float64) - b[k]))) for k in a.files}
    print(f"\n{dtype} max |1 rank - 2 ranks|: " + " ".join(f"{k}={v:.1e}" for k, v in worst.items()))
    for k, v in worst.items():
        assert v <= tol * (1 + float(np.max(np.abs(a[k])))), (k, v)
    # rank 0 saved, atomically: the checkpoint and nothing else in the directory
    assert sorted(p.name for p in two.parent.iterdir()) == ["ckpt.npz"]


# ---------------------------------------------------------------- faults

@needs_mpi
def test_raising_rank_aborts_all(warm, tmp_path):
    res = mpirun(2, "fault.py", "raise", tmp_path)
    assert res.returncode != 0
    assert "rank 1 of 2 failed" in res.stderr and "simulated failure on rank 1" in res.stderr, res.stderr
    assert "rank 0 finished" not in res.stdout


@needs_mpi
def test_dying_rank_stops_all(warm, tmp_path):
    res = mpirun(2, "fault.py", "die", tmp_path)
    assert res.returncode != 0
    assert "finished" not in res.stdout


@needs_mpi
def test_failed_save_leaves_no_partial_checkpoint(warm, tmp_path):
    res = mpirun(2, "fault.py", "save", tmp_path)
    assert res.returncode != 0
    assert "rank 0 of 2 failed" in res.stderr and "disk full" in res.stderr, res.stderr
    assert list(tmp_path.iterdir()) == []  # neither checkpoint.npz nor its temp file


# ---------------------------------------------------------------- the demo

@needs_mpi
def test_demo_distributed_tracks_single_process(warm, tmp_path):
    """`mpiexec -n 3 numbanorm-demo --distributed` (batches of 128 split 43/43/42, the last of
    the 300 images 44 split 15/15/14) against one process: the same trained state_dict; rank 0
    alone prints the table and writes the file."""
    common = ["-m", "numbanorm.demo", "--norm", "batch", "--limit-train", "300", "--limit-test", "100",
              "--epochs", "1", "--device", "cpu", "--no-progress", "--seed", "3"]
    one = subprocess.run([sys.executable, *common, "--save", tmp_path / "one" / "m.npz"], cwd=tmp_path,
                         env=_env(), capture_output=True, text=True, timeout=3 * TIMEOUT)
    check_ok(one)
    cmd = [MPIEXEC, "-n", "3", sys.executable, *common, "--distributed", "--save", tmp_path / "three" / "m.npz"]
    three = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=3 * TIMEOUT)
    check_ok(three)
    assert three.stdout.count("total wall time") == 1, three.stdout
    assert "3 MPI ranks" in three.stdout
    assert sorted(p.name for p in (tmp_path / "three").iterdir()) == ["m.npz"]
    a, b = np.load(tmp_path / "one" / "m.npz"), np.load(tmp_path / "three" / "m.npz")
    assert sorted(a.files) == sorted(b.files)
    worst = {k: float(np.max(np.abs(a[k].astype(np.float64) - b[k]))) for k in a.files}
    print("\ndemo max |1 process - 3 ranks|: " + " ".join(f"{k}={v:.1e}" for k, v in worst.items()))
    for k, v in worst.items():
        assert v <= 1e-5 * (1 + float(np.max(np.abs(a[k])))), (k, v)


# ---------------------------------------------------------------- watchdog

WATCHDOG_TIMEOUT = 2.0  # seconds


@needs_mpi
@pytest.mark.parametrize("where", ["forward", "grads", "broadcast", "save"])
def test_stuck_rank_is_aborted_by_the_watchdog(warm, tmp_path, where):
    """One rank stays alive but never enters the collective (it sleeps 120 s); the other waits
    in it. The watchdog must end the job, non-zero for every rank, within the timeout plus a few
    seconds of the moment the waiting rank entered, naming the collective, the rank and the
    time waited."""
    import time

    waiting = 1 if where == "broadcast" else 0  # the root of the broadcast is the stuck one

    start = time.time()
    res = mpirun(2, "stuck.py", where, WATCHDOG_TIMEOUT, tmp_path / "ckpt.npz", timeout=60)
    ended = time.time()
    assert res.returncode != 0, res.stdout + res.stderr
    assert "woke up" not in res.stdout and "finished" not in res.stdout, res.stdout
    entered = float(res.stdout.split(f"rank {waiting} entering")[1].split(" at ")[1].split()[0])
    assert start < entered < ended
    assert ended - entered < WATCHDOG_TIMEOUT + 5, f"the job took {ended - entered:.1f} s after rank 0 entered"
    what = {"forward": "Allgather (SyncBatchNorm forward", "grads": "Allreduce (allreduce_gradients",
            "broadcast": "Bcast (broadcast_parameters", "save": "Barrier (save_on_root"}[where]
    msg = [line for line in res.stderr.splitlines() if f"numbanorm.distributed: rank {waiting} of 2 waited" in line]
    assert msg and what in msg[0] and "aborting all ranks" in msg[0], res.stderr
    waited = float(msg[0].split("waited ")[1].split(" s")[0])
    assert WATCHDOG_TIMEOUT <= waited < WATCHDOG_TIMEOUT + 1
    assert not (tmp_path / "ckpt.npz").exists() or where == "save"


def test_watchdog_timeout_settings(monkeypatch):
    """set_timeout, NUMBANORM_MPI_TIMEOUT and the 300 s default; bad values name the setting."""
    monkeypatch.delenv("NUMBANORM_MPI_TIMEOUT", raising=False)
    D.set_timeout(None)
    assert D.get_timeout() == 300.0
    monkeypatch.setenv("NUMBANORM_MPI_TIMEOUT", "7.5")
    assert D.get_timeout() == 7.5
    D.set_timeout(3)
    try:
        assert D.get_timeout() == 3.0
        for bad in (0, -1, float("nan"), "soon"):
            with pytest.raises(ValueError, match="seconds must be a positive number"):
                D.set_timeout(bad)
        assert D.get_timeout() == 3.0
    finally:
        D.set_timeout(None)
    monkeypatch.setenv("NUMBANORM_MPI_TIMEOUT", "never")
    with pytest.raises(ValueError, match="NUMBANORM_MPI_TIMEOUT must be a positive number"):
        D.get_timeout()


# ---------------------------------------------------------------- one rank is BatchNorm

@needs_mpi
def test_single_rank_sync_batch_norm_equals_batch_norm(warm):
    """momentum=None, affine=False, track_running_stats=False and eval mode: on one rank
    SyncBatchNorm gives BatchNorm's outputs, gradients, running statistics and counter."""
    res = check_ok(mpirun(1, "single_rank.py"))
    assert "OK" in res.stdout


@needs_mpi
def test_masked_sync_batch_norm_equals_single_process_masked(warm):
    """SyncBatchNorm with each rank's mask (3 ranks, one selecting nothing) against masked
    BatchNorm on the concatenated batch and mask: y, dx, summed dweight, running stats."""
    code = (
        "import numpy as np\n"
        "from mpi4py import MPI\n"
        "from numbanorm import nn\n"
        "c = MPI.COMM_WORLD\n"
        "rng = np.random.default_rng(0)\n"
        "x = 5.0 + rng.standard_normal((9, 3, 4)); dy = rng.standard_normal(x.shape)\n"
        "mask = rng.random((9, 4)) < 0.5; mask[3:5] = False\n"
        "sl = slice(*[(0, 3), (3, 5), (5, 9)][c.rank])\n"
        "sync = nn.SyncBatchNorm(3, comm=c, dtype=np.float64)\n"
        "y = sync(x[sl], mask=mask[sl]); dx = sync.backward(dy[sl])\n"
        "ys, dxs, dws = c.gather(y, 0), c.gather(dx, 0), c.gather(sync.weight.grad, 0)\n"
        "if c.rank == 0:\n"
        "    ref = nn.BatchNorm1d(3, dtype=np.float64)\n"
        "    y0 = ref(x, mask=mask); dx0 = ref.backward(dy)\n"
        "    err = max(np.abs(np.concatenate(ys) - y0).max(), np.abs(np.concatenate(dxs) - dx0).max(),\n"
        "              np.abs(np.sum(dws, 0) - ref.weight.grad).max(),\n"
        "              np.abs(sync.running_var - ref.running_var).max())\n"
        "    print(f'max error {err:.3e}', flush=True)\n"
        "    assert err < 1e-10, err\n"
    )
    res = check_ok(mpirun(3, code=code))
    assert "max error" in res.stdout, res.stdout
