"""Fetch an object's current version from S3, telling apart 'gone' and 'too big'."""

from __future__ import annotations

from dataclasses import dataclass

from minio import Minio
from minio.error import S3Error

from schemas.minio_events import plain_etag


@dataclass(frozen=True, slots=True)
class FetchedObject:
    data: bytes
    etag: str
    size: int


class ObjectGone(LookupError):
    """The object was deleted after the event was sent; its delete event follows."""


class ObjectTooLarge(ValueError):
    def __init__(self, message: str, etag: str | None) -> None:
        super().__init__(message)
        self.etag = etag


def fetch_object(s3: Minio, bucket: str, key: str, *, max_bytes: int) -> FetchedObject:
    """The object's current version. Blocking: call from a worker thread."""
    try:
        response = s3.get_object(bucket, key)
    except S3Error as exc:
        if exc.code in ("NoSuchKey", "NoSuchBucket"):
            raise ObjectGone(f"{bucket}/{key}: {exc.code}") from exc
        raise
    try:
        etag = plain_etag(response.headers.get("ETag")) or ""
        declared = int(response.headers.get("Content-Length") or 0)
        if declared > max_bytes:
            raise ObjectTooLarge(f"{declared:,} bytes is over the {max_bytes:,}-byte limit", etag)
        data = response.read(amt=max_bytes + 1)
        if len(data) > max_bytes:
            raise ObjectTooLarge(f"more than {max_bytes:,} bytes (limit)", etag)
        return FetchedObject(data=data, etag=etag, size=len(data))
    finally:
        response.close()
        response.release_conn()
