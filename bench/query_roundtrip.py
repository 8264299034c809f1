"""Search latency through the request-reply topic, next to the same queries answered
in-process, so the ratio shows what Kafka costs.

    .venv/bin/python -m bench.query_roundtrip --images 300 --queries 500
    .venv/bin/python -m bench.query_roundtrip --queries 100 --pause-ms 500   # now and then

Queries go one after another; with `--pause-ms` each waits a while after the previous reply
(drawn uniformly from 0 to twice that, seeded: a fixed pause would meet an indexer's polling
cycle at the same point every time), as users who ask now and then, not back to back.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import random
import tempfile
import time
from pathlib import Path

from bench.workload import IndexedListener, percentile
from consumers.features.catalog import PHASH
from consumers.indexer.query import QueryEngine
from index_store.engines.factory import EngineFactory
from index_store.feature_index import FeatureIndex
from index_store.lmdb_store import FeatureStore
from lookalike.s3 import s3_client
from lookalike.samples import distinct_jpegs
from lookalike.stack import Stack
from producers.search_client import SearchClient
from producers.uploads import upload_bytes
from schemas.search import SearchRequest


async def run(stack: Stack, images: int, queries: int, pause_ms: float) -> None:
    settings = stack.settings
    s3 = s3_client(settings)
    listener = IndexedListener(settings)
    await listener.start()
    pictures = distinct_jpegs(images, seed=1)
    ids = []
    for i, data in enumerate(pictures):
        key = f"rt/{i:05d}.jpg"
        upload_bytes(s3, settings.bucket, key, data)
        ids.append(f"{settings.bucket}/{key}")
    await listener.wait_until(lambda: len(listener.seen) >= images, timeout=120)
    await listener.stop()

    requests = {
        "by id": [
            SearchRequest(feature="phash", image_id=ids[i % images], k=10) for i in range(queries)
        ],
        "by image": [
            SearchRequest(feature="phash", image=pictures[i % images], k=10) for i in range(queries)
        ],
    }
    # The same index, opened in this process: LMDB allows readers beside the indexer.
    store = FeatureStore(settings.index_dir / "store")
    index = FeatureIndex(store, PHASH.index_name, EngineFactory().make(PHASH.metric, PHASH.dim))
    index.load()
    engine = QueryEngine(settings, {"phash": PHASH}, {"phash": index})

    rows = []
    pauses = random.Random(2026)
    async with SearchClient(settings) as client:
        for kind, batch in requests.items():
            for r in batch[:20]:  # warm up both paths
                await client.search(r)
                engine.answer(r)
            kafka, local = [], []
            for i, r in enumerate(batch):
                await asyncio.sleep(pauses.uniform(0, 2 * pause_ms) / 1000)
                t = time.perf_counter()
                reply = await client.search(r)
                kafka.append((time.perf_counter() - t) * 1000)
                assert reply.ok and reply.hits, reply
                t = time.perf_counter()
                engine.answer(r)
                local.append((time.perf_counter() - t) * 1000)
                if i % 100 == 0:
                    print(f"  {kind}: {i}/{queries}", flush=True)
            rows.append((kind, kafka, local))
    store.close()

    print(
        f"\nQuery round trip, {queries} queries over {images} indexed images, k=10, "
        f"fetch_max_wait_ms={settings.fetch_max_wait_ms}, 0-{2 * pause_ms:g} ms between a reply "
        f"and the next query, on {platform.node()}"
    )
    print(
        "| query | via Kafka p50 | via Kafka p99 | via Kafka mean | in-process p50 "
        "| in-process p99 | ratio p50 |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for kind, kafka, local in rows:
        k50, l50 = percentile(kafka, 50), percentile(local, 50)
        print(
            f"| {kind} | {k50:.2f} ms | {percentile(kafka, 99):.2f} ms "
            f"| {sum(kafka) / len(kafka):.2f} ms | {l50:.3f} ms "
            f"| {percentile(local, 99):.3f} ms | {k50 / l50:.0f}x |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--pause-ms", type=float, default=0.0, help="wait before each query")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        stack = Stack(Path(tmp))
        print("starting the embedded stack ...", flush=True)
        stack.start()
        try:
            asyncio.run(run(stack, args.images, args.queries, args.pause_ms))
        finally:
            stack.stop()


if __name__ == "__main__":
    main()
