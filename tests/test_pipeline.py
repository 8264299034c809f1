"""End to end on the real embedded stack: uploads through S3 become searchable over Kafka."""

from __future__ import annotations

import uuid

import pytest
from minio import Minio
from PIL import ImageOps

from lookalike.samples import jpeg, photo
from lookalike.stack import Stack
from producers.search_client import SearchClient
from producers.uploads import upload_bytes
from schemas.dead_letter import DeadLetter
from schemas.kafka import make_producer
from schemas.minio_events import build_notification, notification_key
from schemas.search import SearchErrorCode, SearchReply, SearchRequest
from schemas.settings import Settings
from tests.kafka_helpers import eventually, find_on_topic

pytestmark = pytest.mark.integration


def unique(name: str) -> str:
    return f"t-{uuid.uuid4().hex[:8]}/{name}"


async def by_id(search: SearchClient, image_id: str, k: int = 5) -> SearchReply:
    return await search.search(SearchRequest(feature="phash", image_id=image_id, k=k))


async def until_indexed(search: SearchClient, image_id: str) -> SearchReply:
    return await eventually(lambda: by_id(search, image_id), lambda r: r.ok)


async def by_image(search: SearchClient, data: bytes, k: int = 5) -> SearchReply:
    return await search.search(SearchRequest(feature="phash", image=data, k=k))


def ids(reply: SearchReply) -> list[str]:
    return [h.image_id for h in reply.hits]


async def test_uploaded_image_becomes_searchable_by_image_and_by_id(
    s3: Minio, search: SearchClient, settings: Settings
) -> None:
    key = unique("rocket.jpg")
    upload_bytes(s3, settings.bucket, key, jpeg(photo("rocket")))
    image_id = f"{settings.bucket}/{key}"
    await until_indexed(search, image_id)

    reply = await by_image(search, jpeg(photo("rocket").resize((320, 213)), quality=40))
    assert reply.ok and reply.hits[0].image_id == image_id
    assert reply.hits[0].distance <= 40
    assert reply.hits[0].etag


async def test_mirrored_copy_is_found_by_image_query(
    s3: Minio, search: SearchClient, settings: Settings
) -> None:
    key = unique("clock.jpg")
    upload_bytes(s3, settings.bucket, key, jpeg(photo("clock")))
    await until_indexed(search, f"{settings.bucket}/{key}")
    reply = await by_image(search, jpeg(ImageOps.mirror(photo("clock"))), k=1)
    assert ids(reply) == [f"{settings.bucket}/{key}"]
    assert reply.hits[0].distance <= 30


async def test_deleted_image_disappears_from_results(
    s3: Minio, search: SearchClient, settings: Settings
) -> None:
    key = unique("coins.jpg")
    data = jpeg(photo("coins"))
    upload_bytes(s3, settings.bucket, key, data)
    image_id = f"{settings.bucket}/{key}"
    await until_indexed(search, image_id)

    s3.remove_object(settings.bucket, key)
    gone = await eventually(lambda: by_id(search, image_id), lambda r: not r.ok)
    assert gone.error_code is SearchErrorCode.NOT_FOUND
    assert image_id not in ids(await by_image(search, data, k=50))


async def test_overwritten_key_is_found_by_new_content_not_old(
    s3: Minio, search: SearchClient, settings: Settings
) -> None:
    key = unique("overwrite.jpg")
    image_id = f"{settings.bucket}/{key}"
    old, new = jpeg(photo("moon")), jpeg(photo("hubble_deep_field"))
    first_etag = upload_bytes(s3, settings.bucket, key, old)
    await until_indexed(search, image_id)
    new_etag = upload_bytes(s3, settings.bucket, key, new)
    assert new_etag != first_etag

    async def probe() -> SearchReply:
        return await by_image(search, new, k=1)

    reply = await eventually(probe, lambda r: ids(r) == [image_id] and r.hits[0].distance == 0)
    assert reply.hits[0].etag == new_etag
    old_reply = await by_image(search, old, k=50)
    assert all(h.distance > 100 for h in old_reply.hits if h.image_id == image_id)


