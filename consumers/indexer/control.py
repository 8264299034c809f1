"""Operator commands an indexer carries out (schemas/control.py): rebuild, reconcile, status,
inventory. Each answer says which partitions it speaks for, so a client merges shards.

Rebuild from the store builds a fresh engine from the LMDB store of record in a
worker thread while searches keep using the old one, then swaps it in (FeatureIndex.rebuild).
Rebuilding from the feature topic is what a new replica does on its own: start an indexer
with an empty index path and it reads the feature topics from the earliest offset.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Mapping
from typing import TypedDict

import structlog

from consumers.indexer.ingest import IngestService
from consumers.indexer.reconcile import Reconciler
from consumers.indexer.replay import ShrinkRefused, TopicRebuild
from index_store.feature_index import FeatureIndex
from index_store.lmdb_store import FeatureStore
from index_store.recall import RecallKeeper
from schemas.control import (
    ControlCommand,
    ControlReport,
    IndexerStatus,
    InventoryCommand,
    InventoryReport,
    RebuildCommand,
    RebuildReport,
    RebuildSource,
    ReconcileCommand,
    ReconcileReport,
    StatusCommand,
)

log = structlog.get_logger(__name__)

INDEXER_ID = f"{socket.gethostname()}:{os.getpid()}"


class Shard(TypedDict):
    """Who answers, for which partitions: every report carries it."""

    indexer: str
    partitions: list[int]
    partition_count: int


class ControlService:
    def __init__(
        self,
        store: FeatureStore,
        indexes: Mapping[str, FeatureIndex],
        ingest: IngestService,
        reconciler: Reconciler,
        recall: Mapping[str, RecallKeeper] | None = None,
    ) -> None:
        self._settings = ingest.settings
        self._replays: dict[str, TopicRebuild] = {}  # running topic rebuilds, by feature
        self._recall = recall or {}
        self._store = store
        self._indexes = indexes
        self._ingest = ingest
        self._reconciler = reconciler
        self._rebuilding = asyncio.Lock()

    def _shard(self) -> Shard:
        return Shard(
            indexer=INDEXER_ID,
            partitions=self._ingest.served_partitions,
            partition_count=self._ingest.partition_count,
        )

    async def answer(self, command: ControlCommand) -> ControlReport:
        if isinstance(command, RebuildCommand):
            return await self.rebuild(command)
        if isinstance(command, ReconcileCommand):
            return await self.reconcile(command)
        if isinstance(command, StatusCommand):
            return await self.status()
        return await self.inventory(command)

    async def _rebuild_from_topic(
        self, command: RebuildCommand, index: FeatureIndex, report: RebuildReport
    ) -> RebuildReport:
        replay = TopicRebuild(
            self._settings,
            self._ingest.specs[command.feature],
            index,
            self._store,
            self._ingest.served_partitions,
            self._ingest.pause(command.feature),
        )
        self._replays[command.feature] = replay
        try:
            result = await replay.run(command.allow_shrink)
        except ShrinkRefused as exc:
            log.warning("rebuild.refused", index=index.name, why=str(exc))
            return report.model_copy(update={"error": str(exc), "records": replay.progress.records})
        finally:
            del self._replays[command.feature]
        await asyncio.to_thread(index.checkpoint)
        return report.model_copy(
            update={
                "ok": True,
                "records": result.records,
                "images": result.images,
                "seconds": result.seconds,
            }
        )

    async def reconcile(self, command: ReconcileCommand) -> ReconcileReport:
        report = await self._reconciler.run(command.reason, command.grace_s)
        return report.model_copy(update=self._shard())

    async def status(self) -> IndexerStatus:
        try:
            lag = await self._ingest.lag()
        except Exception as exc:  # the broker may be away: the rest of the status still helps
            log.info("status.lag_unknown", error=repr(exc))
            lag = {}
        last = self._reconciler.last
        return IndexerStatus(
            ok=True,
            cluster_id=self._ingest.log_watch.cluster_id or "",
            images={name: len(index) for name, index in self._indexes.items()},
            offsets=self._store.offsets(),
            lag=lag,
            records_read=self._ingest.records_read,
            dead_letters=self._ingest.dead_letters,
            last_reconcile=last,
            rebuilding={f: r.progress.records for f, r in self._replays.items()},
            recall={
                name: keeper.last.recall
                for name, keeper in self._recall.items()
                if keeper.last is not None
            },
            **self._shard(),
        )

    async def inventory(self, command: InventoryCommand) -> InventoryReport:
        index = self._indexes.get(command.feature)
        report = InventoryReport(ok=False, feature=command.feature, **self._shard())
        if index is None:
            return report.model_copy(update={"error": f"no index for {command.feature!r} here"})
        etags, rejected = await asyncio.to_thread(
            lambda: (
                {image_id: rec.etag for image_id, rec in self._store.records(index.name)},
                dict(self._store.rejections(index.name)),
            )
        )
        return report.model_copy(update={"ok": True, "etags": etags, "rejected": rejected})

    async def rebuild(self, command: RebuildCommand) -> RebuildReport:
        report = RebuildReport(
            ok=False,
            feature=command.feature,
            source=command.source,
            **self._shard(),
        )
        index = self._indexes.get(command.feature)
        if index is None:
            return report.model_copy(update={"error": f"no index for {command.feature!r} here"})
        if self._rebuilding.locked():
            return report.model_copy(update={"error": "a rebuild is already running"})
        if command.source is RebuildSource.TOPIC:
            async with self._rebuilding:
                return await self._rebuild_from_topic(command, index, report)
        async with self._rebuilding:
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
