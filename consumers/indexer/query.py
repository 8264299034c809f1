"""Answer one SearchRequest against the local indexes. Blocking (decode, hash, scan):
the search service calls it from a worker thread. Always returns a reply, never raises."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping, Sequence

import structlog
from PIL import Image

from consumers.features.contract import FeatureSpec
from consumers.features.decode import UndecodableImage, decode_image
from consumers.indexer.copy_verification import verifier_for
from consumers.indexer.fusion import Candidate, gather, rank
from index_store import copy_scorer
from index_store.feature_index import FeatureIndex, Neighbour
from index_store.lmdb_store import ImageRecord
from index_store.metric import Metric
from schemas.metrics import SEARCH_ERRORS, SEARCH_SECONDS
from schemas.search import (
    ALL_FEATURES,
    SearchErrorCode,
    SearchHit,
    SearchReply,
    SearchRequest,
    Verdict,
)
from schemas.settings import Settings

log = structlog.get_logger(__name__)


class QueryError(Exception):
    def __init__(self, code: SearchErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class QueryEngine:
    def __init__(
        self,
        settings: Settings,
        specs: Mapping[str, FeatureSpec],
        indexes: Mapping[str, FeatureIndex],
    ) -> None:
        self._settings = settings
        self._specs = specs  # by feature name
        self._indexes = indexes  # by feature name
        self._verifier = verifier_for(specs, indexes)  # the keypoints feature's search
        # This indexer's shard: set once its partitions are assigned.
        self.partitions: list[int] = []
        self.partition_count = 0

    def answer(self, request: SearchRequest) -> SearchReply:
        started = time.perf_counter()
        try:
            if request.feature == ALL_FEATURES:
                return self._timed(request, started, self._fused(request))
            index = self._index_for(request.feature)
            spec = self._specs[request.feature]
            if spec.metric is Metric.VERIFIED:
                queries, found = self._verified(request, spec, index)
            else:
                queries, exclude = self._query_vectors(request, spec, index)
                found = index.search(queries, request.k, request.max_distance, exclude)
            reply = SearchReply(
                ok=True,
                feature=request.feature,
                hits=[to_hit(n, spec) for n in found],
                indexed=len(index),
                partitions=self.partitions,
                partition_count=self.partition_count,
                query_vector=queries[0] if request.image_id is not None else None,
            )
        except QueryError as exc:
            reply = self._shard_reply(error_reply(request.feature, exc.code, str(exc)))
        except Exception as exc:  # a bug met by one request: it alone is answered with an error
            log.exception("search.failed", feature=request.feature, error=repr(exc))
            message = f"the indexer failed on this request ({type(exc).__name__}); see its log"
            reply = self._shard_reply(
                error_reply(request.feature, SearchErrorCode.INTERNAL, message)
            )
        return self._timed(request, started, reply)

    def _timed(self, request: SearchRequest, started: float, reply: SearchReply) -> SearchReply:
        took = time.perf_counter() - started
        SEARCH_SECONDS.labels(feature=request.feature).observe(took)
        if not reply.ok:
            code = reply.error_code.value if reply.error_code else "unknown"
            SEARCH_ERRORS.labels(feature=request.feature, code=code).inc()
        return reply.model_copy(update={"took_ms": took * 1000})

    def _fused(self, request: SearchRequest) -> SearchReply:
        """Every feature index asked, one ranked answer with verdicts (fusion.py)."""
        try:
            queries, exclude, query_etag = self._fused_queries(request)
        except QueryError as exc:
            return self._shard_reply(error_reply(ALL_FEATURES, exc.code, str(exc)))
        pool = max(2 * request.k, 10)
        candidates = gather(self._specs, self._indexes, queries, pool, exclude, self._verifier)
        any_index = self._indexes[next(iter(queries))]
        ids = sorted(candidates)
        records = dict(zip(ids, any_index.records_of(ids), strict=True))
        etags = {i: r.etag if r else None for i, r in records.items()}
        ranked = rank(
            candidates, self._specs, self._settings.fusion_rule, query_etag, etags, request.k
        )
        if request.max_distance is not None:
            ranked = [c for c in ranked if c.score <= request.max_distance]
        hits = [fused_hit(c, records.get(c.image_id)) for c in ranked]
        return self._shard_reply(
            SearchReply(
                ok=True,
                feature=ALL_FEATURES,
                hits=hits,
                indexed=max(len(i) for i in self._indexes.values()),
            )
        )

    def _fused_queries(
        self, request: SearchRequest
    ) -> tuple[dict[str, Sequence[bytes]], list[str], str | None]:
        """Per feature, the query's vectors (the image decoded once); what to leave out; the
        query's eTag (same bytes: an exact match)."""
        exclude = list(request.exclude)
        if request.image_id is not None:
            found = {
                name: index.vectors_of([request.image_id])[0]
                for name, index in self._indexes.items()
            }
            queries: dict[str, Sequence[bytes]] = {
                name: [v] for name, v in found.items() if v is not None
            }
            if not queries:
                raise QueryError(
                    SearchErrorCode.NOT_FOUND, f"{request.image_id!r} is not in any index"
                )
            record = self._indexes[next(iter(queries))].record(request.image_id)
            return queries, [*exclude, request.image_id], record.etag if record else None
        if request.image is not None:
            image = self._decoded(request.image)
            keep = slice(None) if request.include_mirrored else slice(1)
            queries = {n: s.query_vectors(image)[keep] for n, s in self._specs.items()}
            return queries, exclude, hashlib.md5(request.image).hexdigest()
        if request.text is not None:
            queries = {
                name: [spec.describe_text(request.text)]
                for name, spec in self._specs.items()
                if spec.describe_text is not None
            }
            if not queries:
                raise QueryError(SearchErrorCode.UNSUPPORTED, "no feature here searches by text")
            return queries, exclude, None
        raise QueryError(
            SearchErrorCode.UNSUPPORTED, "a raw vector belongs to one feature: name it"
        )

    def _decoded(self, data: bytes) -> Image.Image:
        limit = self._settings.max_query_image_bytes
        if len(data) > limit:
            raise QueryError(
                SearchErrorCode.TOO_LARGE,
                f"query image is {len(data):,} bytes; the limit is {limit:,}",
            )
        try:
            return decode_image(data, max_pixels=self._settings.max_image_pixels)
        except UndecodableImage as exc:
            raise QueryError(SearchErrorCode.BAD_IMAGE, f"query image: {exc}") from exc

    def _shard_reply(self, reply: SearchReply) -> SearchReply:
        return reply.model_copy(
            update={"partitions": self.partitions, "partition_count": self.partition_count}
        )

    def _verified(
        self, request: SearchRequest, spec: FeatureSpec, index: FeatureIndex
    ) -> tuple[Sequence[bytes], list[Neighbour]]:
        """The keypoints feature's search: candidates verified by alignment
        (copy_verification.py)."""
        assert self._verifier is not None  # built whenever a VERIFIED feature is configured
        queries, exclude = self._query_vectors(request, spec, index)
        try:
            found = self._verifier.neighbours(queries, request.k, request.max_distance, exclude)
        except ValueError as exc:
            raise QueryError(SearchErrorCode.BAD_REQUEST, str(exc)) from exc
        return queries, found

    def _index_for(self, feature: str) -> FeatureIndex:
        index = self._indexes.get(feature)
        if index is None:
            raise QueryError(
                SearchErrorCode.UNSUPPORTED,
                f"no index for feature {feature!r}; this indexer has {sorted(self._indexes)}",
            )
        return index

    def _query_vectors(
        self, request: SearchRequest, spec: FeatureSpec, index: FeatureIndex
    ) -> tuple[Sequence[bytes], list[str]]:
        exclude = list(request.exclude)
        if request.image_id is not None:
            # The engine's copy, else the store's (an engine may not keep vectors: keypoints).
            code = index.vector_of(request.image_id) or index.vectors_of([request.image_id])[0]
            if code is None:
                raise QueryError(
                    SearchErrorCode.NOT_FOUND, f"{request.image_id!r} is not in the index"
                )
            return [code], [*exclude, request.image_id]
        if request.vector is not None:
            why = spec.unusable(request.vector)
            if why is not None:
                raise QueryError(SearchErrorCode.BAD_REQUEST, f"query vector: {why}")
            return [request.vector], exclude
        if request.image is not None:
            vectors = spec.query_vectors(self._decoded(request.image))
            return (vectors if request.include_mirrored else vectors[:1]), exclude
        assert request.text is not None  # SearchRequest holds exactly one query
        if spec.describe_text is None:
            raise QueryError(
                SearchErrorCode.UNSUPPORTED,
                f"feature {request.feature!r} cannot search by text; 'clip' can",
            )
        return [spec.describe_text(request.text)], exclude


