"""Rebuild from the feature topic: how fast a topic is replayed into an index, against the
naive way (a new replica that ingests the topic batch by batch, engine and all).

A real Tansu broker (memory), one feature topic (`--partitions`), `--n` phash feature events
(random 576-bit codes, distinct images) published once. Then, in one run:
  - naive: a FeatureIndex fed the way ingest feeds it (batches of 500 records, store and
    engine per batch, as a new replica with an empty folder does);
  - topic rebuild: `consumers/indexer/replay.py` replaying the same topic into a new store
    beside that index, swapping it in, and building the engine from the store.
Prints a table (records/s, seconds). Numbers: BENCHMARKS.md ("Replay").

    .venv/bin/python -m bench.replay_rate --n 100000
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from aiokafka import TopicPartition

from consumers.features.catalog import build_features
from consumers.indexer.feature_events import offset_name, to_change
from consumers.indexer.replay import TopicRebuild
from index_store.engines.factory import EngineFactory
from index_store.feature_index import FeatureIndex
from index_store.lmdb_store import FeatureStore
from lookalike.embedded import Infrastructure
from lookalike.topics import create_topics
from schemas.features import FeatureEvent, FeatureOp, VectorKind
from schemas.kafka import make_consumer, make_producer
from schemas.settings import Settings

BATCH = 500  # records per ingest batch (consumers/indexer/ingest.py)


async def publish(settings: Settings, n: int, version: str) -> None:
    rng = np.random.default_rng(1)
    codes = rng.integers(0, 256, size=(n, 72), dtype=np.uint8)
    producer = make_producer(settings, linger_ms=20)
    await producer.start()
    try:
        sends = []
        for i in range(n):
            image_id = f"{settings.bucket}/bench/{i:08d}.jpg"
            event = FeatureEvent(
                op=FeatureOp.UPSERT,
                image_id=image_id,
                bucket=settings.bucket,
                key=f"bench/{i:08d}.jpg",
                feature="phash",
                feature_version=version,
                etag=f"{i:032x}",
                size=1,
                vector_kind=VectorKind.BITS,
                dim=576,
                vector=codes[i].tobytes(),
            )
            topic = settings.features_topic("phash")
            sends.append(await producer.send(topic, event.to_bytes(), key=image_id.encode()))
            if len(sends) >= 5_000:
                await asyncio.gather(*sends)
                sends = []
        await asyncio.gather(*sends)
    finally:
        await producer.stop()


async def naive_ingest(settings: Settings, index: FeatureIndex, partitions: list[int]) -> int:
    """What a new replica does: read every partition from the start, apply batch by batch."""
    topic = settings.features_topic("phash")
    tps = [TopicPartition(topic, p) for p in partitions]
    consumer = make_consumer(settings, group_id=None, max_poll_records=BATCH)
    await consumer.start()
    records = 0
    try:
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        while True:
            batch = await consumer.getmany(timeout_ms=1_000, max_records=BATCH)
            if not batch:
                return records
            for tp, rs in batch.items():
                changes = [to_change(FeatureEvent.from_bytes(r.value)) for r in rs]
                offsets = {offset_name(tp): rs[-1].offset + 1}
                await asyncio.to_thread(index.apply, changes, offsets)
                records += len(rs)
    finally:
        await consumer.stop()


async def main_async(args: argparse.Namespace, work: Path) -> None:
    infra = Infrastructure(work, extra_env={"LOOKALIKE_PARTITIONS": str(args.partitions)})
    infra.start_broker()
    try:
        given: dict[str, Any] = {
            k.removeprefix("LOOKALIKE_").lower(): v
            for k, v in infra.env.items()
            if k.startswith("LOOKALIKE_")
        }
        settings = Settings(_env_file=None, **given)
        await create_topics(settings)
        (phash,) = build_features(settings, ["phash"])
        t0 = time.perf_counter()
        await publish(settings, args.n, phash.version)
        print(f"published {args.n:,} events in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
        partitions = list(range(args.partitions))
        store = FeatureStore(work / "store")
        engine = EngineFactory().make(phash.metric, phash.dim, phash.codes_per_item)
        index = FeatureIndex(store, phash.index_name, engine, work / "snapshots")

        t0 = time.perf_counter()
        naive_records = await naive_ingest(settings, index, partitions)
        naive_s = time.perf_counter() - t0

        rebuild = TopicRebuild(settings, phash, index, store, partitions, asyncio.Lock())
        result = await rebuild.run(allow_shrink=False)

        print(
            f"\n## Replay ({os.cpu_count()} CPUs; {args.n:,} phash events, "
            f"{args.partitions} partitions)\n"
        )
        print("| way | records | images | seconds | records/s |")
        print("| --- | --- | --- | --- | --- |")
        print(
            f"| new replica ingesting the topic (naive) | {naive_records:,} | {len(index):,} "
            f"| {naive_s:.1f} | {naive_records / naive_s:,.0f} |"
        )
        print(
            f"| topic rebuild (replay + swap + engine) | {result.records:,} | {result.images:,} "
            f"| {result.seconds:.1f} | {result.records / result.seconds:,.0f} |"
        )
        store.close()
    finally:
        infra.stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--partitions", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="replay-rate-") as tmp:
        asyncio.run(main_async(args, Path(tmp)))


if __name__ == "__main__":
    main()
