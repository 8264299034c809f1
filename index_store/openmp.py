"""faiss's OpenMP threads, per calling thread.

Searches run in worker threads beside one another and beside ingest; for small work (one
vector, one query's descriptors against one image's) OpenMP's threads cost more to start and
wake than the work, and only contend with the other workers. A keypoint vote (a query's few
hundred descriptors against every indexed image's) is worth two (VOTE_THREADS)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import faiss

from index_store import search_threads

# As many as a search's other work runs on (index_store/search_threads.py). A query's vote on
# two threads took about half the time of one at 2,000 to 100,000 images (bench/vote_scale.py
# --threads 1,2; BENCHMARKS.md); more would take cores from concurrent searches and ingest.
VOTE_THREADS = search_threads.THREADS


@contextmanager
def omp_threads(count: int) -> Iterator[None]:
    """Run faiss on `count` OpenMP threads from the calling thread (OpenMP's thread count is
    per calling thread)."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(count)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)
