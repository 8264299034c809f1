"""Bulk re-extraction end to end: bucket scan -> GPU extractors -> feature topic -> indexers.

    python -m bench.bulk_reextract --images 100000 --extractors 3 --shards 2

The bucket is seeded with `--images` JPEGs (640x480; `--distinct` pictures cycled) through
nanio's storage layer before the stack starts (not timed), and reconciliation is held off, so
the CLIP index starts empty and the only work is the re-extraction: what filling the index of
a new feature version costs. Then the embedded stack runs one extractor pool, `clip`, of
`--extractors` processes on the GPU (batches of up to `--batch` events) and `--shards` CPU
indexers; `lookalike reextract`'s scan publishes a created event per object, and the run ends
when the indexers' CLIP indexes hold every image.

Printed: images/s end to end; when each stage (events published by the scan, feature events
published by the extractors, images indexed) passed 25/50/75/100 %; and where the extractors'
time went (S3 fetch, the GPU describe stage, publishing, waiting for events), which says
whether the GPU stage is what the others wait on.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import AsyncIterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from pathlib import Path

from lookalike.embedded import Infrastructure, free_port, wait_for_port
from lookalike.s3 import s3_client
from lookalike.samples import distinct_jpegs
from lookalike.stack import Stack
from producers.backfill import reextract
from schemas.kafka import make_producer
from schemas.settings import Settings

STAGES = ("published", "extracted", "indexed")


PICTURES: list[bytes] = []  # set before the seeding processes fork


def seed_range(s3_dir: Path, bucket: str, start: int, stop: int) -> int:
    """Store objects `start`..`stop` (one seeding process's share; nanio fsyncs each)."""
    from nanio.storage.filesystem import FilesystemStorage

    storage = FilesystemStorage(s3_dir)

    async def body(data: bytes) -> AsyncIterator[bytes]:
        yield data

    async def put_all() -> None:
        for first in range(start, stop, 200):
            await asyncio.gather(
                *(
                    storage.put_object(
                        bucket,
                        f"bulk/{i:07d}.jpg",
                        body(PICTURES[i % len(PICTURES)]),
                        content_type="image/jpeg",
                    )
                    for i in range(first, min(stop, first + 200))
                )
            )

    asyncio.run(put_all())
    return stop - start


def seed_bucket(s3_dir: Path, bucket: str, count: int, distinct: int) -> None:
    from nanio.storage.filesystem import FilesystemStorage

    FilesystemStorage(s3_dir).create_bucket(bucket)
    PICTURES[:] = distinct_jpegs(distinct)
    step = 2000
    workers = max(1, min(16, os.cpu_count() or 1))
    seeded = 0
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
        shares = [
            pool.submit(seed_range, s3_dir, bucket, first, min(count, first + step))
            for first in range(0, count, step)
        ]
        for share in as_completed(shares):
            seeded += share.result()
            if seeded % 20_000 == 0 or seeded == count:
                print(f"  seeded {seeded:,}/{count:,}", flush=True)


def scrape(url: str, metric: str, label: str) -> float:
    """Sum of `metric` samples whose labels contain `label`."""
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    total = 0.0
    for match in re.finditer(rf"^{metric}\{{([^}}]*)\}} (\S+)$", text, re.MULTILINE):
        if label in match.group(1):
            total += float(match.group(2))
    return total


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--distinct", type=int, default=2000)
    parser.add_argument("--extractors", type=int, default=3)
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--partitions", type=int, default=12)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--device", default="cuda")
    parser.add_argument(
        "--s3-workers",
        type=int,
        default=0,
        help="serve reads from a nanio of this many worker processes on the same data "
        "(0: the embedded gateway alone, one process, serves them)",
    )
    parser.add_argument(
        "--limit-s", type=float, default=1800, help="report what was done by then and stop"
    )
    args = parser.parse_args()

    data_dir = Path(tempfile.mkdtemp(prefix="bulk-reextract-"))
    env = {
        "LOOKALIKE_FEATURES": "clip",
        "LOOKALIKE_EXTRACTOR_POOLS": "clip",
        "LOOKALIKE_DEVICE": args.device,
        "LOOKALIKE_PARTITIONS": str(args.partitions),
        "LOOKALIKE_EXTRACT_BATCH_MAX": str(args.batch),
        "LOOKALIKE_RECONCILE_AT_START": "false",
        "LOOKALIKE_RECONCILE_INTERVAL_S": "0",
        "LOOKALIKE_RECONCILE_GRACE_S": "1000000",
        "LOOKALIKE_LOG_LEVEL": "warning",
    }
    bucket = Settings(_env_file=None).bucket
    started = time.perf_counter()
    seed_bucket(data_dir / "s3", bucket, args.images, args.distinct)
    print(f"bucket seeded in {time.perf_counter() - started:.0f} s; starting the stack", flush=True)
    readers = start_readers(data_dir / "s3", args.s3_workers, env) if args.s3_workers else None
    stack = Stack(data_dir, extractors=args.extractors, shards=args.shards, env=env, http=False)
    stack.start()
    try:
        probe_s3(stack.settings, min(args.images, 20_000), threads=32 * args.extractors)
        run(stack, args.images, args.extractors, args.limit_s)
    finally:
        stack.stop()
        if readers is not None:
            readers.terminate()
            readers.wait(timeout=10)


