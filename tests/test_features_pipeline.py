"""Every image is described three ways, each in its own index; text search reaches CLIP;
hostile images end up indexed or dead-lettered with a reason, never stuck."""

from __future__ import annotations

import io
import uuid
from functools import partial

import numpy as np
import pytest
from aiokafka.structs import ConsumerRecord
from minio import Minio
from PIL import Image

from lookalike.samples import jpeg, photo
from producers.search_client import SearchClient
from producers.uploads import upload_bytes
from schemas.dead_letter import DeadLetter
from schemas.minio_events import notification_key
from schemas.search import SearchReply, SearchRequest, Verdict
from schemas.settings import Settings
from tests.kafka_helpers import eventually, find_on_topic

pytestmark = pytest.mark.integration


def has_key(key: bytes, record: ConsumerRecord[bytes, bytes]) -> bool:
    return bool(record.key == key)


async def by_id(search: SearchClient, feature: str, image_id: str) -> SearchReply:
    return await search.search(SearchRequest(feature=feature, image_id=image_id, k=5))


async def test_upload_is_indexed_by_every_feature(
    s3: Minio, search: SearchClient, settings: Settings
) -> None:
    key = f"feat-{uuid.uuid4().hex[:6]}/coffee.jpg"
    upload_bytes(s3, settings.bucket, key, jpeg(photo("coffee")))
    image_id = f"{settings.bucket}/{key}"
    for feature in ("phash", "colour", "copy", "keypoints", "clip"):
        reply = await eventually(partial(by_id, search, feature, image_id), lambda r: r.ok)
        assert reply.feature == feature and reply.indexed >= 1
    by_colour = await search.search(
        SearchRequest(feature="colour", image=jpeg(photo("coffee").resize((300, 200))), k=1)
    )
    assert [h.image_id for h in by_colour.hits] == [image_id]


