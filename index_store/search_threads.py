"""The threads one search's candidates are aligned and compared on.

A verified search compares several candidates' pixels, each OpenCV and numpy work that mostly
runs without the GIL (warps, ECC, JPEG decoding, array arithmetic). On THREADS
threads two candidates are compared at once (and each half of the candidates' transforms
found on one); the answers are the same (each candidate's work is its own, and what is done
with the results is done in order by the caller: tests/test_verified_copy_search.py). The
time it saves is in BENCHMARKS.md ("Stop 32").
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")

# Two: the dev VM's and the 2 cores; more would only queue behind one another. The
# vote runs on as many OpenMP threads (index_store/openmp.VOTE_THREADS).
THREADS = min(2, os.cpu_count() or 1)

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _workers() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(THREADS, thread_name_prefix="compare")
        return _pool


def in_order(
    work: Callable[[Item], Result],
    items: Sequence[Item],
    enough: Callable[[Item, Result], bool] | None = None,
) -> list[Result]:
    """`[work(item) for item in items]`, on THREADS threads, ending after the first result
    that `enough` (shown the results in the items' order) says is enough: items not started
    by then never are, and the result of any already running is dropped. The caller waits;
    `work` must not call this itself (the workers would wait on themselves)."""
    if THREADS < 2 or len(items) < 2:
        out = []
        for item in items:
            out.append(work(item))
            if enough is not None and enough(item, out[-1]):
                break
        return out
    futures: list[Future[Result]] = [_workers().submit(work, item) for item in items]
    out = []
    try:
        for item, future in zip(items, futures, strict=True):
            out.append(future.result())
            if enough is not None and enough(item, out[-1]):
                break
    finally:
        for future in futures:
            future.cancel()
    return out
