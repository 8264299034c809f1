"""The S3 client every part uses, built from Settings (MinIO in production, nanio embedded)."""

from __future__ import annotations

import os

import certifi
import urllib3
from minio import Minio

from schemas.settings import Settings


def s3_client(settings: Settings) -> Minio:
    return Minio(
        settings.s3_endpoint,
        access_key=settings.s3_access_key,
        secret_key=settings.s3_secret_key,
        secure=settings.s3_secure,
        region=settings.s3_region,
        http_client=_connections(settings.s3_connections),
    )


def _connections(size: int) -> urllib3.PoolManager:
    """The minio client's own defaults (timeouts, retries of 5xx), with `size` connections
    kept per host instead of 10: more concurrent requests than that would each open a new one."""
    timeout = 300
    return urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=timeout, read=timeout),
        maxsize=size,
        cert_reqs="CERT_REQUIRED",
        ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where(),
        retries=urllib3.Retry(total=5, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]),
    )


def public_s3_client(settings: Settings) -> Minio:
    """For links handed to browsers (presigned URLs): the endpoint they can reach. Presigning
    makes no request (the region is given)."""
    if not settings.s3_public_endpoint:
        return s3_client(settings)
    return s3_client(settings.model_copy(update={"s3_endpoint": settings.s3_public_endpoint}))
