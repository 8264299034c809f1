"""What every engine offers, and the small pieces all of them use to answer.

An *engine* is a feature's in-memory search structure; a `FeatureIndex` pairs one with the
feature's store of record. Vectors travel as the bytes the store keeps (packed bits for Hamming
codes, float32 for everything else); distances are smallest-first for every metric.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, Self

import numpy as np
from numpy.typing import NDArray

# (image id, distance)
Hit = tuple[str, float]

# Vectors back to back in one buffer (a bulk upsert: no object per vector, no copy).
Vectors = bytes | memoryview

# Exact float32 bytes of images by id, None where absent: one call (one store read
# transaction) per batch of ids.
FetchVectors = Callable[[Sequence[str]], list[bytes | None]]


@dataclass(frozen=True, slots=True)
class Effort:
    """How hard an approximate engine searches: `ef`, the graph's search beam; `depth`,
    candidates per result re-ranked with exact vectors (1: no re-rank). More of either buys
    recall with latency; index_store/recall.py chooses them by measured recall."""

    ef: int
    depth: int = 1


class Engine(Protocol):
    """An in-memory search structure over one feature's vectors."""

    def __len__(self) -> int: ...
    def __contains__(self, image_id: object) -> bool: ...

    def upsert(self, image_id: str, vector: bytes) -> None:
        """Insert or replace one image's vector."""
        ...

    def upsert_many(self, image_ids: Sequence[str], vectors: Vectors) -> None:
        """Bulk upsert of distinct ids (loads, rebuilds), in one go where the engine can;
        `vectors`: theirs, back to back in one buffer."""
        ...

    def filled(self) -> None:
        """A bulk fill (upsert_many calls: a load, a rebuild) is over: an engine that builds
        one structure for everything it holds builds it now, once, not at every call."""
        ...

    def remove(self, image_id: str) -> bool: ...

    def vector_of(self, image_id: str) -> bytes | None:
        """The image's vector as the engine can give it back (approximate in quantised
        or projected engines unless a re-rank wrapper reads it from the store)."""
        ...

    def search(
        self,
        queries: Sequence[bytes],
        k: int,
        max_distance: float | None = None,
        exclude: Iterable[str] = (),
    ) -> list[Hit]:
        """Top-k (id, distance) by the smallest distance to any of `queries`, ties by id."""
        ...

    @property
    def exact_distances(self) -> bool:
        """Whether returned distances are exact (re-ranking them would change nothing)."""
        ...

    @property
    def slots(self) -> int:
        """Slots held, live or dead: what memory grows with."""
        ...

    @property
    def effort(self) -> Effort | None:
        """How hard searches work now; None for an exact engine (nothing to tune)."""
        ...

    @effort.setter
    def effort(self, effort: Effort) -> None: ...

    @property
    def needs_compaction(self) -> bool:
        """Removed or replaced vectors left enough dead slots that a rebuild pays."""
        ...

    @property
    def snapshot_format(self) -> dict[str, object]:
        """What saved data means (engine, dimensions, projection): data saved under another
        format cannot serve this engine."""
        ...

    def empty(self) -> Self:
        """A new, empty engine with this one's configuration."""
        ...

    def save(self, directory: Path) -> None:
        """Write the data into `directory`, an empty directory that the caller makes durable
        (snapshots.py)."""
        ...

    def restored(self, directory: Path) -> Self:
        """A new engine with this one's configuration and the data saved in `directory` (of
        the same format): the configuration says how to search, the snapshot what."""
        ...


def ranked(hits: Iterable[tuple[str, float]], k: int, max_distance: float | None) -> list[Hit]:
    """The k nearest by (distance, id), within `max_distance`: the same content gives the same
    answer whatever order it was loaded in."""
    order = sorted(hits, key=lambda hit: (hit[1], hit[0]))[:k]
    limit = np.inf if max_distance is None else max_distance
    return [(image_id, float(d)) for image_id, d in order if d <= limit]


def float_matrix(vectors: Sequence[bytes], dim: int) -> NDArray[np.float32]:
    """float32 bytes, `dim` floats each, as one (len, dim) matrix."""
    if any(len(v) != 4 * dim for v in vectors):
        sizes = sorted({len(v) // 4 for v in vectors})
        raise ValueError(f"vectors have {sizes} floats, the engine holds {dim}")
    return float_rows(b"".join(vectors), len(vectors), dim)


def float_rows(vectors: Vectors, count: int, dim: int) -> NDArray[np.float32]:
    """`count` vectors of `dim` float32s back to back, as a (count, dim) matrix (no copy)."""
    return rows_of(vectors, count, dim, np.float32)


def rows_of(vectors: Vectors, count: int, width: int, dtype: type[np.generic]) -> NDArray[Any]:
    """`count` rows of `width` items of `dtype` back to back, as a (count, width) matrix."""
    rows = np.frombuffer(vectors, dtype=dtype)
    if rows.size != count * width:
        raise ValueError(f"{rows.size} values are not {count} vectors of {width}")
    return rows.reshape(count, width)


def require_distinct(image_ids: Sequence[str]) -> None:
    if len(set(image_ids)) != len(image_ids):
        raise ValueError("a bulk upsert takes each id once (the store keeps the last change)")
