"""Similarity results: published by the indexer each time an image enters an index
(`SimilarityResult`, one per feature), and one joined alert per image version once every
feature has indexed it (`ImageAlert`, on the image-alerts topic)."""

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


class ImageAlert(Message):
    """One image version's copies and look-alikes, across every feature (a fused query by id),
    published once all its features are indexed, or at the deadline with `partial` set (then
    again, complete, when the late features are in)."""

    schema_version: Literal[1] = 1
    image_id: str
    etag: str | None
    features: list[str] = Field(description="the features that had indexed it")
    partial: bool = Field(False, description="some features had not indexed it by the deadline")
    matches: list[SearchHit] = Field(
        default_factory=list, description="its exact copies, copies and look-alikes, with verdicts"
    )
    alerted_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
