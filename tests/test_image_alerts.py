"""One alert per uploaded image, joined across every feature, with the copies it has (real
broker and S3; the session stack runs phash, colour, copy, keypoints and CLIP in two extractor
groups)."""

from __future__ import annotations

import asyncio
import io
import uuid

from aiokafka import TopicPartition
from minio import Minio
from PIL import Image

from lookalike.samples import distinct_jpegs, jpeg
from producers.uploads import upload_bytes
from schemas.kafka import make_consumer
from schemas.search import Verdict
from schemas.settings import Settings
from schemas.similarity import ImageAlert


async def alerts_for(
    settings: Settings, image_id: str, wait_s: float, then_s: float = 5.0
) -> list[ImageAlert]:
    """The image alerts about `image_id`: waiting up to `wait_s` for the first, then `then_s`
    more for any repeat."""
    topic = settings.image_alerts_topic
    consumer = make_consumer(settings, group_id=None)
    await consumer.start()
    found: list[ImageAlert] = []
    try:
        await consumer.topics()
        tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        clock = asyncio.get_running_loop().time
        deadline = clock() + wait_s
        while clock() < deadline:
            for records in (await consumer.getmany(timeout_ms=200)).values():
                found += [
                    ImageAlert.from_bytes(r.value) for r in records if r.key == image_id.encode()
                ]
            if found:
                deadline = min(deadline, clock() + then_s)
    finally:
        await consumer.stop()
    return found


async def test_an_upload_yields_exactly_one_joined_alert_naming_its_copy(
    s3: Minio, settings: Settings
) -> None:

    prefix = f"alerts-{uuid.uuid4().hex[:6]}"
    original = distinct_jpegs(1, size=(320, 240), seed=51)[0]
    upload_bytes(s3, settings.bucket, f"{prefix}/original.jpg", original)
    await asyncio.sleep(2)  # the original first
    smaller = Image.open(io.BytesIO(original)).resize((240, 180))
    upload_bytes(s3, settings.bucket, f"{prefix}/copy.jpg", jpeg(smaller))

    copy_id = f"{settings.bucket}/{prefix}/copy.jpg"
    alerts = await alerts_for(settings, copy_id, wait_s=45)
    assert len(alerts) == 1, alerts
    (alert,) = alerts
    assert not alert.partial and alert.features == ["clip", "colour", "copy", "keypoints", "phash"]
    matches = {m.image_id: m.verdict for m in alert.matches}
    assert matches.get(f"{settings.bucket}/{prefix}/original.jpg") is Verdict.COPY
