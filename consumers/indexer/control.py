"""Operator commands an indexer carries out: `lookalike rebuild FEATURE`.

Rebuild from the store builds a fresh search structure from the LMDB store of record in a
worker thread while searches keep using the old one, then swaps it in (FeatureIndex.rebuild).
Rebuilding from the feature topic is what a new replica does on its own: start an indexer
with an empty index path and it reads the feature topics from the earliest offset.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping

import structlog

from index_store.feature_index import FeatureIndex
from index_store.lmdb_store import FeatureStore
from schemas.control import RebuildCommand, RebuildReport, RebuildSource

log = structlog.get_logger(__name__)


class Rebuilder:
    def __init__(self, store: FeatureStore, indexes: Mapping[str, FeatureIndex]) -> None:
        self._store = store
        self._indexes = indexes
        self.partitions: list[int] = []
        self.partition_count = 0
        self._busy = asyncio.Lock()

    async def run(self, command: RebuildCommand) -> RebuildReport:
        report = RebuildReport(
            ok=False,
            feature=command.feature,
            source=command.source,
            partitions=self.partitions,
            partition_count=self.partition_count,
        )
        index = self._indexes.get(command.feature)
        if index is None:
            return report.model_copy(update={"error": f"no index for {command.feature!r} here"})
        if command.source is RebuildSource.TOPIC:
            reason = "start a replica with an empty LOOKALIKE_INDEX_PATH: it replays the topic"
            return report.model_copy(update={"error": reason})
        if self._busy.locked():
            return report.model_copy(update={"error": "a rebuild is already running"})
        async with self._busy:
            started = time.perf_counter()
            log.info("rebuild.started", index=index.name, source=command.source.value)

            def progress(count: int) -> None:
                log.info("rebuild.progress", index=index.name, vectors=count)

            images = await asyncio.to_thread(
                index.rebuild, self._store.vectors(index.name), progress
            )
            await asyncio.to_thread(index.checkpoint)
            seconds = time.perf_counter() - started
            log.info("rebuild.done", index=index.name, images=images, seconds=round(seconds, 2))
        return report.model_copy(update={"ok": True, "images": images, "seconds": seconds})
