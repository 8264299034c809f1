"""The S3 client every part uses, built from Settings (MinIO in production, nanio embedded)."""

from __future__ import annotations

from minio import Minio

from schemas.settings import Settings


def s3_client(settings: Settings) -> Minio:
    return Minio(
        settings.s3_endpoint,
        access_key=settings.s3_access_key,
        secret_key=settings.s3_secret_key,
        secure=settings.s3_secure,
        region=settings.s3_region,
    )


def public_s3_client(settings: Settings) -> Minio:
    """For links handed to browsers (presigned URLs): the endpoint they can reach. Presigning
    makes no request (the region is given)."""
    if not settings.s3_public_endpoint:
        return s3_client(settings)
    return s3_client(settings.model_copy(update={"s3_endpoint": settings.s3_public_endpoint}))
