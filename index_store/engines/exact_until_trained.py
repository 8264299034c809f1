"""Train-then-switch around any engine that must be trained before its first vector (a quantiser,
a projection): the vectors live in an exact engine until `train_size` of them are in, then the
engine is trained on them, filled with them, and serves from then on.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, Self

import numpy as np
from numpy.typing import NDArray

from index_store.engines.engine import Engine, Vectors
from index_store.engines.exact_float import ExactFloatEngine
from index_store.engines.wrapper import EngineWrapper
from index_store.metric import Metric

STAGE_FILE = "stage.json"


class Trainable(Engine, Protocol):
    dim: int

    @property
    def needs_training(self) -> bool: ...
    def train(self, sample: NDArray[np.float32]) -> None: ...


class ExactUntilTrained(EngineWrapper):
    inner: Trainable

    def __init__(self, inner: Trainable, train_size: int) -> None:
        """`inner`: untrained; it is trained on the first `train_size` vectors."""
        if not inner.needs_training or len(inner):
            raise ValueError("the inner engine must be empty and untrained")
        self.inner = inner
        self.train_size = train_size
        self._staging: ExactFloatEngine | None = ExactFloatEngine(inner.dim, Metric.COSINE)

    @property
    def trained(self) -> bool:
        return self._staging is None

    @property
    def serving(self) -> Engine:
        """The engine that answers now: the exact staging engine, then the trained one."""
        return self.inner if self._staging is None else self._staging

    def upsert(self, image_id: str, vector: bytes) -> None:
        if self._staging is None:
            self.inner.upsert(image_id, vector)
            return
        self._staging.upsert(image_id, vector)
        if len(self._staging) >= self.train_size:
            self._switch(self._staging)

    def upsert_many(self, image_ids: Sequence[str], vectors: Vectors) -> None:
        staging = self._staging
        if staging is None:
            self.inner.upsert_many(image_ids, vectors)
            return
        raw, size = memoryview(vectors).cast("B"), 4 * self.inner.dim
        if len(raw) != size * len(image_ids):
            raise ValueError(f"{len(raw)} bytes are not {len(image_ids)} vectors of {size}")
        taken = 0
        while len(staging) < self.train_size:  # ids already staged do not count twice
            if taken == len(image_ids):
                return
            end = min(len(image_ids), taken + self.train_size - len(staging))
            staging.upsert_many(image_ids[taken:end], raw[taken * size : end * size])
            taken = end
        self._switch(staging)
        if taken < len(image_ids):
            self.inner.upsert_many(image_ids[taken:], raw[taken * size :])

    def empty(self) -> Self:
        return type(self)(self.inner.empty(), self.train_size)

    def save(self, directory: Path) -> None:
        (directory / STAGE_FILE).write_text(json.dumps({"trained": self.trained}))
        self.serving.save(directory)

    def restored(self, directory: Path) -> Self:
        engine = self.empty()
        stage = json.loads((directory / STAGE_FILE).read_text())
        if stage["trained"]:
            engine.inner = self.inner.restored(directory)
            engine._staging = None
        else:
            assert engine._staging is not None
            engine._staging = engine._staging.restored(directory)
        return engine

    def _switch(self, staging: ExactFloatEngine) -> None:
        ids, rows = staging.live_rows()
        self.inner.train(rows)
        self._staging = None
        self.inner.upsert_many(ids, rows.tobytes())