async def test_cropped_copy_is_found_by_the_copy_feature(
    s3: Minio, search: SearchClient, settings: Settings
) -> None:
    key = f"copy-{uuid.uuid4().hex[:6]}/stereo.jpg"
    original = photo("stereo_motorcycle")
    upload_bytes(s3, settings.bucket, key, jpeg(original))
    image_id = f"{settings.bucket}/{key}"
    await eventually(partial(by_id, search, "copy", image_id), lambda r: r.ok)
    w, h = original.size
    crop = jpeg(original.crop((w // 8, h // 8, w - w // 8, h - h // 8)))
    reply = await search.search(SearchRequest(feature="copy", image=crop, k=1))
    assert [hit.image_id for hit in reply.hits] == [image_id]


async def test_a_crop_is_verified_as_a_copy_and_a_turned_crop_finds_its_original(
    s3: Minio, search: SearchClient, settings: Settings
) -> None:
    """The keypoints feature through the stack: candidates by keypoint votes, aligned and
    scored. A crop's original is the answer with the verdict `copy`; a crop of a turned copy
    finds its original first (its verdict is the scorer's call at the shipped threshold: turned
    crops sit on both sides of it, BENCHMARKS.md); a photograph that was never uploaded gets
    no `copy` verdict."""
    key = f"verified-{uuid.uuid4().hex[:6]}/astronaut.jpg"
    original = photo("astronaut")
    upload_bytes(s3, settings.bucket, key, jpeg(original))
    image_id = f"{settings.bucket}/{key}"
    await eventually(partial(by_id, search, "keypoints", image_id), lambda r: r.ok)
    w, h = original.size
    crop = jpeg(original.crop((w // 10, h // 10, w - w // 10, h - h // 10)), quality=70)
    reply = await search.search(SearchRequest(feature="keypoints", image=crop, k=3))
    assert reply.ok and reply.hits[0].image_id == image_id
    assert reply.hits[0].verdict is Verdict.COPY
    turned = original.rotate(7, resample=Image.Resampling.BILINEAR)
    crop = jpeg(turned.crop((w // 8, h // 10, w - w // 20, h - h // 8)), quality=70)
    reply = await search.search(SearchRequest(feature="keypoints", image=crop, k=3))
    assert reply.ok and reply.hits[0].image_id == image_id
    assert reply.hits[0].verdict in (Verdict.COPY, Verdict.SIMILAR)
    # Never uploaded by any test: smooth random blobs drawn for this test alone.
    blobs = np.random.default_rng(uuid.uuid4().int).integers(0, 256, (30, 40, 3), np.uint8)
    stranger = jpeg(Image.fromarray(blobs).resize((480, 360), Image.Resampling.BICUBIC))
    other = await search.search(SearchRequest(feature="keypoints", image=stranger, k=3))
    assert other.ok and all(h.verdict is Verdict.UNRELATED for h in other.hits)


async def test_text_query_is_answered_from_the_clip_index(
    s3: Minio, search: SearchClient, settings: Settings
) -> None:
    key = f"text-{uuid.uuid4().hex[:6]}/rocket.jpg"
    upload_bytes(s3, settings.bucket, key, jpeg(photo("rocket")))
    await eventually(lambda: by_id(search, "clip", f"{settings.bucket}/{key}"), lambda r: r.ok)
    reply = await search.search(SearchRequest(feature="clip", text="a rocket on a launch pad", k=3))
    assert reply.ok and len(reply.hits) >= 1
    assert all(0.0 <= h.distance <= 2.0 for h in reply.hits)  # cosine distance


def _encoded(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def hostile_images() -> dict[str, tuple[bytes, str]]:
    """name -> (bytes, expected: 'indexed' or a dead-letter reason fragment)."""
    coffee = photo("coffee")
    palette = coffee.convert("P")
    gif_frames = [coffee.resize((80, 60)).convert("P"), Image.new("P", (80, 60), 7)]
    return {
        "cmyk.jpg": (_encoded(coffee.convert("CMYK"), "JPEG"), "indexed"),
        "sixteen-bit.png": (_encoded(Image.new("I;16", (64, 64), 40000), "PNG"), "indexed"),
        "palette-alpha.png": (_encoded(palette, "PNG", transparency=0), "indexed"),
        "animated.gif": (
            _encoded(gif_frames[0], "GIF", save_all=True, append_images=gif_frames[1:]),
            "indexed",
        ),
        "photo.webp": (_encoded(coffee, "WEBP"), "indexed"),
        "truncated.jpg": (jpeg(coffee)[:2000], "undecodable"),
        "bomb.png": (_encoded(Image.new("1", (20_000, 20_000)), "PNG"), "bomb"),
        "not-an-image.jpg": (b"GIF89a but not really" * 10, "undecodable"),
    }


async def test_hostile_images_are_indexed_or_dead_lettered(
    s3: Minio, search: SearchClient, settings: Settings
) -> None:
    prefix = f"hostile-{uuid.uuid4().hex[:6]}"
    cases = hostile_images()
    for name, (data, _) in cases.items():
        upload_bytes(s3, settings.bucket, f"{prefix}/{name}", data)
    for name, (_, expected) in cases.items():
        key = f"{prefix}/{name}"
        if expected == "indexed":
            image_id = f"{settings.bucket}/{key}"
            await eventually(partial(by_id, search, "phash", image_id), lambda r: r.ok)
        else:
            letter = await find_on_topic(
                settings,
                settings.dead_letter_topic,
                partial(has_key, notification_key(settings.bucket, key)),
            )
            assert expected in DeadLetter.from_bytes(letter.value).reason
    # And the extractor is still working afterwards.
    after = f"{prefix}/after.jpg"
    upload_bytes(s3, settings.bucket, after, jpeg(photo("chelsea")))
    await eventually(lambda: by_id(search, "phash", f"{settings.bucket}/{after}"), lambda r: r.ok)
