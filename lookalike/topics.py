"""Create every topic the system uses (idempotent): `lookalike create-topics`."""

from __future__ import annotations

import structlog
from aiokafka.admin import NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from consumers.features.catalog import KNOWN
from schemas.kafka import make_admin
from schemas.settings import Settings

log = structlog.get_logger(__name__)


def topic_plan(settings: Settings) -> dict[str, tuple[int, dict[str, str]]]:
    """topic -> (partitions, config)."""
    p = settings.partitions
    compact = {"cleanup.policy": "compact"}  # features: the last event per image is the truth
    plan: dict[str, tuple[int, dict[str, str]]] = {
        settings.image_events_topic: (p, {}),
        settings.search_requests_topic: (p, {}),
        settings.search_replies_topic: (p, {}),
        settings.similarity_results_topic: (p, {}),
        settings.image_alerts_topic: (p, {}),
        settings.dead_letter_topic: (1, {}),
        settings.control_topic: (1, {}),
    }
    for name in KNOWN:
        plan[settings.features_topic(name)] = (p, compact)
    return plan


async def create_topics(settings: Settings) -> list[str]:
    admin = make_admin(settings)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [
            NewTopic(name, partitions, replication_factor=1, topic_configs=config)
            for name, (partitions, config) in topic_plan(settings).items()
            if name not in existing
        ]
        if wanted:
            try:
                await admin.create_topics(wanted)
            except TopicAlreadyExistsError:
                pass  # another process won the race
        created = [t.name for t in wanted]
        log.info("topics.ready", created=created)
        return created
    finally:
        await admin.close()
