"""faiss's OpenMP threads, per calling thread.

Searches run in worker threads beside one another and beside ingest; for small work (one
vector, one query's descriptors against one image's) OpenMP's threads cost more to start and
wake than the work, and only contend with the other workers."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import faiss


@contextmanager
def one_omp_thread() -> Iterator[None]:
    """Run faiss on the calling thread only (OpenMP's thread count is per calling thread)."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)
