"""Every numbanorm.cuda kernel compiles with NVIDIA's NVVM compiler for the real CUDA target.

The other GPU tests run under Numba's CUDA simulator, which executes kernels as Python and
accepts calls the CUDA target cannot compile (np.exp, Python objects, ...). This test compiles
each kernel, for every argument signature its module declares (KERNEL_SIGNATURES, see
numbanorm/cuda/_common.py), with `numba.cuda.compile_ptx` for compute capability 8.0 and 9.0:
no GPU needed, only the CUDA toolkit wheels (`numba-cuda[cu12]`). The simulator session has no
compile_ptx, so tests/nvvm_compile.py runs in one subprocess per compute capability, in
parallel, with the simulator off and no device visible. That conftest.py checks every kernel
launch of the GPU tests against the same declarations keeps them true.
"""
import json
import os
import subprocess
import sys

import pytest

COMPUTE_CAPABILITIES = ("8.0", "9.0")
TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)


def _real_target_env():
    env = dict(os.environ)
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    env["CUDA_VISIBLE_DEVICES"] = ""  # compile only: never touch a driver or device
    env["NUMBA_DISABLE_ERROR_MESSAGE_HIGHLIGHTING"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
    return env


def _compile_all():
    """{cc: the JSON report of tests/nvvm_compile.py}, the compute capabilities in parallel."""
    script = os.path.join(TESTS, "nvvm_compile.py")
    procs = {cc: subprocess.Popen([sys.executable, script, cc], env=_real_target_env(), cwd=ROOT,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for cc in COMPUTE_CAPABILITIES}
    reports = {}
    for cc, proc in procs.items():
        out, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, f"tests/nvvm_compile.py {cc} exited {proc.returncode}:\n{err[-3000:]}"
        reports[cc] = json.loads(out.strip().splitlines()[-1])
    return reports


def test_every_kernel_compiles_with_nvvm():
    reports = _compile_all()
    missing = [r["missing"] for r in reports.values() if r["nvvm"] is None]
    if missing:
        msg = f"cannot compile for the CUDA target: {missing[0]}; install numba-cuda[cu12]"
        if os.environ.get("CI") == "true":
            pytest.fail(msg + " (CI must compile the kernels)")
        pytest.skip(msg)
    problems = reports[COMPUTE_CAPABILITIES[0]]["problems"]
    assert not problems, "kernels and declarations out of step:\n" + "\n".join(problems)
    failures = [f"{kernel} {sig} [cc {cc}]: {error}"
                for cc, report in reports.items() for kernel, sig, error in report["results"] if error]
    assert not failures, f"{len(failures)} NVVM compile failures:\n" + "\n".join(failures)
    results = [report["results"] for report in reports.values()]
    assert results[0] and all(r == results[0] for r in results), "the compute capabilities compiled different sets"
    kernels = {kernel for kernel, _, _ in results[0]}
    print(f"NVVM {reports[COMPUTE_CAPABILITIES[-1]]['nvvm']}: {len(kernels)} kernels, {len(results[0])} signatures, "
          f"{sum(map(len, results))} compiles for compute capability {', '.join(COMPUTE_CAPABILITIES)}")
