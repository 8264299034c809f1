"""The indexer service: load indexes from disk, follow the feature topics, answer searches."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping, Sequence
from functools import partial

import structlog

from consumers.features.contract import FeatureSpec
from consumers.indexer.control import Rebuilder
from consumers.indexer.ingest import IngestService
from consumers.indexer.query import QueryEngine
from consumers.indexer.search_service import build_search_broker
from consumers.kafka.clients import partitions_of
from index_store.feature_index import FeatureIndex, make_structure
from index_store.lmdb_store import FeatureStore
from schemas.settings import Settings

log = structlog.get_logger(__name__)


async def run_indexer(
    settings: Settings, features: Sequence[FeatureSpec], stop: asyncio.Event
) -> None:
    store = FeatureStore(settings.index_dir / "store")
    snapshots = settings.index_dir / "snapshots"
    indexes = {
        spec.name: FeatureIndex(
            store,
            spec.index_name,
            make_structure(
                spec.metric,
                spec.dim,
                spec.codes_per_item,
                settings.vector_index,
                fetch_exact=partial(store.vectors_of, spec.index_name),
                reduce_dim=settings.vector_reduce_dim,
            ),
            snapshot_dir=snapshots / spec.index_name,
        )
        for spec in features
    }
    for index in indexes.values():
        await asyncio.to_thread(index.load)
    ingest = IngestService(
        settings, features, indexes, store.offsets(), partitions=settings.shard_partition_list
    )
    engine = QueryEngine(settings, {spec.name: spec for spec in features}, indexes)
    rebuilder = Rebuilder(store, indexes)
    broker = build_search_broker(
        settings,
        engine,
        await partitions_of(settings, settings.search_requests_topic),
        rebuilder,
        await partitions_of(settings, settings.control_topic),
    )
    await checkpoint_all(indexes)  # a restart after this needs no full reload
    ingest_task = asyncio.create_task(ingest.run(stop), name="ingest")
    checkpoints = asyncio.create_task(
        checkpoint_periodically(indexes, settings.checkpoint_interval_s, stop)
    )
    try:
        await asyncio.wait(
            [ingest_task, asyncio.create_task(ingest.ready.wait())],
            return_when=asyncio.FIRST_COMPLETED,
        )
        if ingest_task.done():
            ingest_task.result()  # raise why it stopped
        engine.partitions = rebuilder.partitions = ingest.served_partitions
        engine.partition_count = rebuilder.partition_count = ingest.partition_count
        await broker.start()
        log.info("indexer.serving", images={n: len(i) for n, i in indexes.items()})
        await ingest_task
    finally:
        stop.set()
        await broker.stop()
        if not ingest_task.done():
            await ingest_task
        checkpoints.cancel()
        await checkpoint_all(indexes)  # clean shutdown: the next start replays nothing
        offsets = store.offsets()
        store.close()
        log.info("indexer.stopped", records_read=ingest.records_read, offsets=offsets)


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
