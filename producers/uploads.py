"""Put local image files into the bucket (what a gallery's upload service would do)."""

from __future__ import annotations

import io
import mimetypes
from collections.abc import Iterable
from pathlib import Path

from minio import Minio

from schemas.minio_events import plain_etag


def ensure_bucket(s3: Minio, bucket: str) -> None:
    if not s3.bucket_exists(bucket):
        s3.make_bucket(bucket)


def content_type_for(name: str) -> str:
    return mimetypes.guess_type(name)[0] or "application/octet-stream"


def upload_bytes(s3: Minio, bucket: str, key: str, data: bytes) -> str:
    """Returns the new object's eTag."""
    result = s3.put_object(
        bucket, key, io.BytesIO(data), len(data), content_type=content_type_for(key)
    )
    return plain_etag(str(result.etag)) or ""


def upload_files(s3: Minio, bucket: str, paths: Iterable[Path], prefix: str = "") -> list[str]:
    keys = []
    for path in paths:
        key = f"{prefix}{path.name}"
        upload_bytes(s3, bucket, key, path.read_bytes())
        keys.append(key)
    return keys
