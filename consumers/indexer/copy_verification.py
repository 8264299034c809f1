"""Copy search with verification: which indexed image a query copies, and whether it is a copy.

The `keypoints` feature's search. For a query's packed keypoints (which carry its copy codes):
1. candidates: the VOTED images with the most keypoint votes (index_store/keypoint_votes.py),
   the copy feature's HASHED nearest (when this indexer has the copy feature), and any the
   caller names (`also`);
2. each aligned (index_store/alignment.py: a similarity transform from the keypoint pairs that
   voted, its inliers, then the candidate's grey copy warped into the query's frame and
   compared; pixels for the COMPARED with most inliers), its packed keypoints read from the
   store of record;
3. each scored (index_store/copy_scorer.py: alignment, and the distance of the copy codes both
   carry), and its
   distance is 1 - the scorer's probability of a copy: at most the scorer's threshold's
   distance (the feature's alert threshold) says "copy".
A mirrored copy has other keypoints: when the query comes with its mirror's and nothing
verified as a copy, the mirror is tried too (nearest of both kept).

Blocking (alignment is CPU work): callers run it in a worker thread.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import structlog

from consumers.features import copy_signature, multi_hash
from consumers.features.contract import FeatureSpec
from index_store import alignment, copy_scorer
from index_store.copy_scorer import CopyScorer
from index_store.engines.engine import Engine, Hit, ranked
from index_store.engines.keypoint_engine import KeypointEngine
from index_store.feature_index import FeatureIndex
from index_store.keypoints import BadKeypoints, Keypoints, unpack
from index_store.metric import Metric

log = structlog.get_logger(__name__)

VOTED = 40  # candidates by keypoint votes
HASHED = 10  # candidates by the copy feature's codes
COMPARED = 50  # candidates (most inliers) whose pixels are compared
COPY = "copy"
CODE_BYTES = copy_signature.CODE_BITS // 8


@dataclass(frozen=True)
class Voted:
    """What the vote index said of one candidate."""

    weight: float
    pairs: alignment.Pairs


class CopyVerifier:
    def __init__(
        self, keypoints: FeatureIndex, copy: FeatureIndex | None, scorer: CopyScorer
    ) -> None:
        """`copy`: the copy feature's index, when this indexer has it (its nearest are
        candidates too)."""
        self._keypoints = keypoints
        self._copy = copy
        self._scorer = scorer

    @property
    def max_distance(self) -> float:
        """The largest distance a verified copy has."""
        return self._scorer.max_distance

    def search(
        self,
        queries: Sequence[bytes],
        k: int,
        max_distance: float | None = None,
        exclude: Iterable[str] = (),
        also: Sequence[str] = (),
    ) -> list[Hit]:
        """The `k` nearest by verified distance. `queries`: packed keypoints (with the query's
        copy codes), the query's then (optionally) its mirror's."""
        excluded = set(exclude)
        best: dict[str, float] = {}
        for n, packed in enumerate(queries):
            if n and any(d <= self.max_distance for d in best.values()):
                break  # verified already: the mirror is not needed
            try:
                query = unpack(packed)
            except BadKeypoints as exc:
                raise ValueError(f"query keypoints: {exc}") from exc
            for image_id, distance in self._verified(query, excluded, also):
                best[image_id] = min(distance, best.get(image_id, 1.0))
        return ranked(best.items(), k, max_distance)

    def _verified(self, query: Keypoints, excluded: set[str], also: Sequence[str]) -> list[Hit]:
        voted = self._keypoints.consult(lambda engine: votes_of(engine, query))
        codes = codes_of(query)
        hashed = self._hashed(codes, excluded)
        candidates = [i for i in dict.fromkeys([*voted, *hashed, *also]) if i not in excluded]
        stored = self._stored(candidates)
        candidates = [i for i in candidates if i in stored]
        if not candidates:
            return []
        distances = hash_distances(codes, [codes_of(stored[i]) for i in candidates])
        no_votes = Voted(0.0, [])
        aligned = alignment.align_all(
            alignment.prepare(query),
            [(stored[i], voted.get(i, no_votes).pairs or None) for i in candidates],
            COMPARED,
        )
        rows = np.stack(
            [copy_scorer.evidence(a, d) for a, d in zip(aligned, distances, strict=True)]
        )
        scores = self._scorer.score(rows)
        return [
            (i, copy_scorer.distance(float(s))) for i, s in zip(candidates, scores, strict=True)
        ]

    def _hashed(self, codes: list[bytes], excluded: set[str]) -> list[str]:
        """The copy feature's nearest to the query's codes."""
        if self._copy is None or not codes:
            return []
        return [n.image_id for n in self._copy.search(codes, HASHED, exclude=excluded)]

    def _stored(self, image_ids: list[str]) -> dict[str, Keypoints]:
        """The candidates' keypoints as stored (an image removed meanwhile has none)."""
        out: dict[str, Keypoints] = {}
        for image_id, packed in zip(image_ids, self._keypoints.vectors_of(image_ids), strict=True):
            if packed is None:
                continue
            try:
                out[image_id] = unpack(packed)
            except BadKeypoints as exc:  # the indexer checks them: a store from another build?
                log.warning(
                    "copy_verification.bad_stored_keypoints", image_id=image_id, error=str(exc)
                )
        return out


def votes_of(engine: Engine, query: Keypoints) -> dict[str, Voted]:
    """The VOTED images with most votes for `query`, and the pairs that voted."""
    if not isinstance(engine, KeypointEngine):
        raise TypeError(f"the keypoints index is served by {type(engine).__name__}")
    votes = engine.votes(query.descriptors)
    out: dict[str, Voted] = {}
    for image_id, weight in engine.voted(votes, VOTED):
        slot = engine.slot_of(image_id)
        if slot is not None:
            out[image_id] = Voted(weight, votes.pairs(slot))
    return out


def codes_of(keypoints: Keypoints) -> list[bytes]:
    """The copy codes packed keypoints carry, one per entry."""
    step, codes = CODE_BYTES, keypoints.codes
    return [codes[i : i + step] for i in range(0, len(codes) - step + 1, step)]


def hash_distances(query: list[bytes], candidates: list[list[bytes]]) -> list[float]:
    """Each candidate's copy distance to the query (closest code pair); as far as codes can be
    where either has none."""
    farthest = float(copy_signature.CODE_BITS)
    known = [n for n, c in enumerate(candidates) if c]
    out = [farthest] * len(candidates)
    if query and known:
        found = multi_hash.distance_matrix([query], [candidates[n] for n in known])[0]
        for n, d in zip(known, found.tolist(), strict=True):
            out[n] = float(d)
    return out


def verifier_for(
    specs: Mapping[str, FeatureSpec], indexes: Mapping[str, FeatureIndex]
) -> CopyVerifier | None:
    """The verifier of the indexes' keypoints feature, if one is configured."""
    verified = [name for name, spec in specs.items() if spec.metric is Metric.VERIFIED]
    if not verified:
        return None
    return CopyVerifier(indexes[verified[0]], indexes.get(COPY), CopyScorer.load())
