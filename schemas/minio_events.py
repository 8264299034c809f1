"""Bucket-notification events in MinIO's (and Amazon S3's) Kafka format.

`parse_notification` turns the raw bytes of one message into work (`ImageChange`),
`Ignored` entries (reads, test events, tagging-only changes, non-images), or raises
`MalformedEvent` with a reason that goes to the dead-letter topic.
`build_notification` writes the MinIO shape, for the embedded gateway and backfill.
"""

from __future__ import annotations

import json
import mimetypes
import time
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any
from urllib.parse import quote_plus, unquote_plus

from pydantic import BaseModel


class MalformedEvent(ValueError):
    """The message is not a bucket notification we can act on; the text says why."""


# Who a bulk re-extraction's events say made them (`userIdentity.principalId`): images the
# bucket already held, indexed again without near-duplicate alerts (their uploads had theirs).
BULK_SOURCE = "lookalike-reextract"


class ChangeKind(StrEnum):
    CREATED = "created"
    REMOVED = "removed"


class ImageChange(BaseModel):
    kind: ChangeKind
    bucket: str
    key: str
    event_name: str
    etag: str | None = None
    size: int | None = None
    content_type: str | None = None
    event_time: datetime | None = None
    bulk: bool = False  # from a bulk re-extraction (BULK_SOURCE), not an upload

    @property
    def image_id(self) -> str:
        return f"{self.bucket}/{self.key}"


class Ignored(BaseModel):
    event_name: str
    reason: str
    key: str | None = None


IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff", ".jfif", ".avif"}
)
# Created-class events that do not change the object's bytes (same eTag).
_METADATA_ONLY = frozenset({"PutTagging", "PutRetention", "PutLegalHold", "DeleteTagging"})
# Whole event classes that are never work for us.
_NOT_WORK_CLASSES = frozenset(
    {"ObjectAccessed", "ObjectRestore", "Replication", "ObjectTransition", "Scanner", "ILM"}
)
_CONTENT_TYPELESS = frozenset({"", "application/octet-stream", "binary/octet-stream"})


def looks_like_image(key: str, content_type: str | None) -> bool:
    ctype = (content_type or "").split(";")[0].strip().lower()
    if ctype.startswith("image/"):
        return True
    if ctype in _CONTENT_TYPELESS:
        suffix = "." + key.rsplit(".", 1)[-1].lower() if "." in key else ""
        return suffix in IMAGE_SUFFIXES
    return False


def plain_etag(etag: str | None) -> str | None:
    """An eTag as this project compares and stores it: without the quotes S3 wraps it in."""
    return etag.strip('"') or None if etag else None


