"""The indexer service: load indexes from disk, follow the feature topics, answer searches and
control commands, and keep its indexes equal to the bucket (reconciliation)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping, Sequence
from functools import partial

import structlog
from aiokafka import AIOKafkaProducer
from faststream.kafka import KafkaBroker
from minio import Minio

from consumers.features.contract import FeatureSpec
from consumers.indexer.control import ControlService
from consumers.indexer.image_alerts import ImageAlertJoiner
from consumers.indexer.ingest import IngestService
from consumers.indexer.query import QueryEngine
from consumers.indexer.reconcile import Reconciler
from consumers.indexer.search_service import build_search_broker
from index_store.engines.factory import EngineFactory
from index_store.feature_index import FeatureIndex
from index_store.lmdb_store import FeatureStore
from index_store.recall import RecallKeeper
from schemas.kafka import make_producer, partitions_of
from schemas.metrics import INDEX_IMAGES, INDEX_TOMBSTONES
from schemas.settings import Settings

log = structlog.get_logger(__name__)


async def run_indexer(
    settings: Settings, s3: Minio, features: Sequence[FeatureSpec], stop: asyncio.Event
) -> None:
    store = FeatureStore(settings.index_dir / "store")
    snapshots = settings.index_dir / "snapshots"
    engines = EngineFactory.from_settings(settings)
    indexes = {
        spec.name: FeatureIndex(
            store,
            spec.index_name,
            engines.make(
                spec.metric,
                spec.dim,
                spec.codes_per_item,
                exact_vectors=partial(store.vectors_of, spec.index_name),
            ),
            snapshot_dir=snapshots / spec.index_name,
        )
        for spec in features
    }
    for index in indexes.values():
        await asyncio.to_thread(index.load)
        measure_when_scraped(index)
    producer = make_producer(settings)
    await producer.start()
    reconciler = Reconciler(settings, s3, store, indexes, producer)
    schedule = ReconcileSchedule(
        reconciler, settings.reconcile_interval_s, settings.reconcile_grace_s
    )
    engine = QueryEngine(settings, {spec.name: spec for spec in features}, indexes)
    joiner = ImageAlertJoiner(settings, [spec.name for spec in features], engine, producer)
    ingest = IngestService(
        settings,
        features,
        indexes,
        store,
        partitions=settings.shard_partition_list,
        reconcile_soon=schedule.soon,
        on_indexed=joiner.indexed,
    )
    keepers = {
        name: RecallKeeper(index, store, target=settings.recall_target)
        for name, index in indexes.items()
    }
    control = ControlService(store, indexes, ingest, reconciler, keepers)
    await checkpoint_all(indexes)  # a restart after this needs no full reload
    ingest_task = asyncio.create_task(ingest.run(stop), name="ingest")
    checkpoints = asyncio.create_task(
        checkpoint_periodically(indexes, settings.checkpoint_interval_s, stop)
    )
    background: list[asyncio.Task[None]] = [checkpoints]
    serving = SearchServing(settings, engine, control)
    try:
        await asyncio.wait(
            [ingest_task, asyncio.create_task(ingest.ready.wait())],
            return_when=asyncio.FIRST_COMPLETED,
        )
        if ingest_task.done():
            ingest_task.result()  # raise why it stopped
        # Answer only once caught up with what the topics held when we joined (a new replica
        # replays them first; other replicas answer meanwhile).
        await asyncio.wait(
            [ingest_task, asyncio.create_task(ingest.catch_up())],
            return_when=asyncio.FIRST_COMPLETED,
        )
        if ingest_task.done():
            ingest_task.result()
        engine.partitions = reconciler.partitions = ingest.served_partitions
        engine.partition_count = reconciler.partition_count = ingest.partition_count
        await serving.start(ingest.log_watch.cluster_id)
        log.info("indexer.serving", images={n: len(i) for n, i in indexes.items()})
        if settings.reconcile_at_start:
            schedule.soon("indexer started")
        background += [
            asyncio.create_task(schedule.run(ingest, stop), name="reconcile"),
            asyncio.create_task(serving.follow(ingest, stop), name="search-serving"),
            asyncio.create_task(
                keep_recall(keepers, settings.recall_check_interval_s, stop), name="recall"
            ),
            asyncio.create_task(joiner.run_deadlines(stop), name="image-alert-deadlines"),
        ]
        await ingest_task
    finally:
        stop.set()
        for task in background:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await serving.stop()
        if not ingest_task.done():
            await ingest_task
        await producer.stop()
        await checkpoint_all(indexes)  # clean shutdown: the next start replays nothing
        offsets = store.offsets()
        store.close()
        log.info("indexer.stopped", records_read=ingest.records_read, offsets=offsets)


class SearchServing:
    """The FastStream subscribers for search and control. They read from the end of their
    topics; a new broker log (its cluster id changed) means new topics, whose offsets start
    below the old positions, so the subscribers are started again there."""

    def __init__(self, settings: Settings, engine: QueryEngine, control: ControlService) -> None:
        self._settings = settings
        self._engine = engine
        self._control = control
        self._broker: KafkaBroker | None = None
        self._replies: AIOKafkaProducer | None = None
        self._cluster_id: str | None = None

    async def start(self, cluster_id: str | None) -> None:
        s = self._settings
        # No linger: a lone reply leaves at once instead of 2 ms later, and a flood of
        # requests is answered as fast (a batch's replies are queued in one go; aiokafka sends
        # what queued while a send was in flight together): BENCHMARKS.md "Replies without a
        # linger" (bench/query_roundtrip.py, bench/search_throughput.py).
        self._replies = make_producer(s, linger_ms=0)
        await self._replies.start()
        self._broker = build_search_broker(
            s,
            self._engine,
            await partitions_of(s, s.search_requests_topic),
            self._control,
            await partitions_of(s, s.control_topic),
            self._replies,
        )
        await self._broker.start()
        self._cluster_id = cluster_id

    async def stop(self) -> None:
        if self._broker is not None:
            await self._broker.stop()
            self._broker = None
        if self._replies is not None:
            await self._replies.stop()
            self._replies = None

    async def follow(self, ingest: IngestService, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await asyncio.sleep(self._settings.log_check_interval_s)
            current = ingest.log_watch.cluster_id
            if current is None or current == self._cluster_id:
                continue
            log.warning("search.new_log", cluster_id=current, action="subscribe again")
            try:
                await self.stop()
                await self.start(current)
            except Exception as exc:  # the new broker may still be starting: try again soon
                log.warning("search.resubscribe_failed", error=repr(exc))


class ReconcileSchedule:
    """When to reconcile: when asked (`soon`: start, a new log, the S3 gateway's start), and
    every `interval_s` (0 = only when asked). An asked-for round is followed by a second one
    once `grace_s` has passed, because the first leaves recently changed objects to events
    that may have been lost. Each round waits until ingest has caught up with its topics, so
    that a backlog is not mistaken for missing images."""

    def __init__(self, reconciler: Reconciler, interval_s: float, grace_s: float) -> None:
        self._reconciler = reconciler
        self._interval_s = interval_s
        self._grace_s = grace_s
        self._reasons: list[str] = []
        self._follow_ups: list[tuple[float, str]] = []  # (when, why)
        self._wake = asyncio.Event()

    def soon(self, why: str) -> None:
        self._reasons.append(why)
        self._wake.set()
        follow_up_at = time.monotonic() + self._grace_s + 1.0
        self._follow_ups.append((follow_up_at, f"follow-up of: {why}"))

    def _timeout(self) -> float | None:
        waits = [self._interval_s] if self._interval_s > 0 else []
        waits += [max(0.0, when - time.monotonic()) for when, _ in self._follow_ups]
        return min(waits) if waits else None

    def _due(self) -> str:
        now = time.monotonic()
        due = [why for when, why in self._follow_ups if when <= now]
        self._follow_ups = [(w, why) for w, why in self._follow_ups if w > now]
        reasons = [*self._reasons, *due]
        self._reasons.clear()
        return "; ".join(dict.fromkeys(reasons)) or "periodic"

    async def run(self, ingest: IngestService, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._timeout())
            self._wake.clear()
            reason = self._due()
            await _caught_up(ingest, limit_s=60.0)
            try:
                await self._reconciler.run(reason)
            except Exception as exc:  # S3 or the broker away: try again soon
                log.warning("reconcile.failed", reason=reason, error=repr(exc))
                self._reasons.append(reason)
                await asyncio.sleep(5.0)
                self._wake.set()


async def _caught_up(ingest: IngestService, limit_s: float) -> None:
    """Until ingest has applied what its topics hold (or `limit_s` passed)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_s
    while loop.time() < deadline:
        try:
            if sum((await ingest.lag()).values()) == 0:
                return
        except Exception as exc:
            log.info("reconcile.lag_unknown", error=repr(exc))
        await asyncio.sleep(1.0)


async def checkpoint_all(indexes: Mapping[str, FeatureIndex]) -> None:
    for index in indexes.values():
        await asyncio.to_thread(index.checkpoint)


async def checkpoint_periodically(
    indexes: Mapping[str, FeatureIndex], interval: float, stop: asyncio.Event
) -> None:
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)
        if not stop.is_set():
            for index in indexes.values():
                await asyncio.to_thread(index.compact_if_needed)
            await checkpoint_all(indexes)


async def keep_recall(
    keepers: Mapping[str, RecallKeeper], interval: float, stop: asyncio.Event
) -> None:
    """Measure each approximate index's recall@10 every `interval` seconds (recall.py), off the
    event loop; a failed measurement is logged and tried again next time."""
    if interval <= 0:
        return
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)
        for name, keeper in keepers.items():
            if stop.is_set():
                return
            try:
                await asyncio.to_thread(keeper.check)
            except Exception:
                log.exception("index.recall_check_failed", index=name)


def measure_when_scraped(index: FeatureIndex) -> None:
    """The index's size and tombstones, read as they are when metrics are scraped."""

    def tombstones() -> float:
        engine = index.engine  # a rebuild may swap it: read it once
        return float(engine.slots - len(engine))

    INDEX_IMAGES.labels(index=index.name).set_function(index.__len__)
    INDEX_TOMBSTONES.labels(index=index.name).set_function(tombstones)
