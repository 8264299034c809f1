"""Fixtures: a real embedded stack (Tansu broker + nanio S3 gateway + extractor + indexer
processes) on free ports, shared by the integration tests of one session."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from minio import Minio

from lookalike.s3 import s3_client
from lookalike.stack import Stack
from producers.search_client import SearchClient
from schemas.settings import Settings

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # A small upload limit, so the oversize test needs no 50 MB file.
    # A small CLIP architecture (random weights, as everywhere in tests) keeps the suite quick.
    env = {
        "LOOKALIKE_MAX_IMAGE_BYTES": "2000000",
        "LOOKALIKE_CLIP_MODEL": "ViT-S-32",
        # Every feature, copy verification's keypoints too (opt-in in production: its cost).
        "LOOKALIKE_FEATURES": "phash,colour,copy,keypoints,clip",
    }
    stack = Stack(tmp_path_factory.mktemp("stack"), env=env)
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()


@pytest.fixture
def settings(stack: Stack) -> Settings:
    return stack.settings


@pytest.fixture
def s3(settings: Settings) -> Minio:
    return s3_client(settings)


@pytest.fixture
async def search(settings: Settings) -> AsyncIterator[SearchClient]:
    async with SearchClient(settings) as client:
        yield client
