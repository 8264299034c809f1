"""The keypoints feature inside an indexer: its engine follows the store (upserts, removals,
snapshots, a rebuild that trains it), and its search verifies candidates, so a crop finds its
original with a `copy` verdict while a photograph that is not in the index gets none."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray
from PIL import Image

from consumers.features import copy_keypoints
from consumers.features.catalog import COPY, KEYPOINTS
from consumers.features.contract import FeatureSpec
from consumers.indexer.copy_verification import PROBE_STEP, CopyVerifier
from consumers.indexer.query import QueryEngine
from index_store import feature_index, search_threads
from index_store.engines import keypoint_engine
from index_store.engines.factory import EngineFactory
from index_store.engines.keypoint_engine import KeypointEngine
from index_store.feature_index import FeatureIndex
from index_store.keypoint_votes import Descriptors, KeypointVotes, Votes
from index_store.lmdb_store import Delete, FeatureStore, ImageRecord, Upsert
from index_store.metric import Metric
from lookalike.samples import photo
from schemas.search import SearchErrorCode, SearchRequest, Verdict
from schemas.settings import Settings

GALLERY = ("astronaut", "coffee", "rocket", "chelsea", "camera", "brick", "clock")
STRANGER = "coins"  # never indexed


def jpeg(img: Image.Image, quality: int = 90) -> bytes:
    out = io.BytesIO()
    img.convert("RGB").save(out, "JPEG", quality=quality)
    return out.getvalue()


def cropped(img: Image.Image, box: tuple[float, float, float, float]) -> Image.Image:
    w, h = img.size
    return img.crop((round(box[0] * w), round(box[1] * h), round(box[2] * w), round(box[3] * h)))


def upsert(spec: FeatureSpec, name: str) -> Upsert:
    vector = spec.describe_batch([photo(name)])[0]
    return Upsert(f"b/{name}", vector, ImageRecord(bucket="b", key=name, etag=f"e-{name}"))


def indexes_of(store: FeatureStore, tmp_path: Path) -> dict[str, FeatureIndex]:
    factory = EngineFactory("exact")
    return {
        spec.name: FeatureIndex(
            store,
            spec.index_name,
            factory.make(spec.metric, spec.dim, spec.codes_per_item),
            snapshot_dir=tmp_path / "snapshots" / spec.index_name,
        )
        for spec in (COPY, KEYPOINTS)
    }


def filled(tmp_path: Path) -> tuple[QueryEngine, dict[str, FeatureIndex]]:
    indexes = indexes_of(FeatureStore(tmp_path / "store"), tmp_path)
    for spec in (COPY, KEYPOINTS):
        indexes[spec.name].apply([upsert(spec, name) for name in GALLERY], {"t/0": 1})
    specs = {spec.name: spec for spec in (COPY, KEYPOINTS)}
    return QueryEngine(Settings(), specs, indexes), indexes


def test_a_crop_finds_its_original_as_a_copy_and_a_stranger_finds_none(tmp_path: Path) -> None:
    engine, _ = filled(tmp_path)
    crop = cropped(photo("rocket"), (0.1, 0.1, 0.9, 0.9))  # 80 % of each side
    reply = engine.answer(SearchRequest(feature="keypoints", image=jpeg(crop), k=3))
    assert reply.ok, reply.error
    assert reply.hits[0].image_id == "b/rocket" and reply.hits[0].verdict is Verdict.COPY
    assert reply.hits[0].distance <= KEYPOINTS.alert_max_distance
    assert all(h.verdict is Verdict.UNRELATED for h in reply.hits[1:])
    # 65 % of each side, off centre: still the first answer, at least a likely copy.
    tighter = cropped(photo("rocket"), (0.18, 0.1, 0.83, 0.72))
    first = engine.answer(SearchRequest(feature="keypoints", image=jpeg(tighter))).hits[0]
    assert first.image_id == "b/rocket" and first.verdict in (Verdict.COPY, Verdict.SIMILAR)

    stranger = engine.answer(SearchRequest(feature="keypoints", image=jpeg(photo(STRANGER))))
    assert stranger.ok and all(h.verdict is Verdict.UNRELATED for h in stranger.hits)


def test_a_mirrored_crop_is_verified_through_its_mirror(tmp_path: Path) -> None:
    engine, _ = filled(tmp_path)
    crop = cropped(photo("chelsea"), (0.1, 0.1, 0.85, 0.9)).transpose(
        Image.Transpose.FLIP_LEFT_RIGHT
    )
    reply = engine.answer(SearchRequest(feature="keypoints", image=jpeg(crop), k=1))
    assert [(h.image_id, h.verdict) for h in reply.hits] == [("b/chelsea", Verdict.COPY)]
    unmirrored = SearchRequest(feature="keypoints", image=jpeg(crop), include_mirrored=False)
    assert all(h.verdict is Verdict.UNRELATED for h in engine.answer(unmirrored).hits)


def test_a_query_verified_as_a_copy_never_describes_its_mirror(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine, _ = filled(tmp_path)
    described: list[bool] = []  # mirrored?
    view = copy_keypoints._packed_view

    def counted(trimmed: Image.Image, codes: bytes, mirrored: bool = False) -> bytes:
        described.append(mirrored)
        return view(trimmed, codes, mirrored)

    monkeypatch.setattr(copy_keypoints, "_packed_view", counted)
    crop = cropped(photo("rocket"), (0.1, 0.1, 0.9, 0.9))
    reply = engine.answer(SearchRequest(feature="keypoints", image=jpeg(crop), k=1))
    assert reply.hits[0].image_id == "b/rocket" and reply.hits[0].verdict is Verdict.COPY
    assert described == [False]
    # A picture that verifies as nothing is looked for through its mirror too.
    engine.answer(SearchRequest(feature="keypoints", image=jpeg(photo(STRANGER)), k=1))
    assert described == [False, False, True]


def test_a_strangers_mirror_is_voted_by_a_few_of_its_descriptors_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine, _ = filled(tmp_path)
    voters: list[int] = []  # descriptors per vote
    votes = KeypointEngine.votes

    def counted(self: KeypointEngine, query: NDArray[np.uint8], neighbours: int = 16) -> Votes:
        voters.append(len(query))
        return votes(self, query, neighbours)

    monkeypatch.setattr(KeypointEngine, "votes", counted)
    grass = jpeg(photo("grass"))  # never indexed; its mirror's few vote weakly
    reply = engine.answer(SearchRequest(feature="keypoints", image=grass, k=1))
    assert reply.ok and all(h.verdict is Verdict.UNRELATED for h in reply.hits)
    # The picture's own vote, then its mirror's few: this stranger's mirror is no likelier.
    assert len(voters) == 2 and voters[1] <= voters[0] // PROBE_STEP + 1
    # A mirrored crop's few vote strongly: its mirror then votes with all it has.
    voters.clear()
    crop = cropped(photo("chelsea"), (0.1, 0.1, 0.85, 0.9)).transpose(
        Image.Transpose.FLIP_LEFT_RIGHT
    )
    engine.answer(SearchRequest(feature="keypoints", image=jpeg(crop), k=1))
    assert len(voters) == 3 and voters[2] > voters[1]


def test_fused_search_calls_a_verified_crop_a_copy(tmp_path: Path) -> None:
    engine, _ = filled(tmp_path)
    crop = cropped(photo("coffee"), (0.15, 0.05, 0.95, 0.85))
    reply = engine.answer(SearchRequest(image=jpeg(crop), k=3))
    assert reply.ok and reply.hits[0].image_id == "b/coffee"
    assert reply.hits[0].verdict is Verdict.COPY
    assert reply.hits[0].distances["keypoints"] <= KEYPOINTS.alert_max_distance


def test_searching_by_a_missing_id_or_bad_keypoints_is_a_clear_error(tmp_path: Path) -> None:
    engine, _ = filled(tmp_path)
    missing = engine.answer(SearchRequest(feature="keypoints", image_id="b/nothing"))
    assert missing.error_code is SearchErrorCode.NOT_FOUND
    garbage = engine.answer(SearchRequest(feature="keypoints", vector=b"LKP2" + bytes(40)))
    assert garbage.error_code is SearchErrorCode.BAD_REQUEST


def test_by_id_an_indexed_image_is_not_its_own_copy(tmp_path: Path) -> None:
    engine, indexes = filled(tmp_path)
    reply = engine.answer(SearchRequest(feature="keypoints", image_id="b/clock", k=3))
    assert reply.ok and "b/clock" not in [h.image_id for h in reply.hits]
    indexes["keypoints"].apply([Delete("b/rocket")], {"t/0": 2})
    crop = cropped(photo("rocket"), (0.18, 0.1, 0.83, 0.72))
    after = engine.answer(SearchRequest(feature="keypoints", image=jpeg(crop)))
    assert "b/rocket" not in [h.image_id for h in after.hits]


def test_the_engine_survives_a_snapshot_and_a_rebuild_trains_it(tmp_path: Path) -> None:
    store = FeatureStore(tmp_path / "store")
    index = indexes_of(store, tmp_path)["keypoints"]
    index.apply([upsert(KEYPOINTS, name) for name in GALLERY], {"t/0": 1})
    held = len(index)
    assert index.checkpoint()
    again = indexes_of(store, tmp_path)["keypoints"]
    assert again.load() == held
    query = KEYPOINTS.query_vectors(cropped(photo("camera"), (0.1, 0.2, 0.8, 0.9)))[:1]
    assert [n.image_id for n in again.search(query, 1)] == ["b/camera"]
    assert again.rebuild(store.vectors(KEYPOINTS.index_name)) == held
    assert [n.image_id for n in again.search(query, 1)] == ["b/camera"]


def test_a_grown_vote_index_asks_to_be_rebuilt_and_a_bulk_fill_trains_it() -> None:
    vectors = [upsert(KEYPOINTS, name).vector for name in GALLERY]
    engine = EngineFactory().make(Metric.VERIFIED, KEYPOINTS.dim)
    assert isinstance(engine, KeypointEngine)
    copies = 120  # enough descriptors (~300 each) for groups to pay
    for n in range(copies):
        engine.upsert(f"b/{n}", vectors[n % len(vectors)])
    assert engine.needs_compaction
    fresh = engine.empty()
    fresh.upsert_many([f"b/{n}" for n in range(copies)],
                      b"".join(vectors[n % len(vectors)] for n in range(copies)))  # fmt: skip
    assert len(fresh) == copies and not fresh.needs_compaction


def test_every_copy_of_a_query_is_listed_not_only_the_first_verified(tmp_path: Path) -> None:
    engine, indexes = filled(tmp_path)
    for spec in (COPY, KEYPOINTS):
        twins = [upsert(spec, "chelsea") for _ in range(2)]
        twins = [Upsert(f"b/chelsea-{n}", u.vector, u.record) for n, u in enumerate(twins)]
        indexes[spec.name].apply(twins, {"t/0": 2})
    crop = cropped(photo("chelsea"), (0.1, 0.1, 0.9, 0.9))
    reply = engine.answer(SearchRequest(feature="keypoints", image=jpeg(crop), k=3))
    copies = {h.image_id for h in reply.hits if h.verdict is Verdict.COPY}
    assert copies == {"b/chelsea", "b/chelsea-0", "b/chelsea-1"}


def test_a_chunked_fill_trains_the_votes_for_everything_and_a_restored_engine_grows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(feature_index, "FILL_CHUNK", 30)
    built: list[int] = []  # images each vote index was built over

    class Counted(KeypointVotes):
        def __init__(self, gallery: Sequence[Descriptors] = (), lists: int | None = None):
            built.append(len(gallery))
            super().__init__(gallery, lists)

    monkeypatch.setattr(keypoint_engine, "KeypointVotes", Counted)
    store = FeatureStore(tmp_path / "store")
    index = indexes_of(store, tmp_path)["keypoints"]
    vectors = [upsert(KEYPOINTS, name).vector for name in GALLERY]
    many = [Upsert(f"b/{n}", vectors[n % len(vectors)], ImageRecord(bucket="b", key=str(n)))
            for n in range(120)]  # fmt: skip
    store.apply(KEYPOINTS.index_name, many, {"t/0": 1})
    assert index.load() == 120
    assert not index.engine.needs_compaction  # trained for all 120, not the first 30
    assert [n for n in built if n] == [120]  # once the fill was over, not at every chunk
    assert index.checkpoint()
    again = indexes_of(store, tmp_path)["keypoints"]
    again.load()
    again.apply([upsert(KEYPOINTS, "coins")], {"t/0": 2})
    query = KEYPOINTS.query_vectors(cropped(photo("coins"), (0.1, 0.1, 0.9, 0.9)))[:1]
    assert [n.image_id for n in again.search(query, 1)] == ["b/coins"]


@pytest.mark.parametrize("size", [(1, 1), (8, 8), (600, 10), (10, 600)])
def test_a_query_too_small_for_keypoints_is_answered_and_called_no_copy(
    tmp_path: Path, size: tuple[int, int]
) -> None:
    engine, _ = filled(tmp_path)
    tiny = jpeg(photo("coffee").resize(size))
    for feature in ("keypoints", "all"):
        reply = engine.answer(SearchRequest(feature=feature, image=tiny, k=3))
        assert reply.ok, reply.error
        assert all(h.verdict is not Verdict.COPY for h in reply.hits)


def test_a_request_that_meets_a_bug_alone_gets_an_internal_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine, _ = filled(tmp_path)

    def broken(*args: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(CopyVerifier, "search", broken)
    crop = jpeg(cropped(photo("rocket"), (0.1, 0.1, 0.9, 0.9)))
    failed = engine.answer(SearchRequest(feature="keypoints", image=crop, k=3))
    assert not failed.ok and failed.error_code is SearchErrorCode.INTERNAL
    assert "RuntimeError" in (failed.error or "")
    answered = engine.answer(SearchRequest(feature="copy", image=crop, k=3))
    assert answered.ok and answered.hits[0].image_id == "b/rocket"


def test_two_candidates_compared_at_a_time_give_the_answers_of_one_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """index_store/search_threads.py: the same hits, distances and verdicts either way."""
    engine, _ = filled(tmp_path)
    queries = [
        cropped(photo("rocket"), (0.1, 0.1, 0.9, 0.9)),
        cropped(photo("chelsea"), (0.1, 0.1, 0.85, 0.9)).transpose(Image.Transpose.FLIP_LEFT_RIGHT),
        cropped(photo("coffee"), (0.2, 0.05, 0.95, 0.8)),
        photo(STRANGER),
    ]
    answers = {}
    for threads in (1, 2):
        monkeypatch.setattr(search_threads, "THREADS", threads)
        answers[threads] = [
            engine.answer(SearchRequest(feature="keypoints", image=jpeg(q), k=5)).hits
            for q in queries
        ]
    assert answers[1] == answers[2]
    assert answers[2][0][0].image_id == "b/rocket"  # a real answer, not two empty ones
