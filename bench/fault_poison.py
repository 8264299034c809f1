"""Bad input for the fault benchmark, and a watcher that counts what reached the dead-letter
topic: malformed bucket notifications, undecodable or truncated images, and schema-valid
feature events whose vector has the wrong size for the index they name."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from collections import defaultdict
from collections.abc import Callable

import numpy as np
from aiokafka import AIOKafkaConsumer, TopicPartition

from consumers.features import colour_histogram, copy_signature, phash
from schemas.dead_letter import DeadLetter
from schemas.features import FeatureEvent, FeatureOp, VectorKind
from schemas.kafka import make_consumer
from schemas.message import MessageError
from schemas.settings import Settings

MALFORMED_PREFIX = "faults-malformed/"


def malformed_notification(i: int, bucket: str) -> tuple[bytes, bytes | None]:
    """(key, value) of the i-th malformed notification; every kind must be dead-lettered."""
    key = f"{bucket}/{MALFORMED_PREFIX}{i:05d}.jpg"
    record_key = f"{MALFORMED_PREFIX}{i:05d}.jpg"

    def records(*items: object) -> bytes:
        return json.dumps({"EventName": "s3:ObjectCreated:Put", "Records": list(items)}).encode()

    s3 = {"bucket": {"name": bucket}, "object": {"key": record_key, "size": 10, "eTag": "x"}}
    kinds: list[Callable[[], bytes | None]] = [
        lambda: random.Random(i).randbytes(64),  # binary garbage
        lambda: b'{"Records": [ not json',
        lambda: b"[1, 2, 3]",  # JSON, not an object
        lambda: b'{"Records": []}',  # no records
        lambda: b'{"EventName": "s3:ObjectCreated:Put", "Key": "images/x.jpg"}',
        lambda: records({"eventName": "s3:ObjectMangled:Put", "s3": s3}),  # unknown type
        lambda: records({"eventName": "s3:ObjectCreated:Put"}),  # no s3 block
        lambda: records({"eventName": "Garbage", "s3": s3}),  # no class:action
        lambda: records(42),  # record is not an object
        lambda: records(
            {"eventName": "s3:ObjectCreated:Put", "s3": {"bucket": {"name": ""}, "object": {}}}
        ),
        lambda: None,  # tombstone
    ]
    return key.encode(), kinds[i % len(kinds)]()


def poison_images(
    good_jpeg: Callable[[], bytes], count: int, rng: random.Random
) -> list[tuple[str, bytes]]:
    """(name suffix, bytes): undecodable files with .jpg names and truncated JPEGs."""
    out: list[tuple[str, bytes]] = []
    for i in range(count):
        kind = i % 6
        if kind == 0:
            out.append(("random", rng.randbytes(2048)))
        elif kind == 1:
            out.append(("text", b"this is not a picture, whatever the name says\n" * 20))
        elif kind == 2:
            out.append(("empty", b""))
        elif kind == 3:
            out.append(("png-garbage", b"\x89PNG\r\n\x1a\n" + rng.randbytes(500)))
        elif kind == 4:
            data = good_jpeg()
            out.append(("truncated-half", data[: len(data) // 2]))
        else:
            data = good_jpeg()
            out.append(("header-only", data[:300]))
    return out


def _wrong_vectors(feature: str) -> list[tuple[VectorKind, int]]:
    """(kind, dim) pairs that are schema-valid but wrong for the feature's index."""
    if feature == "phash":
        # 64 bits (an ordinary pHash); 18 float32 = 72 bytes, the byte size of the real 576 bits.
        return [(VectorKind.BITS, 64), (VectorKind.FLOAT32, phash.BITS // 32)]
    if feature == "copy":
        return [(VectorKind.BITS, copy_signature.CODE_BITS), (VectorKind.BITS, 64)]
    if feature == "colour":
        return [(VectorKind.FLOAT32, 16), (VectorKind.FLOAT32, colour_histogram.DIM + 1)]
    return [(VectorKind.FLOAT32, 7), (VectorKind.BITS, 512)]


def poison_feature_events(
    feature: str, version: str, image_ids: list[str], rng: random.Random
) -> list[FeatureEvent]:
    """One upsert per image id, the serving version, a wrong-size vector, a made-up eTag (so
    an event that was applied shows as stale, or as a ghost where the id is not in the bucket)."""
    events = []
    choices = _wrong_vectors(feature)
    for n, image_id in enumerate(image_ids):
        kind, dim = choices[n % len(choices)]
        size = (dim + 7) // 8 if kind is VectorKind.BITS else dim * 4
        vector = (
            rng.randbytes(size)
            if kind is VectorKind.BITS
            else np.full(dim, 1.0 / dim, dtype=np.float32).tobytes()
        )
        bucket, _, key = image_id.partition("/")
        events.append(
            FeatureEvent(
                op=FeatureOp.UPSERT,
                image_id=image_id,
                bucket=bucket,
                key=key,
                feature=feature,
                feature_version=version,
                etag=f"poison{n:04d}",
                size=size,
                vector_kind=kind,
                dim=dim,
                vector=vector,
            )
        )
    return events


async def serving_versions(settings: Settings, timeout: float = 10.0) -> dict[str, str]:
    """feature -> the version the extractors publish now, read off the newest events of each
    feature topic (the indexers serve what the extractors make)."""
    consumer = make_consumer(settings, group_id=None)
    await consumer.start()
    versions: dict[str, str] = {}
    try:
        await consumer.topics()  # every topic's partitions now: an assignment narrows metadata
        feature_of = {settings.features_topic(f): f for f in settings.feature_names}
        tps = [
            TopicPartition(topic, p)
            for topic in feature_of
            for p in consumer.partitions_for_topic(topic) or ()
        ]
        ends = await consumer.end_offsets(tps)
        tps = [tp for tp in tps if ends[tp] > 0]
        consumer.assign(tps)
        for tp in tps:  # a few back: Tansu may report a batch's first offset + 1 as the end
            consumer.seek(tp, max(0, ends[tp] - 3))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(versions) < len({tp.topic for tp in tps}) and loop.time() < deadline:
            for tp, records in (await consumer.getmany(timeout_ms=500)).items():
                for record in records:
                    try:
                        event = FeatureEvent.from_bytes(record.value)
                    except MessageError:
                        continue
                    versions[feature_of[tp.topic]] = event.feature_version
    finally:
        await consumer.stop()
    return versions


class DeadLetterWatch:
    """Reads the dead-letter topic from its end on: what was dead-lettered, by whom, from where.
    Start one after any broker restart (offsets of an older broker mean nothing)."""

    def __init__(self, settings: Settings) -> None:
        self._topic = settings.dead_letter_topic
        self._consumer: AIOKafkaConsumer = make_consumer(settings, group_id=None)
        self._task: asyncio.Task[None] | None = None
        self.seen: set[tuple[str, str, str]] = set()  # (stage, source topic, original key)
        self.letters = 0
        self.reasons: dict[str, int] = defaultdict(int)
        self._arrived = asyncio.Event()

    async def start(self) -> None:
        await self._consumer.start()
        await self._consumer.topics()
        parts = self._consumer.partitions_for_topic(self._topic) or set()
        tps = [TopicPartition(self._topic, p) for p in sorted(parts)]
        self._consumer.assign(tps)
        await self._consumer.seek_to_end(*tps)
        for tp in tps:
            await self._consumer.position(tp)
        self._task = asyncio.create_task(self._read(), name="dead-letter-watch")

    async def _read(self) -> None:
        while True:
            batches = await self._consumer.getmany(timeout_ms=200)
            for records in batches.values():
                for record in records:
                    try:
                        letter = DeadLetter.from_bytes(record.value)
                    except MessageError:
                        continue
                    self.letters += 1
                    key = (letter.key or b"").decode(errors="replace")
                    self.seen.add((letter.stage, letter.source_topic, key))
                    self.reasons[f"{letter.stage}: {letter.reason[:40]}"] += 1
                self._arrived.set()

    def count(self, wanted: set[tuple[str, str]], stage: str | None = None) -> int:
        """How many of the (source topic, key) pairs were dead-lettered (by `stage`, or any)."""
        got = {(topic, key) for s, topic, key in self.seen if stage is None or s == stage}
        return len(wanted & got)

    async def wait_for(
        self, wanted: set[tuple[str, str]], timeout: float, stage: str | None = None
    ) -> int:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while self.count(wanted, stage) < len(wanted):
                    self._arrived.clear()
                    await self._arrived.wait()
        return self.count(wanted, stage)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        await self._consumer.stop()
