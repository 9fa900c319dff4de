"""Benchmark configuration: quick mode, thread counts, machine description in the JSON.

Quick mode (tiny shapes, each benchmark run once, for CI) is on when pytest-benchmark's
`--benchmark-disable` is given or NUMBANORM_BENCH_QUICK=1 is set (the latter keeps timing on).
"""
import datetime
import os

import numba
import numpy as np
import pytest

from .common import cpu_model, git_revision, quick_mode, torch_version


def pytest_report_header(config):
    mode = "quick (tiny shapes)" if quick_mode(config) else "full"
    return f"numbanorm benchmarks: {mode} mode, {numba.get_num_threads()} threads"


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["numbanorm"] = {
        "cpu_model": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "threads": numba.get_num_threads(),
        "numba": numba.__version__,
        "numpy": np.__version__,
        "torch": torch_version(),
        "loadavg_at_start": list(os.getloadavg()),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "quick": quick_mode(config),
        "git": git_revision(),
    }


@pytest.fixture(scope="session")
def quick(request):
    return quick_mode(request.config)

