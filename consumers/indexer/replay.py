"""Rebuild one feature's index from its feature topic, live (`lookalike rebuild F --source topic`).

In order, while the serving index keeps answering and ingesting:
  1. replay this indexer's partitions of the feature topic from their earliest offset into a
     new store of record beside the serving one (`DATA_DIR/index/replays/`), applying events
     exactly as ingest does (last change per image wins; what ingest dead-lettered is skipped);
  2. once the replay has reached the offsets the serving index has applied, pause ingest of
     this feature and read the few records that came meanwhile;
  3. the shrink guard: a replay that holds fewer images than the serving index means the topic
     no longer holds what the index does (a restarted memory-only broker, retention, a
     re-created topic): refuse, unless the operator said `--allow-shrink`;
  4. swap: the engine's snapshots are dropped, then the serving store takes the replayed
     content and offsets in one transaction (`FeatureStore.replace_index`); ingest resumes;
  5. a fresh engine is built from the store while the old one answers, and swapped in.
A crash before 4 leaves the serving index as it was; after 4, a restart fills the engine from
the replaced store (its snapshots are gone).
"""

from __future__ import annotations

import asyncio
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition

from consumers.features.contract import FeatureSpec
from consumers.indexer.feature_events import offset_name, to_change, unusable
from index_store.feature_index import FeatureIndex
from index_store.lmdb_store import Change, FeatureStore
from schemas.features import FeatureEvent
from schemas.kafka import make_consumer
from schemas.message import MessageError
from schemas.settings import Settings

log = structlog.get_logger(__name__)

POLL_RECORDS = 2_000
PROGRESS_EVERY_S = 2.0


class ShrinkRefused(Exception):
    """The topic holds fewer images than the index: replacing it would lose some."""


@dataclass
class ReplayProgress:
    records: int = 0
    images: int = 0
    behind: int = 0


@dataclass(frozen=True, slots=True)
class ReplayResult:
    records: int
    images: int
    seconds: float
    earliest_offsets: dict[str, int]


class TopicRebuild:
    def __init__(
        self,
        settings: Settings,
        spec: FeatureSpec,
        serving: FeatureIndex,
        store: FeatureStore,
        partitions: list[int],
        pause: asyncio.Lock,
    ) -> None:
        self._settings = settings
        self._spec = spec
        self._serving = serving
        self._store = store
        self._topic = settings.features_topic(spec.name)
        self._tps = [TopicPartition(self._topic, p) for p in partitions]
        self._pause = pause
        self.progress = ReplayProgress()

    async def run(self, allow_shrink: bool) -> ReplayResult:
        started = time.perf_counter()
        workdir = self._settings.index_dir / "replays" / f"{self._serving.name}-{uuid.uuid4().hex}"
        replayed = FeatureStore(workdir)
        consumer = make_consumer(self._settings, group_id=None, max_poll_records=POLL_RECORDS)
        await consumer.start()
        try:
            consumer.assign(self._tps)
            earliest = await consumer.beginning_offsets(self._tps)
            await consumer.seek_to_beginning(*self._tps)
            log.info(
                "rebuild.replaying",
                index=self._serving.name,
                partitions=[tp.partition for tp in self._tps],
                earliest={offset_name(tp): o for tp, o in earliest.items()},
            )
            await self._replay_until(consumer, replayed, self._store.offsets)
            async with self._pause:  # ingest of this feature waits from here to the swap
                offsets = await self._replay_until(consumer, replayed, self._store.offsets)
                images = await asyncio.to_thread(
                    self._swap, replayed, offsets, allow_shrink, earliest
                )
        finally:
            await consumer.stop()
            replayed.close()
            shutil.rmtree(workdir, ignore_errors=True)
        await asyncio.to_thread(self._serving.reload_from_store, self._engine_progress)
        result = ReplayResult(
            records=self.progress.records,
            images=images,
            seconds=time.perf_counter() - started,
            earliest_offsets={offset_name(tp): o for tp, o in earliest.items()},
        )
        log.info(
            "rebuild.swapped",
            index=self._serving.name,
            records=result.records,
            images=images,
            seconds=round(result.seconds, 2),
        )
        return result

    async def _replay_until(
        self,
        consumer: AIOKafkaConsumer,
        replayed: FeatureStore,
        targets: Callable[[], dict[str, int]],
    ) -> dict[str, int]:
        """Apply records until every partition's position reaches the serving index's offset
        (asked again each round: live ingest moves it); the replay's offsets."""
        last_report = time.monotonic()
        while True:
            wanted = targets()
            positions = {offset_name(tp): await consumer.position(tp) for tp in self._tps}
            behind = {name: max(0, wanted.get(name, 0) - at) for name, at in positions.items()}
            self.progress.behind = sum(behind.values())
            if self.progress.behind == 0:
                return positions
            batch = await consumer.getmany(timeout_ms=500, max_records=POLL_RECORDS)
            if not batch and await self._past_end(consumer, behind):
                return positions  # the log ends before the index's offsets (see the guard)
            for tp, records in batch.items():
                changes = [c for c in map(self._change, records) if c is not None]
                offsets = {offset_name(tp): records[-1].offset + 1}
                await asyncio.to_thread(replayed.apply, self._serving.name, changes, offsets)
                self.progress.records += len(records)
            if time.monotonic() - last_report > PROGRESS_EVERY_S:
                self.progress.images = replayed.count(self._serving.name)
                log.info(
                    "rebuild.progress",
                    index=self._serving.name,
                    records=self.progress.records,
                    images=self.progress.images,
                    behind=self.progress.behind,
                )
                last_report = time.monotonic()

    async def _past_end(self, consumer: AIOKafkaConsumer, behind: dict[str, int]) -> bool:
        """Nothing came and every partition still behind is at the end of its log."""
        ends = await consumer.end_offsets(self._tps)
        for tp in self._tps:
            if behind[offset_name(tp)] and await consumer.position(tp) < ends[tp]:
                return False
        return True

    def _change(self, record: object) -> Change | None:
        """As ingest applies it; None for what ingest skips or dead-lettered."""
        try:
            event = FeatureEvent.from_bytes(getattr(record, "value", None))
        except MessageError:
            return None
        if event.feature_version != self._spec.version or unusable(event, self._spec):
            return None
        return to_change(event)

    def _swap(
        self,
        replayed: FeatureStore,
        offsets: dict[str, int],
        allow_shrink: bool,
        earliest: dict[TopicPartition, int],
    ) -> int:
        name = self._serving.name
        have, got = self._store.count(name), replayed.count(name)
        self.progress.images = got
        if got < have and not allow_shrink:
            trimmed = {offset_name(tp): o for tp, o in earliest.items() if o > 0}
            why = f" (its earliest offsets are {trimmed}: records were dropped)" if trimmed else ""
            raise ShrinkRefused(
                f"the topic {self._topic} holds {got:,} images for these partitions, the index "
                f"{have:,}{why}: it no longer holds everything (a restarted broker, retention, "
                "a re-created topic). Nothing was changed; --allow-shrink replaces it anyway"
            )
        self._serving.invalidate_snapshots()
        return self._store.replace_index(name, replayed, offsets)

    def _engine_progress(self, vectors: int) -> None:
        log.info("rebuild.engine_progress", index=self._serving.name, vectors=vectors)