def _parse_record(record: Any) -> ImageChange | Ignored:
    if not isinstance(record, dict):
        raise MalformedEvent("record is not an object")
    name = record.get("eventName")
    if not isinstance(name, str) or ":" not in name:
        raise MalformedEvent(f"record has no usable eventName: {name!r}")
    short = name.removeprefix("s3:")
    event_class, _, action = short.partition(":")
    try:
        s3 = record["s3"]
        bucket = s3["bucket"]["name"]
        obj = s3["object"]
        raw_key = obj["key"]
    except (KeyError, TypeError) as exc:
        raise MalformedEvent(f"{name}: record lacks s3.bucket.name/s3.object.key") from exc
    if not isinstance(bucket, str) or not isinstance(raw_key, str) or not bucket or not raw_key:
        raise MalformedEvent(f"{name}: empty bucket or key")
    # MinIO uses Go's url.QueryEscape ('/' as %2F, ' ' as '+'); AWS keeps '/'. Both decode so.
    key = unquote_plus(raw_key)
    if event_class in _NOT_WORK_CLASSES:
        return Ignored(event_name=name, key=key, reason=f"{event_class} events are not changes")
    event_time = _parse_time(record.get("eventTime"))
    if event_class == "ObjectRemoved":
        return ImageChange(
            kind=ChangeKind.REMOVED, bucket=bucket, key=key, event_name=name, event_time=event_time
        )
    if event_class != "ObjectCreated":
        raise MalformedEvent(f"unknown event type {name!r}")
    if action in _METADATA_ONLY:
        return Ignored(event_name=name, key=key, reason=f"{action} does not change the bytes")
    content_type = obj.get("contentType")
    if not looks_like_image(key, content_type):
        return Ignored(
            event_name=name, key=key, reason=f"not an image ({content_type or 'no type'})"
        )
    size = obj.get("size")
    identity = record.get("userIdentity")
    principal = identity.get("principalId") if isinstance(identity, dict) else None
    return ImageChange(
        kind=ChangeKind.CREATED,
        bucket=bucket,
        key=key,
        event_name=name,
        etag=plain_etag(obj.get("eTag")),
        size=size if isinstance(size, int) else None,
        content_type=content_type,
        event_time=event_time,
        bulk=principal == BULK_SOURCE,
    )


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def parse_notification(raw: bytes | None) -> list[ImageChange | Ignored]:
    """Parse one Kafka message value. Raises MalformedEvent for anything unusable."""
    if raw is None:
        raise MalformedEvent("empty message (tombstone) on the image-events topic")
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MalformedEvent(f"not JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise MalformedEvent(f"top level is {type(doc).__name__}, not an object")
    if doc.get("Event") == "s3:TestEvent":
        return [Ignored(event_name="s3:TestEvent", reason="notification configuration test")]
    records = doc.get("Records")
    if not isinstance(records, list) or not records:
        raise MalformedEvent("no Records list")
    return [_parse_record(r) for r in records]


def build_notification(
    event_name: str,
    bucket: str,
    key: str,
    *,
    etag: str | None = None,
    size: int | None = None,
    content_type: str | None = None,
    event_time: datetime | None = None,
    source: str = "lookalike",
) -> bytes:
    """A MinIO-format Kafka notification (`EventName`, unescaped `Key`, one record)."""
    when = (event_time or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    obj: dict[str, Any] = {"key": quote_plus(key, safe=""), "sequencer": f"{time.time_ns():X}"}
    if etag is not None:
        obj["size"] = size or 0
        obj["eTag"] = plain_etag(etag)
        obj["contentType"] = content_type or _guess_type(key)
    record = {
        "eventVersion": "2.0",
        "eventSource": "minio:s3",
        "awsRegion": "",
        "eventTime": when,
        "eventName": event_name,
        "userIdentity": {"principalId": source},
        "s3": {
            "s3SchemaVersion": "1.0",
            "configurationId": "Config",
            "bucket": {"name": bucket, "arn": f"arn:aws:s3:::{bucket}"},
            "object": obj,
        },
        "source": {"host": "", "port": "", "userAgent": source},
    }
    doc = {"EventName": event_name, "Key": f"{bucket}/{key}", "Records": [record]}
    return json.dumps(doc).encode()


def _guess_type(key: str) -> str:
    return mimetypes.guess_type(key)[0] or "application/octet-stream"


def notification_key(bucket: str, key: str) -> bytes:
    """MinIO keys messages by `bucket/object`, so one object's events stay in order."""
    return f"{bucket}/{key}".encode()


_FNV32_OFFSET = 0x811C9DC5
_FNV32_PRIME = 0x01000193


def partition_of(key: bytes, partitions: int) -> int:
    """The partition MinIO's Kafka target writes `key` to: Sarama's default hash partitioner,
    FNV-1a (32-bit) of the key, read as a signed int32, remainder (Go truncates), sign dropped.

    Everything that publishes keyed messages (the gateway, backfill, reconciliation,
    extractors) partitions this way, so one object's events share a partition — and so their
    order — whoever publishes them.
    """
    h = _FNV32_OFFSET
    for byte in key:
        h = ((h ^ byte) * _FNV32_PRIME) & 0xFFFFFFFF
    signed = h - (1 << 32) if h & 0x80000000 else h
    return abs(signed) % partitions


def minio_partitioner(key: bytes | None, all_partitions: list[int], available: list[int]) -> int:
    """aiokafka's `partitioner` hook with MinIO's placement (unkeyed: any available)."""
    if key is None:
        pool = available or all_partitions
        return pool[time.monotonic_ns() % len(pool)]
    ordered = sorted(all_partitions)
    return ordered[partition_of(key, len(ordered))]
