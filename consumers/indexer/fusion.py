"""One answer across every feature index: candidates from each, their distance in every feature,
one fused rank and a verdict per hit.

1. each feature index proposes its nearest `pool` images for the query;
2. every candidate gets its exact distance in every feature (a scratch exact engine over the
   candidates' stored vectors: a CLIP look-alike gets its copy distance too, so the verdict
   sees everything); the keypoints feature's verifier (copy_verification.py) proposes and
   verifies its own (verifying every other feature's too would double its cost);
3. the fused score ranks them. Two rules (chosen by measurement, BENCHMARKS.md "Fused search"):
   - `calibrated`: each distance over its feature's alert threshold (the distance the
     feature calls "the same picture", measured per feature: FeatureSpec.alert_max_distance),
     the smallest ratio wins: <= 1 means some feature vouches for the match;
   - `rrf`: reciprocal rank fusion, the sum over features of 1 / (60 + rank);
4. the verdict: `exact` (same bytes: eTag), `copy` (a copy feature, or the verified keypoints
   feature, within its threshold),
   `similar` (CLIP or colour within theirs), else `unrelated`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from consumers.features.contract import FeatureSpec
from index_store.engines.factory import EngineFactory
from index_store.feature_index import FeatureIndex
from index_store.metric import Metric
from schemas.search import Verdict

if TYPE_CHECKING:
    from consumers.indexer.copy_verification import CopyVerifier

FusionRule = Literal["calibrated", "rrf"]
# within their thresholds: the same picture, altered
COPY_FEATURES = ("copy", "phash", "keypoints")
SIMILAR_FEATURES = ("clip", "colour")  # within theirs: a look-alike
RRF_K = 60
EXACT_ENGINES = EngineFactory("exact")


@dataclass
class Candidate:
    image_id: str
    distances: dict[str, float] = field(default_factory=dict)
    ranks: dict[str, int] = field(default_factory=dict)
    score: float = 0.0
    verdict: Verdict = Verdict.UNRELATED


def gather(
    specs: Mapping[str, FeatureSpec],
    indexes: Mapping[str, FeatureIndex],
    queries: Mapping[str, Sequence[bytes]],
    pool: int,
    exclude: Sequence[str],
    verifier: CopyVerifier | None = None,
) -> dict[str, Candidate]:
    """Each feature's `pool` nearest, then every candidate's distance in every queried feature
    (a verified feature's from `verifier`, which proposes its own candidates too)."""
    candidates: dict[str, Candidate] = {}
    searched = {n: q for n, q in queries.items() if specs[n].metric is not Metric.VERIFIED}
    for name, vectors in searched.items():
        for rank, found in enumerate(indexes[name].search(vectors, pool, None, exclude), 1):
            candidates.setdefault(found.image_id, Candidate(found.image_id)).ranks[name] = rank
    for name in queries.keys() - searched.keys():
        if verifier is None:
            continue
        verified = verifier.search(queries[name], pool, None, exclude)
        for rank, (image_id, distance) in enumerate(verified, 1):
            candidate = candidates.setdefault(image_id, Candidate(image_id))
            candidate.ranks[name], candidate.distances[name] = rank, distance
    ids = sorted(candidates)
    for name, vectors in searched.items():
        for image_id, distance in exact_distances(specs[name], indexes[name], vectors, ids):
            candidates[image_id].distances[name] = distance
    return candidates


def exact_distances(
    spec: FeatureSpec, index: FeatureIndex, queries: Sequence[bytes], image_ids: list[str]
) -> list[tuple[str, float]]:
    """The exact distance of each stored image in `image_ids` to the nearest of `queries`."""
    scratch = EXACT_ENGINES.make(spec.metric, spec.dim, spec.codes_per_item)
    for image_id, vector in zip(image_ids, index.vectors_of(image_ids), strict=True):
        if vector is not None:
            scratch.upsert(image_id, vector)
    return scratch.search(queries, max(len(scratch), 1))


def rank(
    candidates: dict[str, Candidate],
    specs: Mapping[str, FeatureSpec],
    rule: FusionRule,
    query_etag: str | None,
    etags: Mapping[str, str | None],
    k: int,
) -> list[Candidate]:
    for c in candidates.values():
        c.score = score(c, specs, rule)
        c.verdict = verdict(c, specs, query_etag, etags.get(c.image_id))
    return sorted(candidates.values(), key=lambda c: (c.score, c.image_id))[:k]


def score(c: Candidate, specs: Mapping[str, FeatureSpec], rule: FusionRule) -> float:
    """Smaller is closer, for both rules."""
    if rule == "rrf":
        return -sum(1.0 / (RRF_K + r) for r in c.ranks.values())
    ratios = [d / specs[f].alert_max_distance for f, d in c.distances.items()]
    return min(ratios) if ratios else float("inf")


def verdict(
    c: Candidate,
    specs: Mapping[str, FeatureSpec],
    query_etag: str | None,
    etag: str | None,
) -> Verdict:
    if query_etag is not None and etag == query_etag:
        return Verdict.EXACT

    def within(features: Sequence[str]) -> bool:
        return any(
            f in c.distances and c.distances[f] <= specs[f].alert_max_distance for f in features
        )

    if within(COPY_FEATURES):
        return Verdict.COPY
    if within(SIMILAR_FEATURES):
        return Verdict.SIMILAR
    return Verdict.UNRELATED
