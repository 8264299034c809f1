"""Upload -> searchable latency on the embedded stack.

Uploads N distinct 640x480 JPEGs at a steady rate through S3 and times, for each, from the
moment the PUT returned to the moment the indexer announced it searchable (its
SimilarityResult, published after the index and LMDB were updated). Spot-checks a sample of
ids through the search topic afterwards.

    .venv/bin/python -m bench.freshness --count 300 --rate 20
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.workload import IndexedListener, percentile
from lookalike.s3 import s3_client
from lookalike.samples import distinct_jpegs
from lookalike.stack import Stack
from producers.search_client import SearchClient
from producers.uploads import upload_bytes
from schemas.search import SearchRequest


async def run(stack: Stack, count: int, rate: float) -> None:
    settings = stack.settings
    images = distinct_jpegs(count)
    s3 = s3_client(settings)
    listener = IndexedListener(settings)
    await listener.start()
    # Warm up: the first upload also waits for the extractor to join its consumer group.
    cold = time.perf_counter()
    upload_bytes(s3, settings.bucket, "fresh/warmup.jpg", distinct_jpegs(1, seed=99)[0])
    await listener.wait_until(lambda: len(listener.seen) > 0, timeout=60)
    print(f"  warm-up image searchable after {time.perf_counter() - cold:.2f}s (cold start)")
    listener.seen.clear()
    listener.seen_by_feature.clear()
    uploaded: dict[str, float] = {}
    loop = asyncio.get_running_loop()
    pool = ThreadPoolExecutor(max_workers=8)

    async def put(i: int, data: bytes) -> None:
        key = f"fresh/{i:05d}.jpg"
        await loop.run_in_executor(pool, upload_bytes, s3, settings.bucket, key, data)
        uploaded[f"{settings.bucket}/{key}"] = time.perf_counter()

    started = time.perf_counter()
    puts = []
    for i, data in enumerate(images):
        target = started + i / rate
        await asyncio.sleep(max(0.0, target - time.perf_counter()))
        puts.append(asyncio.create_task(put(i, data)))
        if i % 50 == 0:
            print(f"  uploaded {i}/{count}, indexed {len(listener.seen)}", flush=True)
    await asyncio.gather(*puts)
    upload_span = time.perf_counter() - started
    features = settings.feature_names

    def all_indexed() -> bool:
        return all(set(uploaded) <= set(listener.seen_by_feature.get(f, {})) for f in features)

    await listener.wait_until(all_indexed, timeout=120)
    await listener.stop()
    async with SearchClient(settings) as client:
        sample = sorted(uploaded)[:: max(1, count // 20)]
        replies = [
            await client.search(SearchRequest(feature="phash", image_id=i, k=1)) for i in sample
        ]
    searchable = sum(r.ok for r in replies)

    print(
        f"\nFreshness: {count} uploads at {count / upload_span:.1f}/s (asked {rate:g}/s) on "
        f"{platform.node()} ({platform.machine()}); spot-checked by search: "
        f"{searchable}/{len(sample)} found"
    )
    print("| index | indexed | p50 | p90 | p99 | max | throughput |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for feature in features:
        seen = listener.seen_by_feature.get(feature, {})
        ms = [(seen[i] - t) * 1000 for i, t in uploaded.items() if i in seen]
        span = (max(seen.values()) - started) if seen else float("nan")
        print(
            f"| {feature} | {len(ms)}/{count} | {percentile(ms, 50):.0f} ms "
            f"| {percentile(ms, 90):.0f} ms | {percentile(ms, 99):.0f} ms "
            f"| {max(ms, default=float('nan')):.0f} ms | {len(ms) / span:.1f}/s |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--extractors", type=int, default=1)
    parser.add_argument(
        "--models",
        type=Path,
        help="keep the CLIP extractor's built int8 graph here between runs, as the compose "
        "volume does (the first run builds it while it serves; later runs start with it)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.models is not None:
            args.models.mkdir(parents=True, exist_ok=True)
            (Path(tmp) / "models").symlink_to(args.models.resolve(), target_is_directory=True)
        stack = Stack(Path(tmp), extractors=args.extractors)
        print("starting the embedded stack ...", flush=True)
        stack.start()
        try:
            asyncio.run(run(stack, args.count, args.rate))
        finally:
            stack.stop()


if __name__ == "__main__":
    main()
