"""Copy detection through the running stack (issue 15): the held-out copy set uploaded to S3,
described by the stack's extractor, indexed by its indexer, asked through the search topic.

    .venv/bin/python -m bench.copy_detection                      # 2,000 originals, 900 queries
    .venv/bin/python -m bench.copy_detection --originals 10000

The set is bench/copy_set.py's (seed 2026: originals cut from 16 photographs, overlapping;
copies through crops, turns, captions, logos, padding, colour changes and pairs of them;
non-copies cut from photographs kept outside the gallery). Right answers are by content: a
copy's right answers are every original containing all the pixels it shows. Only the
held-out half (copies of odd-numbered originals, odd-numbered non-copies) is reported; the
shipped copy scorer and every alert threshold were chosen on the tuning half.

Each query image goes to each feature's search (`SearchRequest(feature=..., image=...)`) through
the request-reply topic, as a user's would: `phash`, `copy` (the copy codes alone) and
`keypoints` (the copy feature's verification: candidates from keypoint votes and the copy
codes, aligned and scored, consumers/indexer/copy_verification.py). Printed: recall@1 per
kind of transform, the verdicts at each feature's product threshold (its alert threshold:
FeatureSpec.alert_max_distance) and at the threshold the tuning half would choose, query
latency through the topic per feature, the CPU each of the stack's processes used while the
queries were asked (Linux: /proc), and the store of record's size per image.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import tempfile
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from bench import copy_verdicts as verdicts
from bench.copy_scale import found, kind_column, recall_row
from bench.copy_set import CopySet, add_set_options, copy_set
from bench.workload import IndexedListener, percentile
from consumers.features.catalog import COPY, KEYPOINTS, PHASH
from lookalike.s3 import s3_client
from lookalike.samples import jpeg
from lookalike.stack import Stack
from producers.search_client import SearchClient
from producers.uploads import upload_bytes
from schemas.search import SearchRequest

FEATURES = (PHASH, COPY, KEYPOINTS)
PREFIX = "copies/"
Hits = list[tuple[str, float]]  # (gallery number, distance), nearest first


async def upload_and_index(stack: Stack, copies: CopySet) -> float:
    """Upload the originals; wait until every feature has indexed all of them. Seconds."""
    settings = stack.settings
    s3 = s3_client(settings)
    listener = IndexedListener(settings)
    await listener.start()
    started = time.perf_counter()
    ids = set()
    for n, original in enumerate(copies.gallery):
        key = f"{PREFIX}{n:05d}.jpg"
        await asyncio.to_thread(upload_bytes, s3, settings.bucket, key, jpeg(original))
        ids.add(f"{settings.bucket}/{key}")
        if n % 500 == 0:
            print(f"  uploaded {n}/{len(copies.gallery)}", flush=True)

    def indexed() -> int:
        return min(len(ids & listener.seen_by_feature.get(f.name, {}).keys()) for f in FEATURES)

    while not await listener.wait_until(lambda: indexed() == len(ids), timeout=30):
        print(f"  indexed by every feature: {indexed()}/{len(ids)}", flush=True)
    took = time.perf_counter() - started
    # Each image's joined alert (a fused query, verified) follows, and one the slowest feature
    # has not reached within the deadline goes out partial, then again once it has: queries
    # asked while those still run would be timed against them. Wait until alerts stop (a
    # stack that publishes none: one wait).
    quiet = stack.settings.image_alert_deadline_s + 5
    while await listener.wait_until(partial(more_alerts, listener, listener.alerts), quiet):
        pass  # another alert within `quiet` seconds
    print(f"  image alerts: {listener.alerts} ({listener.partial} partial); none for {quiet:.0f}s "
          f"after {time.perf_counter() - started:.0f}s", flush=True)  # fmt: skip
    await listener.stop()
    return took


def more_alerts(listener: IndexedListener, than: int) -> bool:
    return listener.alerts > than


def number_of(image_id: str) -> str:
    """The gallery number of an uploaded original's id."""
    return image_id.rsplit("/", 1)[-1].removesuffix(".jpg")


@dataclass
class Took:
    """Milliseconds per query of one feature: through the topic (asked to answered, as the
    asker sees it), and in the indexer (its reply's `took_ms`: decoding, describing, searching)."""

    through: list[float] = field(default_factory=list)
    indexer: list[float] = field(default_factory=list)


async def ask_all(
    stack: Stack, copies: CopySet, k: int
) -> tuple[dict[str, list[Hits]], dict[str, Took]]:
    """Every query through every feature's search: hits and milliseconds, by feature."""
    hits: dict[str, list[Hits]] = {f.name: [] for f in FEATURES}
    took: dict[str, Took] = {f.name: Took() for f in FEATURES}
    asked = copies.asked
    async with SearchClient(stack.settings) as client:
        for n, query in enumerate(asked):
            for feature in FEATURES:
                # The hash features' ties need every right answer in view; a verified search
                # is judged by its first hit, and asked as a user would (SearchRequest's k).
                depth = SearchRequest.model_fields["k"].default if feature is KEYPOINTS else k
                request = SearchRequest(feature=feature.name, image=query.data, k=depth)
                started = time.perf_counter()
                reply = await client.search(request)
                took[feature.name].through.append(1000 * (time.perf_counter() - started))
                took[feature.name].indexer.append(reply.took_ms)
                if not reply.ok or reply.partial:
                    raise RuntimeError(f"{feature.name} query {n}: {reply.error or 'partial'}")
                hits[feature.name].append([(number_of(h.image_id), h.distance) for h in reply.hits])
            if n % 100 == 0:
                print(f"  asked {n}/{len(asked)}", flush=True)
    return hits, took