def to_hit(n: Neighbour, spec: FeatureSpec | None = None) -> SearchHit:
    """A feature's hit; a verifying feature's (keypoints) says whether it is a copy: `copy`
    within the alert threshold (chosen for precision), `similar` where a copy is still likelier
    than not (copy_scorer.LIKELY), else `unrelated`."""
    if spec is None or spec.metric is not Metric.VERIFIED:
        return hit_for(n.image_id, n.record, n.distance)
    if n.distance <= spec.alert_max_distance:
        verdict = Verdict.COPY
    elif n.distance <= copy_scorer.LIKELY:
        verdict = Verdict.SIMILAR
    else:
        verdict = Verdict.UNRELATED
    return hit_for(n.image_id, n.record, n.distance, verdict=verdict)


def fused_hit(c: Candidate, record: ImageRecord | None) -> SearchHit:
    return hit_for(c.image_id, record, c.score, distances=c.distances, verdict=c.verdict)


def hit_for(
    image_id: str, record: ImageRecord | None, distance: float, **fused: object
) -> SearchHit:
    """A hit as a reply carries it: where the image is (from its record when there is one)."""
    bucket, _, key = image_id.partition("/")
    return SearchHit.model_validate(
        {
            "image_id": image_id,
            "bucket": record.bucket if record else bucket,
            "key": record.key if record else key,
            "distance": distance,
            "etag": record.etag if record else None,
            **fused,
        }
    )


def error_reply(feature: str, code: SearchErrorCode, message: str) -> SearchReply:
    return SearchReply(ok=False, feature=feature, error_code=code, error=message)
