"""The AsyncAPI 3.0 document of every topic and message, generated from the code: the topic
plan (lookalike/topics.py) and the pydantic message models (schemas/). `lookalike asyncapi`
writes docs/asyncapi.json; tests/test_asyncapi.py keeps the committed copy current.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from lookalike.topics import topic_plan
from schemas.control import (
    IndexerStatus,
    InventoryCommand,
    InventoryReport,
    RebuildCommand,
    RebuildReport,
    ReconcileCommand,
    ReconcileReport,
    StatusCommand,
)
from schemas.dead_letter import DeadLetter
from schemas.features import FeatureEvent
from schemas.search import SearchReply, SearchRequest
from schemas.settings import Settings
from schemas.similarity import ImageAlert, SimilarityResult

DOCUMENT = Path(__file__).parent.parent / "docs" / "asyncapi.json"

# A MinIO/S3 bucket notification is not ours to define: described, not modelled.
S3_NOTIFICATION: dict[str, Any] = {
    "type": "object",
    "description": "An S3 bucket notification as MinIO's Kafka target publishes it (key "
    "'bucket/object'; `Records[]` with eventName, s3.bucket.name, s3.object.key/eTag/size); "
    "shapes in shared/fixtures/s3-events, parsed by schemas/minio_events.py",
    "required": ["Records"],
    "properties": {"Records": {"type": "array", "items": {"type": "object"}}},
}


def _channels(settings: Settings) -> dict[str, tuple[str, list[type[BaseModel] | str]]]:
    """topic -> (what it carries, its messages)."""
    s = settings
    channels: dict[str, tuple[str, list[type[BaseModel] | str]]] = {
        s.image_events_topic: (
            "Created/removed object events (MinIO or the S3 gateway).",
            ["S3Notification"],
        ),
        s.search_requests_topic: (
            "Search requests; replies go to each request's reply_to.",
            [SearchRequest],
        ),
        s.search_replies_topic: ("Search replies, by correlation_id.", [SearchReply]),
        s.similarity_results_topic: (
            "Per-feature near-duplicates of each indexed image.",
            [SimilarityResult],
        ),
        s.image_alerts_topic: (
            "One joined alert per image version: copies and look-alikes.",
            [ImageAlert],
        ),
        s.dead_letter_topic: ("What could not be processed, with the reason.", [DeadLetter]),
        s.control_topic: (
            "Operator commands to every indexer; reports go to reply_to.",
            [RebuildCommand, ReconcileCommand, StatusCommand, InventoryCommand],
        ),
    }
    for topic in topic_plan(s):
        if topic.startswith(s.features_topic_prefix):
            channels[topic] = (
                "Feature events of one feature (compacted: last per image).",
                [FeatureEvent],
            )
    return channels


REPORTS: list[type[BaseModel]] = [RebuildReport, ReconcileReport, IndexerStatus, InventoryReport]


def document(settings: Settings | None = None) -> dict[str, Any]:
    settings = settings or Settings(_env_file=None)
    plan = topic_plan(settings)
    messages: dict[str, Any] = {
        "S3Notification": {
            "name": "S3Notification",
            "contentType": "application/json",
            "payload": S3_NOTIFICATION,
        }
    }
    for model in [
        m for _, ms in _channels(settings).values() for m in ms if not isinstance(m, str)
    ] + REPORTS:
        messages[model.__name__] = {
            "name": model.__name__,
            "contentType": "application/json",
            "summary": (model.__doc__ or model.__name__).strip().splitlines()[0],
            "payload": model.model_json_schema(),
        }
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    for topic, (description, carried) in sorted(_channels(settings).items()):
        names = [m if isinstance(m, str) else m.__name__ for m in carried]
        partitions, config = plan.get(topic, (settings.partitions, {}))
        channels[topic] = {
            "address": topic,
            "description": description,
            "messages": {n: {"$ref": f"#/components/messages/{n}"} for n in names},
            "bindings": {"kafka": {"partitions": partitions, "topicConfiguration": config or {}}},
        }
        operations[f"send:{topic}"] = {
            "action": "send",
            "channel": {"$ref": f"#/channels/{topic}"},
        }
    channels["reply topics"] = {
        "address": f"{settings.reply_to_prefix}{{client}}",
        "description": "Control reports, one per indexer, by correlation_id.",
        "messages": {m.__name__: {"$ref": f"#/components/messages/{m.__name__}"} for m in REPORTS},
    }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "lookalike",
            "version": "1",
            "description": "Image-similarity indexes kept in step with an S3 bucket over Kafka.",
        },
        "defaultContentType": "application/json",
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages},
    }


def write(path: Path = DOCUMENT) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document(), indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return path
