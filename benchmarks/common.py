"""Helpers shared by the benchmark modules and conftest.py."""
import os
import platform

import numba

QUICK_ENV = "NUMBANORM_BENCH_QUICK"


def quick_mode(config):
    disabled = bool(config.getoption("benchmark_disable", False))
    return disabled or os.environ.get(QUICK_ENV, "0") not in ("", "0")


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_revision():
    """'<short hash>' of the checkout, '+dirty' when numbanorm/ has uncommitted changes; None
    outside a git checkout."""
    import subprocess

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True,
                             text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "numbanorm"], cwd=repo,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (rev + ("+dirty" if dirty else "")) or None


def torch_version():
    try:
        import torch
    except ImportError:
        return None
    return torch.__version__


def info(benchmark, **fields):
    """Fill benchmark.extra_info (the report reads these keys) and the load at that moment."""
    benchmark.extra_info.update(fields)
    benchmark.extra_info["threads"] = numba.get_num_threads()
    benchmark.extra_info["loadavg"] = os.getloadavg()[0]
