"""Every service starts through the `lookalike` package, which keeps OpenBLAS to one thread
(its spinning workers took a core from the event loop and the broker: lookalike/__init__.py)."""

from __future__ import annotations

import os
import subprocess
import sys

SHOW = "import lookalike.cli, os; print(os.environ.get('OPENBLAS_NUM_THREADS'))"


def openblas_threads_seen_by_a_service(**env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OPENBLAS_")}
    done = subprocess.run(
        [sys.executable, "-c", SHOW], env={**clean, **env}, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_a_service_runs_openblas_in_one_thread() -> None:
    assert openblas_threads_seen_by_a_service() == "1"


def test_an_operators_openblas_threads_win() -> None:
    assert openblas_threads_seen_by_a_service(OPENBLAS_NUM_THREADS="2") == "2"


def test_a_benchmark_loads_openblas_in_one_thread_too() -> None:
    """A benchmark timing the product's code in its own process runs OpenBLAS as a service
    does: no worker threads beside the main one (bench/__init__.py)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OPENBLAS_")}
    show = "import bench.copy_verify, os; print(len(os.listdir('/proc/self/task')))"
    done = subprocess.run([sys.executable, "-c", show], env=clean, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "1"  # threads of the process: the main one alone