def probe_s3(settings: Settings, count: int, threads: int) -> None:
    """The S3 server's read rate alone: `count` GETs from `threads` threads (as many as the
    extractors fetch with), what the extractors' fetch stage can at best reach."""
    s3 = s3_client(settings.model_copy(update={"s3_connections": threads}))

    def get(i: int) -> int:
        response = s3.get_object(settings.bucket, f"bulk/{i:07d}.jpg")
        try:
            return len(response.read())
        finally:
            response.close()
            response.release_conn()

    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        got = sum(pool.map(get, range(count)))
    took = time.perf_counter() - started
    print(
        f"S3 reads alone: {count:,} GETs from {threads} threads in {took:.1f} s = "
        f"{count / took:,.0f}/s ({got / took / 1e6:,.0f} MB/s)",
        flush=True,
    )


def start_readers(s3_dir: Path, workers: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """A multi-process nanio on the bucket's data directory, for the reads (extractor fetches,
    the scan's listing); `env` then points the stack's S3 endpoint at it. Writes would skip the
    gateway's bucket events, and there are none in this benchmark."""
    infra = Infrastructure(s3_dir.parent)
    port = free_port()
    argv = [sys.executable, "-m", "nanio", "serve", "--data-dir", str(s3_dir), "--host"]
    argv += ["127.0.0.1", "--port", str(port), "--workers", str(workers), "--no-access-log"]
    argv += ["--log-level", "warning"]
    keys = {"NANIO_ACCESS_KEY": infra.access_key, "NANIO_SECRET_KEY": infra.secret_key}
    proc = subprocess.Popen(argv, env={**os.environ, **keys})
    wait_for_port(port, proc)
    env["LOOKALIKE_S3_ENDPOINT"] = f"127.0.0.1:{port}"
    return proc


def run(stack: Stack, images: int, extractors: int, limit_s: float) -> None:
    settings = stack.settings
    ports = stack.infra.metrics_ports
    extractor_urls = [f"http://127.0.0.1:{ports[p.name]}/metrics" for p in stack.extractors]
    indexer_urls = [f"http://127.0.0.1:{ports[p.name]}/metrics" for p in stack.indexers.values()]
    feature_topic = settings.features_topic("clip")
    reached: dict[str, dict[int, float]] = {stage: {} for stage in STAGES}
    published = 0

    def progress(state: object) -> None:
        nonlocal published
        published = int(getattr(state, "published", 0))

    async def scan() -> None:
        producer = make_producer(settings)
        await producer.start()
        try:
            await reextract(settings, s3_client(settings), producer, progress=progress)
        finally:
            await producer.stop()

    t0 = time.perf_counter()
    scanning = threading.Thread(target=lambda: asyncio.run(scan()), daemon=True)
    scanning.start()
    done = {"published": 0.0, "extracted": 0.0, "indexed": 0.0}
    shown = 0.0
    while done["indexed"] < images:
        time.sleep(0.5)
        done["published"] = float(published)
        done["extracted"] = sum(
            scrape(url, "lookalike_messages_out_total", feature_topic) for url in extractor_urls
        )
        done["indexed"] = sum(scrape(url, "lookalike_index_images", "clip") for url in indexer_urls)
        now = time.perf_counter() - t0
        for stage in STAGES:
            for quarter in (25, 50, 75, 100):
                if done[stage] >= images * quarter / 100 and quarter not in reached[stage]:
                    reached[stage][quarter] = now
        if now - shown >= 5 or done["indexed"] >= images:
            shown = now
            print(
                f"  {now:6.1f} s  published {done['published']:,.0f}  extracted "
                f"{done['extracted']:,.0f}  indexed {done['indexed']:,.0f}",
                flush=True,
            )
        if now > limit_s:
            print(f"NOT FINISHED in {limit_s:.0f} s: {done['indexed']:,.0f} images indexed")
            images = max(1, int(done["indexed"]))
            break
    wall = time.perf_counter() - t0
    scanning.join(timeout=5)
    stage_seconds = {
        stage: sum(
            scrape(url, "lookalike_extractor_stage_seconds_sum", f'stage="{stage}"')
            for url in extractor_urls
        )
        for stage in ("fetch", "describe", "publish")
    }
    batches = sum(
        scrape(url, "lookalike_extractor_stage_seconds_count", 'stage="describe"')
        for url in extractor_urls
    )

    print(f"\nBulk re-extraction of {images:,} images: {wall:.1f} s, {images / wall:,.0f} images/s")
    print("| stage | 25 % | 50 % | 75 % | 100 % | rate to 100 % |")
    print("| --- | --- | --- | --- | --- | --- |")
    for stage in STAGES:
        cells = [f"{reached[stage].get(q, float('nan')):.1f} s" for q in (25, 50, 75, 100)]
        rate = images / reached[stage][100] if 100 in reached[stage] else float("nan")
        print(f"| {stage} | " + " | ".join(cells) + f" | {rate:,.0f}/s |")
    extracting = reached["extracted"].get(100, wall) * extractors
    print(
        f"\nwhere the extractors' time went ({extractors} processes x "
        f"{extracting / extractors:.1f} s; {batches:,.0f} batches, "
        f"{images / max(batches, 1):.0f} images each on average)"
    )
    print("| extractor stage | seconds | share |")
    print("| --- | --- | --- |")
    labels = {
        "fetch": "fetch (S3 reads)",
        "describe": "describe (GPU: nvJPEG decode, resize, CLIP)",
        "publish": "publish (feature events acknowledged, commit)",
    }
    for stage, seconds in stage_seconds.items():
        print(f"| {labels[stage]} | {seconds:.1f} | {seconds / extracting:.0%} |")
    waiting = extracting - sum(stage_seconds.values())
    print(f"| waiting for events (polls) | {waiting:.1f} | {waiting / extracting:.0%} |")


if __name__ == "__main__":
    main()
