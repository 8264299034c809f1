"""An engine around another engine: everything goes to the engine serving now (`serving`,
the inner one unless a subclass says otherwise), except what a subclass changes. The re-rank
(rerank.py) and train-then-switch (exact_until_trained.py) behaviours are such wrappers."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from index_store.engines.engine import Effort, Engine, Hit, Vectors


class EngineWrapper:
    inner: Engine

    @property
    def serving(self) -> Engine:
        return self.inner

    @property
    def snapshot_format(self) -> dict[str, object]:
        """The inner engine's: it is what a snapshot holds once trained."""
        return self.inner.snapshot_format

    @property
    def exact_distances(self) -> bool:
        return self.serving.exact_distances

    @property
    def slots(self) -> int:
        return self.serving.slots

    @property
    def needs_compaction(self) -> bool:
        return self.serving.needs_compaction

    @property
    def effort(self) -> Effort | None:
        return self.serving.effort

    @effort.setter
    def effort(self, effort: Effort) -> None:
        self.inner.effort = effort  # kept by the inner engine, whichever serves now

    def __len__(self) -> int:
        return len(self.serving)

    def __contains__(self, image_id: object) -> bool:
        return image_id in self.serving

    def upsert(self, image_id: str, vector: bytes) -> None:
        self.serving.upsert(image_id, vector)

    def upsert_many(self, image_ids: Sequence[str], vectors: Vectors) -> None:
        self.serving.upsert_many(image_ids, vectors)

    def filled(self) -> None:
        self.serving.filled()

    def remove(self, image_id: str) -> bool:
        return self.serving.remove(image_id)

    def vector_of(self, image_id: str) -> bytes | None:
        return self.serving.vector_of(image_id)

    def search(
        self,
        queries: Sequence[bytes],
        k: int,
        max_distance: float | None = None,
        exclude: Iterable[str] = (),
    ) -> list[Hit]:
        return self.serving.search(queries, k, max_distance, exclude)

    def save(self, directory: Path) -> None:
        self.serving.save(directory)
