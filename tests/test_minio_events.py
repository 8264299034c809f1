"""Every bucket-notification sample in tests/fixtures/s3-events is handled as it should be."""

from __future__ import annotations

from pathlib import Path

import pytest

from schemas.minio_events import (
    BULK_SOURCE,
    ChangeKind,
    Ignored,
    ImageChange,
    MalformedEvent,
    build_notification,
    parse_notification,
)

EVENTS = Path(__file__).parent / "fixtures" / "s3-events"


def parse_one(name: str) -> ImageChange | Ignored:
    items = parse_notification((EVENTS / name).read_bytes())
    assert len(items) == 1
    return items[0]


def test_every_fixture_has_an_expectation() -> None:
    samples = {p.name for p in EVENTS.iterdir() if p.suffix in (".json", ".txt")}
    assert samples == set(EXPECTED) | set(MALFORMED)


EXPECTED: dict[str, tuple[str, str | None]] = {
    # file: (outcome, key)
    "minio_put.json": ("created", "cats/tom.jpg"),
    "minio_copy.json": ("created", "cats/tom-copy.jpg"),
    "minio_multipart.json": ("created", "raw/big.webp"),
    "minio_put_unicode_space_key.json": ("created", "holiday 2026/Zürich café (1).png"),
    "aws_s3_put.json": ("created", "holiday 2026/Zürich café.jpg"),
    "minio_delete.json": ("removed", "cats/tom.jpg"),
    "minio_delete_marker_versioned.json": ("removed", "cats/tom.jpg"),
    "minio_get_accessed_ignore.json": ("ignored", "cats/tom.jpg"),
    "minio_put_tagging_no_content_change.json": ("ignored", "cats/tom.jpg"),
    "minio_put_not_an_image.json": ("ignored", "docs/readme.txt"),
    "aws_s3_test_event_ignore.json": ("ignored", None),
}
MALFORMED = ("malformed_not_json.txt", "malformed_truncated.json")


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture_is_work_or_ignored_as_expected(name: str) -> None:
    outcome, key = EXPECTED[name]
    item = parse_one(name)
    if outcome == "ignored":
        assert isinstance(item, Ignored)
        assert item.reason
    else:
        assert isinstance(item, ImageChange)
        assert item.kind is ChangeKind(outcome)
        assert item.bucket == "images"
    assert item.key == key


@pytest.mark.parametrize("name", MALFORMED)
def test_malformed_messages_raise_with_a_reason(name: str) -> None:
    with pytest.raises(MalformedEvent, match="not JSON"):
        parse_notification((EVENTS / name).read_bytes())


def test_created_event_carries_etag_size_and_type() -> None:
    item = parse_one("minio_put.json")
    assert isinstance(item, ImageChange)
    assert (item.etag, item.size, item.content_type) == (
        "5d41402abc4b2a76b9719d911017c592",
        48213,
        "image/jpeg",
    )
    assert item.image_id == "images/cats/tom.jpg"


def test_an_upload_is_not_bulk_and_a_reextraction_event_is() -> None:
    upload = parse_one("minio_put.json")
    assert isinstance(upload, ImageChange) and not upload.bulk
    (again,) = parse_notification(
        build_notification(
            "s3:ObjectCreated:Put", "images", "a.jpg", etag="e1", size=3, source=BULK_SOURCE
        )
    )
    assert isinstance(again, ImageChange) and again.bulk


def test_multipart_etag_keeps_its_part_count() -> None:
    item = parse_one("minio_multipart.json")
    assert isinstance(item, ImageChange) and item.etag == "e4d909c290d0fb1ca068ffaddf22cbd0-5"


def test_delete_event_has_no_etag() -> None:
    item = parse_one("minio_delete.json")
    assert isinstance(item, ImageChange) and item.etag is None and item.size is None


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"[1, 2]", "not an object"),
        (b"{}", "no Records"),
        (
            b'{"Records": [{"eventName": "s3:Bogus:Thing", "s3": {"bucket": {"name": "b"},'
            b' "object": {"key": "k.jpg"}}}]}',
            "unknown event type",
        ),
        (b'{"Records": [{"eventName": "s3:ObjectCreated:Put"}]}', "lacks s3"),
    ],
)
def test_unusable_events_are_malformed(raw: bytes, reason: str) -> None:
    with pytest.raises(MalformedEvent, match=reason):
        parse_notification(raw)


def test_tombstone_is_malformed() -> None:
    with pytest.raises(MalformedEvent, match="tombstone"):
        parse_notification(None)


@pytest.mark.parametrize("key", ["a/b c/Zürich+café (1).jpg", "plain.png", "x%2Fy.jpg"])
def test_built_notification_round_trips_any_key(key: str) -> None:
    raw = build_notification("s3:ObjectCreated:Put", "images", key, etag='"abc"', size=3)
    (item,) = parse_notification(raw)
    assert isinstance(item, ImageChange)
    assert (item.key, item.etag, item.size, item.kind) == (key, "abc", 3, ChangeKind.CREATED)
