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
