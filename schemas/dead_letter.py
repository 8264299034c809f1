"""What goes on the dead-letter topic: the original message, where it came from, and why."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from pydantic import Field

from schemas.message import Message


class DeadLetter(Message):
    schema_version: Literal[1] = 1
    stage: str = Field(description="who gave up: 'extractor', 'indexer', 'search', ...")
    reason: str
    source_topic: str
    partition: int
    offset: int
    key: bytes | None = None
    value: bytes | None = None
    failed_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