def report(
    copies: CopySet,
    hits: dict[str, list[Hits]],
    took: dict[str, Took],
    precision: float,
) -> None:
    asked, right, tune = copies.asked, copies.by_content, copies.tuning
    kinds = [q.kind for q in asked]
    is_copy = np.array([len(r) > 0 for r in right])
    held = ~tune
    columns = sorted({kind_column(k) for k in kinds[: len(copies.queries)]})
    print(f"\n## Copy detection through the stack: held-out half, {int((held & is_copy).sum())} "
          f"copies, {int((held & ~is_copy).sum())} non-copies, {len(copies.gallery):,} "
          "originals indexed\n")  # fmt: skip
    print("Recall@1 (right: any original containing every pixel the copy shows):\n")
    print("| feature | recall@1 | " + " | ".join(columns) + " |")
    print("| --- | --- | " + " | ".join("---" for _ in columns) + " |")
    correct = {name: found(h, right) for name, h in hits.items()}
    for feature in FEATURES:
        print(recall_row(feature.name, correct[feature.name], kinds, held & is_copy, columns))
    print(f"\nVerdicts: copy when the nearest is within the threshold (precision target "
          f"{precision}; right when the nearest is a right answer):\n")  # fmt: skip
    print(verdicts.HEADER)
    for feature in FEATURES:
        nearest = np.array([h[0][1] if h else np.inf for h in hits[feature.name]])
        for rule, fixed in (("product threshold", feature.alert_max_distance),
                            ("chosen on the tuning half", None)):  # fmt: skip
            name = f"{feature.name}, {rule}"
            row = verdicts.verdict_row(
                name, nearest, correct[feature.name], is_copy, tune, precision, -1, fixed
            )
            print(row)
    print("\nQuery latency through the search topic (every query, one at a time; in the "
          "indexer: its reply's took_ms, the rest is the topic's round trip):\n")  # fmt: skip
    print("| feature | p50 ms | p90 ms | p99 ms | in the indexer p50 ms | p90 ms |")
    print("| --- | --- | --- | --- | --- | --- |")
    for feature in FEATURES:
        ms, inside = took[feature.name].through, took[feature.name].indexer
        print(f"| {feature.name} | {percentile(ms, 50):.1f} | {percentile(ms, 90):.1f} | "
              f"{percentile(ms, 99):.1f} | {percentile(inside, 50):.1f} | "
              f"{percentile(inside, 90):.1f} |")  # fmt: skip


def cpu_seconds(stack: Stack) -> dict[str, float]:
    """CPU time (user + system) each of the stack's processes, and this one, used so far."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {"this benchmark (the asking client)": sum(os.times()[:2])}
    for process in stack.processes():
        if process.pid is None:
            continue
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{process.pid}/stat").read_text()
            fields = stat.rpartition(")")[2].split()  # after the command's name
            out[process.name] = (int(fields[11]) + int(fields[12])) / tick
    return out


def print_cpu(before: dict[str, float], after: dict[str, float], wall: float, asked: int) -> None:
    print(f"\nCPU used while the queries were asked ({asked:,} requests in {wall:.0f} s; two "
          "cores give 200 %):\n")  # fmt: skip
    print("| process | CPU % | CPU ms per request |\n| --- | --- | --- |")
    for name, seconds in after.items():
        used = seconds - before.get(name, 0.0)
        print(f"| {name} | {100 * used / wall:.0f} | {1000 * used / asked:.1f} |")


def store_bytes(stack: Stack) -> int:
    return sum(f.stat().st_size for f in (stack.settings.index_dir / "store").rglob("*"))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_set_options(parser)
    args = parser.parse_args()
    started = time.perf_counter()
    copies = copy_set(args.originals, args.queries, args.seed, args.non_copies)
    k = max(len(r) for r in copies.by_content) + 1  # enough to see a wrong one past the right
    print(f"set made in {time.perf_counter() - started:.0f}s", flush=True)
    names = ",".join(f.name for f in FEATURES)
    env = {"LOOKALIKE_FEATURES": names, "LOOKALIKE_EXTRACTOR_POOLS": names}
    with tempfile.TemporaryDirectory() as tmp:
        stack = Stack(Path(tmp), env=env, http=False)
        print("starting the embedded stack ...", flush=True)
        stack.start()
        try:
            took_s = asyncio.run(upload_and_index(stack, copies))
            print(f"indexed in {took_s:.0f}s", flush=True)
            cpu_before, asked_at = cpu_seconds(stack), time.perf_counter()
            hits, took = asyncio.run(ask_all(stack, copies, k))
            asking_s = time.perf_counter() - asked_at
            cpu_after = cpu_seconds(stack)
            stored = store_bytes(stack)
        finally:
            stack.stop()
    report(copies, hits, took, args.precision)
    print_cpu(cpu_before, cpu_after, asking_s, len(copies.asked) * len(FEATURES))
    print(f"\nstore of record on disk: {stored / len(copies.gallery) / 1024:.1f} KiB per image "
          f"({names}); {platform.node()}, {time.perf_counter() - started:.0f}s in all")  # fmt: skip


if __name__ == "__main__":
    main()
