"""Feature events: what an extractor learned about one image version (or that it is gone)."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Literal

from pydantic import Field, model_validator

from schemas.message import Message


class FeatureOp(StrEnum):
    UPSERT = "upsert"
    DELETE = "delete"
    # The object at this eTag cannot be described (undecodable, oversize): the index drops
    # any older version of it and remembers the rejection, so reconciliation counts the
    # object as accounted for instead of sending it to the dead-letter topic again and again.
    REJECT = "reject"


class VectorKind(StrEnum):
    """How to read `FeatureEvent.vector`: packed bits compared by Hamming distance, float32, or
    a feature's own byte layout of any length (keypoints: index_store/keypoints.py)."""

    BITS = "bits"
    FLOAT32 = "float32"
    PACKED = "packed"


def vector_bytes(kind: VectorKind, dim: int) -> int:
    """Bytes of a vector of `kind` and `dim` (bits, floats, or bytes for PACKED)."""
    if kind is VectorKind.BITS:
        return (dim + 7) // 8
    return dim * 4 if kind is VectorKind.FLOAT32 else dim


class FeatureEvent(Message):
    schema_version: Literal[1] = 1
    op: FeatureOp
    image_id: str = Field(description="bucket/key: the message key too")
    bucket: str
    key: str
    feature: str = Field(description="extractor name, e.g. 'phash'")
    feature_version: str = Field(description="names the index; two versions never mix")
    etag: str | None = None
    size: int | None = None
    vector_kind: VectorKind | None = None
    dim: int | None = Field(None, description="bits for BITS, floats for FLOAT32, bytes for PACKED")
    vector: bytes | None = None
    reason: str | None = Field(None, description="why a reject was rejected")
    extracted_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    uploaded_at: datetime | None = Field(
        None, description="the object's S3 event time (upload -> searchable is measured from it)"
    )
    bulk: bool = Field(
        False, description="from a bulk re-extraction: indexed without near-duplicate alerts"
    )

    @model_validator(mode="after")
    def _upsert_carries_a_vector(self) -> FeatureEvent:
        if self.op is FeatureOp.UPSERT:
            if self.vector is None or self.vector_kind is None or self.dim is None:
                raise ValueError("an upsert carries vector, vector_kind and dim")
            expected = vector_bytes(self.vector_kind, self.dim)
            if len(self.vector) != expected:
                raise ValueError(f"vector has {len(self.vector)} bytes, dim says {expected}")
        return self
