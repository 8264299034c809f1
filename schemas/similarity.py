"""Similarity results: published by the indexer each time an image enters an index."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from pydantic import Field

from schemas.message import Message
from schemas.search import SearchHit


class SimilarityResult(Message):
    schema_version: Literal[1] = 1
    image_id: str
    etag: str | None
    feature: str
    feature_version: str
    near_duplicates: list[SearchHit] = Field(
        default_factory=list, description="closest other images within the configured distance"
    )
    indexed_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
