"""Search request throughput through Kafka: a flood of by-id requests, `--in-flight` at a time,
against the indexer answering a poll's requests as one batch (LOOKALIKE_SEARCH_BATCH_MAX=256)
and one request per poll (=1, the naive way), next to the same queries answered in-process.

Each configuration gets a fresh embedded stack (phash and colour), `--images` uploads, then
`--requests` phash queries by id from one SearchClient.

    .venv/bin/python -m bench.search_throughput --images 300 --requests 2000 --in-flight 64
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from consumers.features.catalog import PHASH
from consumers.features.decode import decode_image
from consumers.indexer.query import QueryEngine
from index_store.engines.hamming import HammingEngine
from index_store.feature_index import FeatureIndex
from index_store.lmdb_store import FeatureStore, ImageRecord, Upsert
from lookalike.s3 import s3_client
from lookalike.samples import distinct_jpegs
from lookalike.stack import Stack
from producers.search_client import SearchClient
from producers.uploads import upload_bytes
from schemas.search import SearchRequest
from schemas.settings import Settings

LIGHT = {"LOOKALIKE_FEATURES": "phash,colour", "LOOKALIKE_EXTRACTOR_POOLS": "phash,colour"}


async def flood(settings: Settings, ids: list[str], requests: int, in_flight: int) -> list[float]:
    """Latencies (s) of `requests` by-id searches, `in_flight` at a time."""
    latencies: list[float] = []
    gate = asyncio.Semaphore(in_flight)
    async with SearchClient(settings) as client:
        await client.search(SearchRequest(feature="phash", image_id=ids[0]))  # warm

        async def one(i: int) -> None:
            async with gate:
                started = time.perf_counter()
                reply = await client.search(
                    SearchRequest(feature="phash", image_id=ids[i % len(ids)], k=10), timeout=30
                )
                latencies.append(time.perf_counter() - started)
                assert reply.ok, reply.error

        began = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(requests)))
        latencies.append(-(time.perf_counter() - began))  # last: the wall time, negated
    return latencies


async def measure(batch_max: int, pictures: list[bytes], args: argparse.Namespace) -> str:
    with tempfile.TemporaryDirectory(prefix="throughput-") as tmp:
        env = {**LIGHT, "LOOKALIKE_SEARCH_BATCH_MAX": str(batch_max)}
        stack = Stack(Path(tmp), env=env)
        stack.start()
        try:
            settings = stack.settings
            s3 = s3_client(settings)
            ids = []
            for i, data in enumerate(pictures):
                upload_bytes(s3, settings.bucket, f"tp/{i:05d}.jpg", data)
                ids.append(f"{settings.bucket}/tp/{i:05d}.jpg")
            async with SearchClient(settings) as client:
                for image_id in ids:  # every image indexed before the flood
                    for _ in range(600):
                        query = SearchRequest(feature="phash", image_id=image_id)
                        if (await client.search(query)).ok:
                            break
                        await asyncio.sleep(0.2)
            latencies = await flood(settings, ids, args.requests, args.in_flight)
        finally:
            stack.stop()
    wall = -latencies.pop()
    ms = np.array(latencies) * 1000
    return (
        f"| through Kafka, batch up to {batch_max} | {args.requests / wall:,.0f} "
        f"| {np.percentile(ms, 50):.1f} | {np.percentile(ms, 99):.1f} |"
    )


def in_process(pictures: list[bytes], requests: int) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        store = FeatureStore(Path(tmp))
        index = FeatureIndex(store, PHASH.index_name, HammingEngine(PHASH.vector_bytes))
        images = [decode_image(p, max_pixels=10**8) for p in pictures]
        vectors = PHASH.describe_batch(images)
        index.apply(
            [
                Upsert(f"images/tp/{i:05d}.jpg", v, ImageRecord(bucket="images", key=f"{i}"))
                for i, v in enumerate(vectors)
            ],
            {},
        )
        engine = QueryEngine(Settings(_env_file=None), {"phash": PHASH}, {"phash": index})
        took = []
        began = time.perf_counter()
        for i in range(requests):
            started = time.perf_counter()
            engine.answer(
                SearchRequest(feature="phash", image_id=f"images/tp/{i % len(images):05d}.jpg")
            )
            took.append(time.perf_counter() - started)
        wall = time.perf_counter() - began
        store.close()
    ms = np.array(took) * 1000
    return (
        f"| in-process (QueryEngine.answer, one thread) | {requests / wall:,.0f} "
        f"| {np.percentile(ms, 50):.2f} | {np.percentile(ms, 99):.2f} |"
    )


async def main_async(args: argparse.Namespace) -> None:
    pictures = distinct_jpegs(args.images, size=(160, 120), seed=3)
    rows = [in_process(pictures, args.requests)]
    for batch_max in (1, 256):
        rows.append(await measure(batch_max, pictures, args))
    print(
        f"\n## Search throughput ({os.cpu_count()} CPUs; {args.requests:,} phash by-id requests, "
        f"{args.in_flight} in flight, {args.images} images)\n"
    )
    print("| way | requests/s | p50 ms | p99 ms |")
    print("| --- | --- | --- | --- |")
    print("\n".join(rows))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--in-flight", type=int, default=64)
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
