"""What the broker says about the system: its cluster id, and how far each extractor
consumer group is behind on the image-events topic (for `lookalike status`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import structlog
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from schemas.kafka import make_admin, make_consumer
from schemas.settings import Settings

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class GroupLag:
    group: str
    topic: str
    committed: dict[int, int | None]  # partition -> next offset to read; None: nothing committed
    end: dict[int, int]  # partition -> high watermark
    lag: dict[int, int]  # partition -> records not yet read by the group
    state: str = ""  # Stable, PreparingRebalance, Empty ... ("" if the broker did not say)
    members: int | None = None

    @property
    def total(self) -> int:
        return sum(self.lag.values())


@dataclass(frozen=True)
class BrokerState:
    cluster_id: str
    groups: list[GroupLag] = field(default_factory=list)


async def broker_state(settings: Settings, groups: Sequence[str]) -> BrokerState:
    """The cluster id and each group's lag on `settings.image_events_topic`. A group that
    committed nothing on a partition reads it from the beginning (auto_offset_reset earliest),
    so its lag there is everything the partition holds."""
    admin = make_admin(settings)
    await admin.start()
    try:
        consumer = make_consumer(settings, group_id=None)
        await consumer.start()
        try:
            cluster = await admin.describe_cluster()
            topic = settings.image_events_topic
            await consumer.topics()
            tps = [
                TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())
            ]
            end = {tp.partition: off for tp, off in (await consumer.end_offsets(tps)).items()}
            begin = {
                tp.partition: off for tp, off in (await consumer.beginning_offsets(tps)).items()
            }
            lags = [await _group_lag(admin, group, tps, begin, end) for group in groups]
        finally:
            await consumer.stop()
    finally:
        await admin.close()
    return BrokerState(str(cluster.get("cluster_id") or ""), lags)


async def _group_lag(
    admin: AIOKafkaAdminClient,
    group: str,
    tps: list[TopicPartition],
    begin: dict[int, int],
    end: dict[int, int],
) -> GroupLag:
    # Partitions named explicitly: Tansu cannot answer "all partitions" (OffsetFetch, null).
    offsets = await admin.list_consumer_group_offsets(group, partitions=tps) if tps else {}
    committed: dict[int, int | None] = {tp.partition: None for tp in tps}
    for tp, meta in offsets.items():
        committed[tp.partition] = meta.offset if meta.offset >= 0 else None
    lag = {}
    for p, done in committed.items():
        read_from = begin.get(p, 0) if done is None else done
        lag[p] = max(0, end.get(p, 0) - read_from)
    state, members = await _describe(admin, group)
    topic = tps[0].topic if tps else ""
    return GroupLag(group, topic, committed, end, lag, state, members)


async def _describe(admin: AIOKafkaAdminClient, group: str) -> tuple[str, int | None]:
    """(state, member count); ("", None) where the broker does not describe groups."""
    try:
        responses = await admin.describe_consumer_groups([group])
        for response in responses:
            for described in response.groups:
                error_code, _name, state, _ptype, _protocol, members = described[:6]
                if not error_code:
                    return str(state), len(members)
    except (KafkaError, ValueError) as exc:
        log.debug("status.group_not_described", group=group, error=repr(exc))
    return "", None
