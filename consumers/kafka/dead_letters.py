"""Send a message we cannot process to the dead-letter topic, with the reason, and move on."""

from __future__ import annotations

import re

import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.structs import ConsumerRecord

from schemas.dead_letter import DeadLetter
from schemas.metrics import DEAD_LETTERS

log = structlog.get_logger(__name__)


def dead_letter_for(record: ConsumerRecord[bytes, bytes], stage: str, reason: str) -> DeadLetter:
    return DeadLetter(
        stage=stage,
        reason=reason,
        source_topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        key=record.key,
        value=record.value,
    )


class DeadLetterSink:
    def __init__(self, producer: AIOKafkaProducer, topic: str, stage: str) -> None:
        self._producer = producer
        self._topic = topic
        self._stage = stage

    async def send(self, record: ConsumerRecord[bytes, bytes], reason: str) -> None:
        letter = dead_letter_for(record, self._stage, reason)
        log.warning(
            "dead_letter",
            stage=self._stage,
            reason=reason,
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
        )
        # Wait for the ack: the source offset is committed right after, and must not be
        # committed for a message that exists nowhere.
        await self._producer.send_and_wait(self._topic, letter.to_bytes(), key=record.key)
        DEAD_LETTERS.labels(stage=self._stage, reason=reason_kind(reason)).inc()


def reason_kind(reason: str) -> str:
    """A reason's kind, for counting (few values): its first words before any id or detail,
    e.g. 'undecodable image', 'oversize upload', 'ValueError'."""
    found = re.match(r"[A-Za-z_]+(?: [a-z_]+)?", reason)
    return found.group(0) if found else "other"
