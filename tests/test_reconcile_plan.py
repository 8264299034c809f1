"""What a reconciliation publishes, broker-free: the plan from a bucket listing and indexes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from consumers.indexer.reconcile import BucketObject, plan
from schemas.minio_events import partition_of

LONG_AGO = datetime(2026, 1, 1, tzinfo=UTC)
NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def obj(etag: str, modified: datetime = LONG_AGO) -> BucketObject:
    return BucketObject(etag=etag, size=10, modified=modified)


def test_missing_stale_and_ghost_images_become_created_and_removed_events() -> None:
    bucket = {"images/a.jpg": obj("e1"), "images/b.jpg": obj("e2"), "images/c.jpg": obj("e3")}
    indexed = {
        "phash": {"images/a.jpg": "e1", "images/b.jpg": "old", "images/gone.jpg": "e9"},
        "clip": {"images/a.jpg": "e1", "images/b.jpg": "e2", "images/c.jpg": "e3"},
    }
    todo = plan("images", bucket, indexed, {0}, 1, settled_before=NOW)
    assert set(todo.create) == {"images/b.jpg", "images/c.jpg"}
    assert todo.remove == {"images/gone.jpg"}
    assert todo.features["phash"].model_dump() == {"missing": 1, "stale": 1, "ghosts": 1}
    assert todo.features["clip"].model_dump() == {"missing": 0, "stale": 0, "ghosts": 0}
    assert todo.scanned == 3


def test_objects_changed_within_the_grace_period_are_left_to_their_events() -> None:
    recent = NOW - timedelta(seconds=1)
    bucket = {"images/new.jpg": obj("e1", modified=NOW + timedelta(seconds=5))}
    todo = plan("images", bucket, {"phash": {}}, {0}, 1, settled_before=recent)
    assert todo.create == {}


def test_only_the_partitions_served_here_are_reconciled() -> None:
    ids = [f"images/{i}.jpg" for i in range(40)]
    bucket = {image_id: obj("e") for image_id in ids}
    todo = plan("images", bucket, {"phash": {}}, {1, 3}, 4, settled_before=NOW)
    assert set(todo.create) == {i for i in ids if partition_of(i.encode(), 4) in {1, 3}}
    assert 0 < len(todo.create) < len(ids)


def test_images_of_other_buckets_are_not_ghosts() -> None:
    todo = plan("images", {}, {"phash": {"other/x.jpg": "e"}}, {0}, 1, settled_before=NOW)
    assert todo.remove == set()
