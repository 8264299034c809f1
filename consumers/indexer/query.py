"""Answer one SearchRequest against the local indexes. Blocking (decode, hash, scan):
the search service calls it from a worker thread. Always returns a reply, never raises."""

from __future__ import annotations

import time
from collections.abc import Mapping

from consumers.features.contract import FeatureSpec
from consumers.features.decode import UndecodableImage, decode_image
from index_store.feature_index import FeatureIndex, Neighbour
from schemas.metrics import SEARCH_ERRORS, SEARCH_SECONDS
from schemas.search import SearchErrorCode, SearchHit, SearchReply, SearchRequest
from schemas.settings import Settings


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
        # This indexer's shard: set once its partitions are assigned.
        self.partitions: list[int] = []
        self.partition_count = 0

    def answer(self, request: SearchRequest) -> SearchReply:
        started = time.perf_counter()
        try:
            index = self._index_for(request.feature)
            queries, exclude = self._query_vectors(request, self._specs[request.feature], index)
            found = index.search(queries, request.k, request.max_distance, exclude)
            reply = SearchReply(
                ok=True,
                feature=request.feature,
                hits=[to_hit(n) for n in found],
                indexed=len(index),
                partitions=self.partitions,
                partition_count=self.partition_count,
                query_vector=queries[0] if request.image_id is not None else None,
            )
        except QueryError as exc:
            reply = error_reply(request.feature, exc.code, str(exc)).model_copy(
                update={"partitions": self.partitions, "partition_count": self.partition_count}
            )
        took = time.perf_counter() - started
        SEARCH_SECONDS.labels(feature=request.feature).observe(took)
        if not reply.ok:
            code = reply.error_code.value if reply.error_code else "unknown"
            SEARCH_ERRORS.labels(feature=request.feature, code=code).inc()
        return reply.model_copy(update={"took_ms": took * 1000})

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
    ) -> tuple[list[bytes], list[str]]:
        exclude = list(request.exclude)
        if request.image_id is not None:
            code = index.vector_of(request.image_id)
            if code is None:
                raise QueryError(
                    SearchErrorCode.NOT_FOUND, f"{request.image_id!r} is not in the index"
                )
            return [code], [*exclude, request.image_id]
        if request.vector is not None:
            if len(request.vector) != spec.vector_bytes:
                raise QueryError(
                    SearchErrorCode.BAD_REQUEST,
                    f"a {spec.name} vector has {spec.vector_bytes} bytes, "
                    f"not {len(request.vector)}",
                )
            return [request.vector], exclude
        if request.image is not None:
            limit = self._settings.max_query_image_bytes
            if len(request.image) > limit:
                raise QueryError(
                    SearchErrorCode.TOO_LARGE,
                    f"query image is {len(request.image):,} bytes; the limit is {limit:,}",
                )
            try:
                image = decode_image(request.image, max_pixels=self._settings.max_image_pixels)
            except UndecodableImage as exc:
                raise QueryError(SearchErrorCode.BAD_IMAGE, f"query image: {exc}") from exc
            vectors = spec.query_vectors(image)
            return (vectors if request.include_mirrored else vectors[:1]), exclude
        assert request.text is not None  # SearchRequest holds exactly one query
        if spec.describe_text is None:
            raise QueryError(
                SearchErrorCode.UNSUPPORTED,
                f"feature {request.feature!r} cannot search by text; 'clip' can",
            )
        return [spec.describe_text(request.text)], exclude


def to_hit(n: Neighbour) -> SearchHit:
    bucket, _, key = n.image_id.partition("/")
    record = n.record
    return SearchHit(
        image_id=n.image_id,
        bucket=record.bucket if record else bucket,
        key=record.key if record else key,
        distance=n.distance,
        etag=record.etag if record else None,
    )


def error_reply(feature: str, code: SearchErrorCode, message: str) -> SearchReply:
    return SearchReply(ok=False, feature=feature, error_code=code, error=message)
