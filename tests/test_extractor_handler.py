"""The extractor's handling of image events, broker-free: a fake S3 at the module boundary.

An event says "this key changed"; what gets described is the object as S3 holds it when the
event is handled."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import pytest
from minio import Minio
from minio.error import S3Error
from PIL import Image
from urllib3.exceptions import MaxRetryError

from consumers.extractor.handler import EventHandler
from consumers.features.catalog import PHASH
from consumers.features.clip_embed import ClipEmbedder
from consumers.features.contract import FeatureSpec
from index_store.metric import Metric
from lookalike.samples import jpeg, photo
from schemas.features import FeatureOp, VectorKind
from schemas.minio_events import BULK_SOURCE, build_notification
from schemas.settings import Settings

BUCKET = "images"


class FakeResponse:
    def __init__(self, data: bytes, etag: str) -> None:
        self._data = data
        self.headers = {"ETag": f'"{etag}"', "Content-Length": str(len(data))}

    def read(self, amt: int | None = None) -> bytes:
        return self._data[:amt]

    def close(self) -> None:
        pass

    def release_conn(self) -> None:
        pass


class FakeS3:
    def __init__(self) -> None:
        self.objects: dict[str, tuple[bytes, str]] = {}
        self.down = False

    def get_object(self, bucket: str, key: str) -> FakeResponse:
        if self.down:
            raise MaxRetryError(cast(Any, None), "/", ConnectionRefusedError())
        if key not in self.objects:
            raise S3Error(cast(Any, None), "NoSuchKey", "gone", key, "r", "h")
        return FakeResponse(*self.objects[key])


def handler(s3: FakeS3) -> EventHandler:
    return EventHandler(Settings(_env_file=None), cast(Minio, s3), [PHASH])


def created(key: str, etag: str) -> tuple[bytes, bytes]:
    event = build_notification("s3:ObjectCreated:Put", BUCKET, key, etag=etag, size=10)
    return f"{BUCKET}/{key}".encode(), event


def removed(key: str) -> tuple[bytes, bytes]:
    return f"{BUCKET}/{key}".encode(), build_notification("s3:ObjectRemoved:Delete", BUCKET, key)


async def test_a_removed_event_for_an_object_that_is_back_indexes_it() -> None:
    s3 = FakeS3()
    s3.objects["a.jpg"] = (jpeg(photo("coffee")), "e2")
    [outcome] = await handler(s3).handle_batch([removed("a.jpg")])
    assert [(e.op, e.etag) for e in outcome.events] == [(FeatureOp.UPSERT, "e2")]


async def test_a_created_event_for_an_overwritten_object_indexes_the_newer_version() -> None:
    s3 = FakeS3()
    s3.objects["a.jpg"] = (jpeg(photo("chelsea")), "new")
    [outcome] = await handler(s3).handle_batch([created("a.jpg", "old")])
    assert [(e.op, e.etag) for e in outcome.events] == [(FeatureOp.UPSERT, "new")]


async def test_a_reextraction_event_gives_a_bulk_feature_event_and_an_upload_does_not() -> None:
    s3 = FakeS3()
    s3.objects["a.jpg"] = (jpeg(photo("coffee")), "e1")
    again = build_notification(
        "s3:ObjectCreated:Put", BUCKET, "a.jpg", etag="e1", size=10, source=BULK_SOURCE
    )
    outcomes = await handler(s3).handle_batch([created("a.jpg", "e1"), (b"images/a.jpg", again)])
    assert [[e.bulk for e in o.events] for o in outcomes] == [[False], [True]]


async def test_a_created_event_for_an_object_that_is_gone_removes_it() -> None:
    [outcome] = await handler(FakeS3()).handle_batch([created("gone.jpg", "e1")])
    assert [e.op for e in outcome.events] == [FeatureOp.DELETE]
    assert outcome.dead_letter_reason is None


async def test_an_undecodable_upload_is_dead_lettered_and_rejected_in_the_index() -> None:
    s3 = FakeS3()
    s3.objects["bad.jpg"] = (b"\xff\xd8 not really a jpeg", "e9")
    [outcome] = await handler(s3).handle_batch([created("bad.jpg", "e9")])
    assert outcome.dead_letter_reason is not None and "undecodable" in outcome.dead_letter_reason
    assert [(e.op, e.etag) for e in outcome.events] == [(FeatureOp.REJECT, "e9")]


async def test_s3_unreachable_raises_so_the_batch_is_retried_not_dropped() -> None:
    s3 = FakeS3()
    s3.down = True
    with pytest.raises(MaxRetryError):
        await handler(s3).handle_batch([created("a.jpg", "e1")])


async def test_events_that_are_not_work_are_skipped_without_an_error() -> None:
    event = build_notification("s3:ObjectCreated:Put", BUCKET, "notes.json", etag="e", size=3)
    [outcome] = await handler(FakeS3()).handle_batch([(b"images/notes.json", event)])
    assert outcome.events == [] and outcome.dead_letter_reason is None


def decoding_itself() -> FeatureSpec:
    """A feature that decodes the fetched bytes itself, as CLIP does on a GPU (here: CPU)."""
    embedder = ClipEmbedder("ViT-S-32", None, "cpu", quantize_cpu=False)

    def never(images: Sequence[Image.Image]) -> list[bytes]:
        raise AssertionError("the extractor decoded on the CPU")

    def encoded(datas: Sequence[bytes]) -> list[bytes | str]:
        return [v if isinstance(v, str) else v.tobytes() for v in embedder.embed_encoded(datas)]

    return FeatureSpec(
        name="clip",
        version=embedder.version,
        vector_kind=VectorKind.FLOAT32,
        dim=embedder.dim,
        metric=Metric.COSINE,
        alert_max_distance=0.01,
        describe_batch=never,
        describe_encoded=encoded,
    )


async def test_features_that_decode_themselves_get_the_bytes_and_bad_ones_are_rejected() -> None:
    s3 = FakeS3()
    s3.objects["good.jpg"] = (jpeg(photo("coffee")), "e1")
    s3.objects["bad.jpg"] = (b"\xff\xd8 not really a jpeg", "e2")
    spec = decoding_itself()
    extractor = EventHandler(Settings(_env_file=None), cast(Minio, s3), [spec])
    good, bad = await extractor.handle_batch([created("good.jpg", "e1"), created("bad.jpg", "e2")])
    assert [(e.op, e.etag) for e in good.events] == [(FeatureOp.UPSERT, "e1")]
    assert good.events[0].vector is not None and len(good.events[0].vector) == spec.vector_bytes
    assert good.dead_letter_reason is None
    assert [(e.op, e.etag) for e in bad.events] == [(FeatureOp.REJECT, "e2")]
    assert bad.dead_letter_reason is not None and "undecodable image" in bad.dead_letter_reason
