"""Request-reply search contract.

A request goes to the search-requests topic with Kafka headers `correlation_id` and
`reply_to` (the topic the caller listens on); the reply goes to `reply_to` with the same
`correlation_id` header. Exactly one of `image_id`, `image` or `text` names the query.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import Field, model_validator

from schemas.message import Message


class SearchRequest(Message):
    schema_version: Literal[1] = 1
    feature: str = "phash"
    k: int = Field(10, ge=1, le=1000)
    max_distance: float | None = Field(None, ge=0)
    image_id: str | None = Field(None, description="an indexed bucket/key")
    image: bytes | None = Field(None, description="encoded image bytes (JPEG, PNG, ...)")
    text: str | None = Field(None, description="text query, for features with a text tower")
    include_mirrored: bool = Field(True, description="also match horizontally flipped copies")

    @model_validator(mode="after")
    def _exactly_one_query(self) -> SearchRequest:
        given = [v is not None for v in (self.image_id, self.image, self.text)]
        if sum(given) != 1:
            raise ValueError("give exactly one of image_id, image, text")
        return self


class SearchErrorCode(StrEnum):
    NOT_FOUND = "not_found"
    BAD_IMAGE = "bad_image"
    TOO_LARGE = "too_large"
    BAD_REQUEST = "bad_request"
    UNSUPPORTED = "unsupported"
    INTERNAL = "internal"


class SearchHit(Message):
    image_id: str
    bucket: str
    key: str
    distance: float
    etag: str | None = None


class SearchReply(Message):
    schema_version: Literal[1] = 1
    ok: bool
    feature: str
    hits: list[SearchHit] = Field(default_factory=list)
    error_code: SearchErrorCode | None = None
    error: str | None = None
    indexed: int = Field(0, description="images in the index that answered")
    partitions: list[int] = Field(default_factory=list, description="feature partitions covered")
    partial: bool = False
    took_ms: float = 0.0
