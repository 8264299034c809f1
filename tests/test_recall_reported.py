"""An indexer measures the recall@10 of its approximate engines and reports it (real broker)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import numpy as np
import pytest

from consumers.features.catalog import build_features
from lookalike.stack import Stack
from producers.search_client import SearchClient
from schemas.features import FeatureEvent, FeatureOp, VectorKind
from schemas.kafka import make_producer
from tests.kafka_helpers import eventually

IMAGES = 1_200
ENV = {
    "LOOKALIKE_FEATURES": "clip",
    "LOOKALIKE_CLIP_MODEL": "ViT-S-32",
    "LOOKALIKE_VECTOR_TRAIN_SIZE": "500",  # the graph is fitted after 500 vectors
    "LOOKALIKE_RECALL_CHECK_INTERVAL_S": "1",
    "LOOKALIKE_RECALL_HOLD_OUT_EVERY": "20",  # about 60 of the images are unseen queries
}


@pytest.fixture(scope="module")
def clip_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = Stack(tmp_path_factory.mktemp("recall"), env=ENV)
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()


async def test_the_indexer_reports_the_recall_it_measures(clip_stack: Stack) -> None:
    settings = clip_stack.settings
    (clip,) = build_features(settings, ["clip"])
    rng = np.random.default_rng(11)
    vectors = rng.standard_normal((IMAGES, clip.dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    producer = make_producer(settings)
    await producer.start()
    try:
        sends = []
        for i, vector in enumerate(vectors):
            image_id = f"{settings.bucket}/synthetic/{i}.jpg"
            event = FeatureEvent(
                op=FeatureOp.UPSERT,
                image_id=image_id,
                bucket=settings.bucket,
                key=f"synthetic/{i}.jpg",
                feature="clip",
                feature_version=clip.version,
                etag=f"{i:032x}",
                size=1,
                vector_kind=VectorKind.FLOAT32,
                dim=clip.dim,
                vector=vector.tobytes(),
            )
            sends.append(
                await producer.send(
                    settings.features_topic("clip"), event.to_bytes(), key=image_id.encode()
                )
            )
        await asyncio.gather(*sends)
    finally:
        await producer.stop()

    async def recall() -> float | None:
        async with SearchClient(settings) as client:
            statuses = await client.status(timeout=2.0)
        found = [s.recall["clip"] for s in statuses if "clip" in s.recall]
        return found[0] if found else None

    measured = await eventually(recall, lambda r: r is not None, timeout=120)
    assert measured is not None and measured >= settings.recall_target
