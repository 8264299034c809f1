"""Request-reply search contract.

A request goes to the search-requests topic with Kafka headers `correlation_id` and
`reply_to` (the topic the caller listens on). Every indexer reads every request partition,
and each answers for the feature partitions it serves (its shard): replies go to `reply_to`
with the same `correlation_id` header, and the caller merges them into one top-k, marking the
result partial if some partitions did not answer before its deadline.
Exactly one of `image_id`, `image`, `text` or `vector` names the query.

`feature="all"` (the default) asks every feature index at once: each hit carries its distance
in every feature, a fused rank (`distance` is the fused score: smaller is closer) and a
verdict: `exact` (the same bytes), `copy` (a copy feature within its threshold), `similar`
(CLIP or colour within theirs) or `unrelated`.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import Field, model_validator

from schemas.message import Message

ALL_FEATURES = "all"


class Verdict(StrEnum):
    EXACT = "exact"
    COPY = "copy"
    SIMILAR = "similar"
    UNRELATED = "unrelated"


class SearchRequest(Message):
    schema_version: Literal[1] = 1
    feature: str = Field(ALL_FEATURES, description="a feature name, or 'all' (fused)")
    k: int = Field(10, ge=1, le=1000)
    max_distance: float | None = Field(None, ge=0)
    image_id: str | None = Field(None, description="an indexed bucket/key")
    image: bytes | None = Field(None, description="encoded image bytes (JPEG, PNG, ...)")
    text: str | None = Field(None, description="text query, for features with a text tower")
    vector: bytes | None = Field(None, description="a raw query vector of the feature's kind")
    exclude: list[str] = Field(default_factory=list, description="image ids to leave out")
    include_mirrored: bool = Field(True, description="also match horizontally flipped copies")

    @model_validator(mode="after")
    def _exactly_one_query(self) -> SearchRequest:
        given = [v is not None for v in (self.image_id, self.image, self.text, self.vector)]
        if sum(given) != 1:
            raise ValueError("give exactly one of image_id, image, text, vector")
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
    distance: float = Field(description="in the feature's metric; for 'all', the fused score")
    etag: str | None = None
    distances: dict[str, float] = Field(
        default_factory=dict, description="'all': the distance in every feature"
    )
    verdict: Verdict | None = Field(None, description="'all': exact, copy, similar, unrelated")


class SearchReply(Message):
    schema_version: Literal[1] = 1
    ok: bool
    feature: str
    hits: list[SearchHit] = Field(default_factory=list)
    error_code: SearchErrorCode | None = None
    error: str | None = None
    indexed: int = Field(0, description="images in the index(es) that answered")
    partitions: list[int] = Field(default_factory=list, description="feature partitions covered")
    partition_count: int = Field(0, description="partitions the feature topic has in all")
    partial: bool = Field(False, description="some partitions did not answer in time")
    query_vector: bytes | None = Field(
        None, description="the vector of an image_id query, so other shards can be asked"
    )
    took_ms: float = 0.0
