"""Answering one search request against local indexes, broker-free (the search service calls
QueryEngine.answer for every request it reads); and merging shards' replies into one."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from consumers.features.catalog import COLOUR, PHASH
from consumers.features.decode import decode_image
from consumers.indexer.query import QueryEngine
from index_store.engines.exact_float import ExactFloatEngine
from index_store.engines.hamming import HammingEngine
from index_store.feature_index import FeatureIndex
from index_store.lmdb_store import FeatureStore, ImageRecord, Upsert
from lookalike.samples import jpeg, photo
from producers.search_client import merge_replies
from schemas.search import SearchErrorCode, SearchHit, SearchReply, SearchRequest, Verdict
from schemas.settings import Settings

SETTINGS = Settings(_env_file=None, max_query_image_bytes=200_000)
PHOTOS = ("coffee", "chelsea", "astronaut", "rocket")


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> QueryEngine:
    store = FeatureStore(tmp_path_factory.mktemp("query"))
    phash = FeatureIndex(store, PHASH.index_name, HammingEngine(PHASH.vector_bytes))
    colour = FeatureIndex(store, COLOUR.index_name, ExactFloatEngine(COLOUR.dim, COLOUR.metric))
    images = {name: photo(name) for name in PHOTOS}
    for spec, index in ((PHASH, phash), (COLOUR, colour)):
        vectors = spec.describe_batch(list(images.values()))
        index.apply(
            [
                Upsert(f"images/{n}.jpg", v, ImageRecord(bucket="images", key=f"{n}.jpg", etag=n))
                for n, v in zip(images, vectors, strict=True)
            ],
            {},
        )
    return QueryEngine(
        SETTINGS, {"phash": PHASH, "colour": COLOUR}, {"phash": phash, "colour": colour}
    )


def test_an_image_finds_its_original_first(engine: QueryEngine) -> None:
    reply = engine.answer(
        SearchRequest(feature="phash", image=jpeg(photo("chelsea").resize((200, 150))), k=2)
    )
    assert reply.ok and reply.hits[0].image_id == "images/chelsea.jpg"
    assert reply.hits[0].etag == "chelsea" and reply.indexed == len(PHOTOS)


def test_a_query_by_id_leaves_the_image_itself_out_and_returns_its_vector(
    engine: QueryEngine,
) -> None:
    reply = engine.answer(SearchRequest(feature="colour", image_id="images/coffee.jpg", k=10))
    assert reply.ok and "images/coffee.jpg" not in [h.image_id for h in reply.hits]
    assert len(reply.hits) == len(PHOTOS) - 1
    assert reply.query_vector is not None and len(reply.query_vector) == COLOUR.vector_bytes
    distances = [h.distance for h in reply.hits]
    assert distances == sorted(distances)


@pytest.mark.parametrize(
    ("request_", "code"),
    [
        (SearchRequest(feature="phash", image_id="images/missing.jpg"), SearchErrorCode.NOT_FOUND),
        (SearchRequest(feature="phash", image=b"\x89PNG broken"), SearchErrorCode.BAD_IMAGE),
        (SearchRequest(feature="phash", image=b"x" * 200_001), SearchErrorCode.TOO_LARGE),
        (SearchRequest(feature="phash", vector=b"\x00" * 8), SearchErrorCode.BAD_REQUEST),
        (SearchRequest(feature="phash", text="a cat"), SearchErrorCode.UNSUPPORTED),
        (SearchRequest(feature="clip", text="a cat"), SearchErrorCode.UNSUPPORTED),
    ],
)
def test_bad_requests_get_an_error_reply_not_an_exception(
    engine: QueryEngine, request_: SearchRequest, code: SearchErrorCode
) -> None:
    reply = engine.answer(request_)
    assert not reply.ok and reply.error_code is code and reply.error


def hit(image_id: str, distance: float) -> SearchHit:
    bucket, _, key = image_id.partition("/")
    return SearchHit(image_id=image_id, bucket=bucket, key=key, distance=distance)


def shard(partitions: list[int], hits: list[SearchHit], indexed: int) -> SearchReply:
    return SearchReply(
        ok=True,
        feature="phash",
        hits=hits,
        indexed=indexed,
        partitions=partitions,
        partition_count=4,
    )


def test_shard_replies_merge_into_one_top_k_with_replicas_counted_once() -> None:
    a = shard([0, 2], [hit("i/a", 1), hit("i/c", 5)], indexed=10)
    a_replica = shard([0, 2], [hit("i/a", 1), hit("i/c", 5)], indexed=10)
    b = shard([1, 3], [hit("i/b", 3), hit("i/d", 9)], indexed=7)
    merged = merge_replies([a, a_replica, b], k=3)
    assert [h.image_id for h in merged.hits] == ["i/a", "i/b", "i/c"]
    assert merged.indexed == 17 and merged.partitions == [0, 1, 2, 3] and not merged.partial


def test_a_missing_shard_makes_the_merged_reply_partial() -> None:
    merged = merge_replies([shard([0, 2], [hit("i/a", 1)], indexed=3)], k=5)
    assert merged.ok and merged.partial and merged.partitions == [0, 2]


def test_all_features_give_one_ranked_answer_with_distances_and_verdicts(
    engine: QueryEngine,
) -> None:
    copy = jpeg(photo("chelsea").resize((200, 150)))  # a resized copy of an indexed photo
    reply = engine.answer(SearchRequest(image=copy, k=3))  # feature "all" by default
    assert reply.ok and reply.feature == "all" and len(reply.hits) == 3
    first = reply.hits[0]
    assert first.image_id == "images/chelsea.jpg" and first.verdict is Verdict.COPY
    assert set(first.distances) == {"phash", "colour"}  # every feature, every hit
    assert all(set(h.distances) == {"phash", "colour"} for h in reply.hits)
    scores = [h.distance for h in reply.hits]
    assert scores == sorted(scores)
    assert reply.hits[-1].verdict is Verdict.UNRELATED


def test_the_same_bytes_are_an_exact_match(engine: QueryEngine, tmp_path: Path) -> None:
    data = jpeg(photo("rocket"))
    store = FeatureStore(tmp_path)
    phash = FeatureIndex(store, PHASH.index_name, HammingEngine(PHASH.vector_bytes))
    etag = hashlib.md5(data).hexdigest()  # S3's eTag of a single-part upload
    record = ImageRecord(bucket="images", key="rocket.jpg", etag=etag)
    (vector,) = PHASH.describe_batch([decode_image(data, max_pixels=10**8)])
    phash.apply([Upsert("images/rocket.jpg", vector, record)], {})
    exact = QueryEngine(SETTINGS, {"phash": PHASH}, {"phash": phash})
    reply = exact.answer(SearchRequest(image=data, k=1))
    assert reply.ok and reply.hits[0].verdict is Verdict.EXACT


def test_a_fused_query_by_a_missing_id_is_not_found(engine: QueryEngine) -> None:
    reply = engine.answer(SearchRequest(image_id="images/missing.jpg"))
    assert not reply.ok and reply.error_code is SearchErrorCode.NOT_FOUND