async def test_corrupt_image_goes_to_dead_letter_and_extractor_keeps_going(
    s3: Minio, search: SearchClient, settings: Settings
) -> None:
    bad_key = unique("broken.jpg")
    data = jpeg(photo("gravel"))
    upload_bytes(s3, settings.bucket, bad_key, data[: len(data) // 4])
    good_key = unique("after-broken.jpg")
    upload_bytes(s3, settings.bucket, good_key, jpeg(photo("grass")))

    letter = await find_on_topic(
        settings,
        settings.dead_letter_topic,
        lambda r: r.key == notification_key(settings.bucket, bad_key),
    )
    dead = DeadLetter.from_bytes(letter.value)
    assert dead.stage == "extractor" and "undecodable" in dead.reason
    assert dead.source_topic == settings.image_events_topic and dead.value
    await until_indexed(search, f"{settings.bucket}/{good_key}")
    reply = await by_id(search, f"{settings.bucket}/{bad_key}")
    assert reply.error_code is SearchErrorCode.NOT_FOUND


async def test_oversize_upload_goes_to_dead_letter(settings: Settings, s3: Minio) -> None:
    key = unique("huge.jpg")
    upload_bytes(s3, settings.bucket, key, b"\xff\xd8" + bytes(2_000_100))
    letter = await find_on_topic(
        settings,
        settings.dead_letter_topic,
        lambda r: r.key == notification_key(settings.bucket, key),
    )
    assert "oversize upload" in DeadLetter.from_bytes(letter.value).reason


async def test_malformed_event_goes_to_dead_letter(settings: Settings, stack: Stack) -> None:

    marker = uuid.uuid4().hex.encode()
    producer = make_producer(settings)
    await producer.start()
    try:
        await producer.send_and_wait(
            settings.image_events_topic, b'{"EventName": "s3:Obj', key=marker
        )
    finally:
        await producer.stop()
    letter = await find_on_topic(settings, settings.dead_letter_topic, lambda r: r.key == marker)
    dead = DeadLetter.from_bytes(letter.value)
    assert "malformed event" in dead.reason and dead.value == b'{"EventName": "s3:Obj'


async def test_event_for_an_object_that_no_longer_exists_is_skipped(
    settings: Settings, search: SearchClient, s3: Minio
) -> None:

    ghost = unique("ghost.jpg")
    producer = make_producer(settings)
    await producer.start()
    try:
        event = build_notification("s3:ObjectCreated:Put", settings.bucket, ghost, etag="x", size=1)
        await producer.send_and_wait(
            settings.image_events_topic, event, key=notification_key(settings.bucket, ghost)
        )
    finally:
        await producer.stop()
    # The extractor carries on: a later upload still gets indexed, the ghost never does.
    after = unique("after-ghost.jpg")
    upload_bytes(s3, settings.bucket, after, jpeg(photo("brick")))
    await until_indexed(search, f"{settings.bucket}/{after}")
    assert (
        await by_id(search, f"{settings.bucket}/{ghost}")
    ).error_code is SearchErrorCode.NOT_FOUND


async def test_query_for_unknown_id_gets_an_error_reply(search: SearchClient) -> None:
    reply = await by_id(search, "images/no/such/image.jpg")
    assert not reply.ok and reply.error_code is SearchErrorCode.NOT_FOUND
    assert "not in the index" in (reply.error or "")


async def test_undecodable_query_image_gets_an_error_reply(search: SearchClient) -> None:
    reply = await by_image(search, b"definitely not an image")
    assert reply.error_code is SearchErrorCode.BAD_IMAGE


async def test_oversize_query_image_gets_an_error_reply(
    search: SearchClient, settings: Settings
) -> None:
    reply = await by_image(search, b"\xff" * (settings.max_query_image_bytes + 1))
    assert reply.error_code is SearchErrorCode.TOO_LARGE


async def test_malformed_request_gets_an_error_reply(search: SearchClient) -> None:
    reply = await search.send_raw(b'{"k": "many"}')
    assert reply.error_code is SearchErrorCode.BAD_REQUEST


async def test_text_query_on_hash_feature_is_refused_clearly(search: SearchClient) -> None:
    reply = await search.search(SearchRequest(feature="phash", text="a red bicycle"))
    assert reply.error_code is SearchErrorCode.UNSUPPORTED
