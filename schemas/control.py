"""Operator commands to indexers over Kafka (`lookalike rebuild`), and their answers.

Like search, a command goes to the control topic with `correlation_id` and `reply_to`
headers; every indexer reads every control partition and answers for its shard.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import Field

from schemas.message import Message


class RebuildSource(StrEnum):
    STORE = "store"  # the indexer's LMDB store of record (fast: new index parameters, bad snapshot)
    TOPIC = "topic"  # the feature topic from the earliest offset (the store is rewritten too)


class RebuildCommand(Message):
    schema_version: Literal[1] = 1
    feature: str
    source: RebuildSource = RebuildSource.STORE


class RebuildReport(Message):
    schema_version: Literal[1] = 1
    ok: bool
    feature: str
    source: RebuildSource
    images: int = 0
    seconds: float = 0.0
    error: str | None = None
    partitions: list[int] = Field(default_factory=list)
    partition_count: int = 0
