"""Hold a sample of images out of an approximate engine, so that its recall can be measured on
queries it has not seen.

A graph answers a query that is one of its own nodes far better than a new one: the search
walks to the node and reads its neighbour list, built with a wide beam at insertion. Stored
vectors used as test queries therefore overstate recall (a measured 0.97 where new pictures
got 0.68; BENCHMARKS.md, "CLIP recall"). So one image in `every` (chosen by a hash of its id,
the same in every process and after every restart) is kept out of the graph and served by a
small exact engine beside it; searches merge both, so every image is still found. Those
images are the held-out queries index_store/recall.py measures the graph with.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Self

import numpy as np

from index_store.engines.engine import Engine, Hit, Vectors, ranked
from index_store.engines.exact_float import ExactFloatEngine
from index_store.engines.wrapper import EngineWrapper
from index_store.metric import Metric

SIDE_DIR = "held-out"


def held_out(image_id: str, every: int) -> bool:
    """Whether `image_id` is one of the images kept out of the graph."""
    return zlib.crc32(image_id.encode()) % every == 0


class HoldOut(EngineWrapper):
    def __init__(self, inner: Engine, dim: int, every: int) -> None:
        """`inner`: the approximate engine (with exact distances: re-ranked or float32)."""
        if every < 2:
            raise ValueError(f"hold out one image in 2 or more, not {every}")
        self.inner = inner
        self.dim = dim
        self.every = every
        self.side = ExactFloatEngine(dim, Metric.COSINE)

    def is_held_out(self, image_id: str) -> bool:
        return held_out(image_id, self.every)

    @property
    def snapshot_format(self) -> dict[str, object]:
        return {**self.inner.snapshot_format, "held_out_every": self.every}

    @property
    def slots(self) -> int:
        return self.inner.slots + self.side.slots

    def __len__(self) -> int:
        return len(self.inner) + len(self.side)

    def __contains__(self, image_id: object) -> bool:
        return image_id in self.inner or image_id in self.side

    def _part(self, image_id: str) -> Engine:
        return self.side if self.is_held_out(image_id) else self.inner

    def upsert(self, image_id: str, vector: bytes) -> None:
        self._part(image_id).upsert(image_id, vector)

    def upsert_many(self, image_ids: Sequence[str], vectors: Vectors) -> None:
        raw, size = memoryview(vectors).cast("B"), 4 * self.dim
        if len(raw) != size * len(image_ids):
            raise ValueError(f"{len(raw)} bytes are not {len(image_ids)} vectors of {size}")
        held = [self.is_held_out(i) for i in image_ids]
        if not any(held):
            self.inner.upsert_many(image_ids, vectors)
            return
        rows = np.frombuffer(raw, dtype=np.float32).reshape(len(image_ids), self.dim)
        mask = np.array(held)
        held_ids = [i for i, h in zip(image_ids, held, strict=True) if h]
        self.side.upsert_many(held_ids, np.ascontiguousarray(rows[mask]).data)
        kept = [i for i, h in zip(image_ids, held, strict=True) if not h]
        self.inner.upsert_many(kept, np.ascontiguousarray(rows[~mask]).data)

    def remove(self, image_id: str) -> bool:
        return self._part(image_id).remove(image_id)

    def vector_of(self, image_id: str) -> bytes | None:
        return self._part(image_id).vector_of(image_id)

    def search(
        self,
        queries: Sequence[bytes],
        k: int,
        max_distance: float | None = None,
        exclude: Iterable[str] = (),
    ) -> list[Hit]:
        excluded = list(exclude)
        hits = self.inner.search(queries, k, max_distance, excluded)
        hits += self.side.search(queries, k, max_distance, excluded)
        return ranked(hits, k, max_distance)

    def graph_search(self, query: bytes, k: int) -> list[Hit]:
        """The approximate engine alone: what recall is measured on."""
        return self.inner.search([query], k)

    def sample(self, n: int, rng: random.Random) -> list[tuple[str, bytes]]:
        """Up to `n` held-out images (id, vector), drawn at random."""
        ids, rows = self.side.live_rows()
        picked = sorted(rng.sample(range(len(ids)), min(n, len(ids))))
        return [(ids[i], rows[i].tobytes()) for i in picked]

    def empty(self) -> Self:
        return type(self)(self.inner.empty(), self.dim, self.every)

    def save(self, directory: Path) -> None:
        self.inner.save(directory)
        (directory / SIDE_DIR).mkdir()
        self.side.save(directory / SIDE_DIR)

    def restored(self, directory: Path) -> Self:
        engine = type(self)(self.inner.restored(directory), self.dim, self.every)
        engine.side = self.side.restored(directory / SIDE_DIR)
        return engine
