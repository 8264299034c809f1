"""Operator commands to indexers over Kafka, and their answers.

Like search, a command goes to the control topic with `correlation_id` and `reply_to`
headers; every indexer reads every control partition and answers for its shard (its
partitions), so a client merges answers until they cover every partition. A command without
`reply_to` is carried out and not answered (the S3 gateway asks for a reconciliation so).

Commands (the `command` field tells them apart):
- `rebuild`: rebuild one feature's engine (`lookalike rebuild`);
- `reconcile`: compare every feature index with the bucket and publish image events for
  what differs (`lookalike backfill`, and the indexers' own periodic reconciliation);
- `status`: index sizes, offsets and lag (`lookalike status`);
- `inventory`: every image id and eTag one feature index holds (benchmarks, audits).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

from pydantic import Field, TypeAdapter, ValidationError

from schemas.message import Message, MessageError


class RebuildSource(StrEnum):
    STORE = "store"  # the indexer's LMDB store of record (fast: new index parameters, bad snapshot)
    TOPIC = "topic"  # the feature topic from the earliest offset (the store is rewritten too)


class RebuildCommand(Message):
    schema_version: Literal[1] = 1
    command: Literal["rebuild"] = "rebuild"
    feature: str
    source: RebuildSource = RebuildSource.STORE
    allow_shrink: bool = Field(
        False, description="topic: replace the index even if the topic holds fewer images"
    )


class ReconcileCommand(Message):
    schema_version: Literal[1] = 1
    command: Literal["reconcile"] = "reconcile"
    reason: str = Field("operator", description="why: shows in the indexers' logs")
    grace_s: float | None = Field(
        0.0,
        ge=0,
        description="leave objects changed this recently to their events; None = the "
        "indexer's LOOKALIKE_RECONCILE_GRACE_S (an operator's request: everything, now)",
    )


class StatusCommand(Message):
    schema_version: Literal[1] = 1
    command: Literal["status"] = "status"


class InventoryCommand(Message):
    schema_version: Literal[1] = 1
    command: Literal["inventory"] = "inventory"
    feature: str


ControlCommand = Annotated[
    RebuildCommand | ReconcileCommand | StatusCommand | InventoryCommand,
    Field(discriminator="command"),
]
_COMMAND = TypeAdapter(ControlCommand)


def parse_command(raw: bytes | None) -> ControlCommand:
    """Raises MessageError for anything that is not a known control command."""
    if raw is None:
        raise MessageError("empty control message")
    try:
        return _COMMAND.validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "message"
        raise MessageError(f"invalid control command: {where}: {first['msg']}") from exc


class ControlReport(Message):
    """What every answer carries: whether it worked, and which partitions it speaks for."""

    schema_version: Literal[1] = 1
    ok: bool
    error: str | None = None
    indexer: str = Field("", description="which indexer process answered (host:pid)")
    partitions: list[int] = Field(default_factory=list)
    partition_count: int = 0


class RebuildReport(ControlReport):
    feature: str
    source: RebuildSource
    records: int = Field(0, description="topic: feature events replayed")
    images: int = 0
    seconds: float = 0.0


class FeatureDifference(Message):
    """One feature index against the bucket, for the partitions an indexer serves."""

    missing: int = Field(0, description="in the bucket, not in the index")
    stale: int = Field(0, description="in both, at another eTag")
    ghosts: int = Field(0, description="in the index, not in the bucket")


class ReconcileReport(ControlReport):
    reason: str = ""
    scanned: int = Field(0, description="bucket objects that belong to these partitions")
    created: int = Field(0, description="created events published (missing or stale anywhere)")
    removed: int = Field(0, description="removed events published (ghosts anywhere)")
    features: dict[str, FeatureDifference] = Field(default_factory=dict)
    seconds: float = 0.0


class IndexerStatus(ControlReport):
    cluster_id: str = ""
    images: dict[str, int] = Field(default_factory=dict, description="feature -> images held")
    offsets: dict[str, int] = Field(default_factory=dict, description="topic/partition -> next")
    lag: dict[str, int] = Field(default_factory=dict, description="topic/partition -> behind")
    records_read: int = 0
    dead_letters: int = 0
    last_reconcile: ReconcileReport | None = None
    rebuilding: dict[str, int] = Field(
        default_factory=dict, description="feature -> events replayed so far (topic rebuilds)"
    )
    recall: dict[str, float] = Field(
        default_factory=dict,
        description="feature -> recall@10 measured on recent sample queries (approximate "
        "engines only: exact ones are always 1)",
    )


class InventoryReport(ControlReport):
    feature: str
    etags: dict[str, str | None] = Field(
        default_factory=dict, description="image id -> eTag, every image this index holds"
    )
    rejected: dict[str, str | None] = Field(
        default_factory=dict,
        description="image id -> eTag of object versions that cannot be indexed (dead-lettered)",
    )
