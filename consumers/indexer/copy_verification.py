"""Copy search with verification: which indexed image a query copies, and whether it is a copy.

The `keypoints` feature's search. For a query's packed keypoints (which carry its copy codes):
1. candidates: the VOTED images with the most keypoint votes (index_store/keypoint_votes.py)
   and the copy feature's HASHED nearest (when this indexer has the copy feature);
2. each aligned (index_store/alignment.py: a similarity transform from the keypoint pairs that
   voted, its inliers, then the candidate's grey copy warped into the query's frame and
   compared; pixels for the COMPARED with most inliers among those whose aligned frame covers
   the query about as far as the best-covering one), its packed keypoints read from the store
   of record;
   When none is surely a copy, the FRAMED nearest by copy codes that keypoints could not align
   (too few on either side: a flat picture, a logo's keypoints over one) are aligned from
   their frames (alignment.framed);
3. each scored (index_store/copy_scorer.py: alignment, and the distance of the copy codes both
   carry), and its distance is 1 - the scorer's probability of a copy: at most the scorer's
   threshold's distance (the feature's alert threshold) says "copy" (never for a frame
   alignment: it ranks its candidate only).
A mirrored copy has other keypoints: when the query comes with its mirror's and nothing
verified as a copy, the mirror's votes are asked (a few of its descriptors' first, all of them
only when those few are strong); when they are much stronger per descriptor, the mirror is
verified too (nearest of both kept).

Blocking (alignment is CPU work): callers run it in a worker thread.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial

import cv2
import numpy as np
import structlog
from numpy.typing import NDArray

from consumers.features import copy_signature, multi_hash
from consumers.features.contract import FeatureSpec
from index_store import alignment, copy_scorer
from index_store.copy_scorer import CopyScorer
from index_store.engines.engine import Engine, Hit, ranked
from index_store.engines.keypoint_engine import KeypointEngine
from index_store.feature_index import FeatureIndex, Neighbour
from index_store.keypoint_votes import Descriptors
from index_store.keypoints import BadKeypoints, Keypoints, unpack
from index_store.metric import Metric
from index_store.search_threads import in_order

log = structlog.get_logger(__name__)

VOTED = 40  # candidates by keypoint votes
HASHED = 10  # candidates by the copy feature's codes
COMPARED = 50  # candidates (most inliers) whose pixels are compared
FRAMED = 3  # candidates keypoints could not align, nearest by copy codes, aligned from frames
# A mirrored query is verified only when nothing was and its best candidate has this many times
# the votes (per descriptor) of the unmirrored query's best (a mirrored copy's mirror votes like
# a copy; any other picture's mirror votes as little as the picture).
MIRROR_VOTES = 1.5
# The mirror is asked first with every PROBE_STEP-th of its descriptors (a vote costs what its
# descriptors do), and with all of them only when those few, counted per descriptor, come
# within PROBE_SLACK of what MIRROR_VOTES asks: most mirrors vote as little as any stranger.
PROBE_STEP = 3
PROBE_SLACK = 0.5
COPY = "copy"
CODE_BYTES = copy_signature.CODE_BITS // 8


@dataclass(frozen=True)
class Voted:
    """What the vote index said of one candidate."""

    weight: float
    pairs: alignment.Pairs


@dataclass(frozen=True)
class Examined:
    """What verification found of one candidate: its alignment, and its copy codes' distance
    to the query's."""

    image_id: str
    aligned: alignment.Aligned
    hash_distance: float

    @property
    def evidence(self) -> NDArray[np.float64]:
        return copy_scorer.evidence(self.aligned, self.hash_distance)


class CopyVerifier:
    def __init__(
        self,
        keypoints: FeatureIndex,
        copy: FeatureIndex | None,
        scorer: CopyScorer,
        max_distance: float | None = None,
    ) -> None:
        """`copy`: the copy feature's index, when this indexer has it (its nearest are
        candidates too); `max_distance`: a copy's (the feature's alert threshold, when
        configured; else the scorer's)."""
        self._keypoints = keypoints
        self._copy = copy
        self._scorer = scorer
        self.max_distance = scorer.max_distance if max_distance is None else max_distance
        # Alignment runs in worker threads beside searches and ingest: OpenCV's own thread
        # pool only contends with them (this is process-wide; nothing else here uses OpenCV).
        cv2.setNumThreads(1)

    def search(
        self,
        queries: Sequence[bytes],
        k: int,
        max_distance: float | None = None,
        exclude: Iterable[str] = (),
    ) -> list[Hit]:
        """The `k` nearest by verified distance. `queries`: packed keypoints (with the query's
        copy codes), the query's then (optionally) its mirror's, each read only when needed
        (consumers/features/contract.OnDemand: the mirror's may be described then)."""
        excluded = set(exclude)
        best: dict[str, float] = {}
        most_votes = 0.0
        for n in range(len(queries)):
            if n and any(d <= self.max_distance for d in best.values()):
                break  # verified already: the mirror is not tried (nor described: OnDemand)
            try:
                query = unpack(queries[n])
            except BadKeypoints as exc:
                raise ValueError(f"query keypoints: {exc}") from exc
            if n and not self._worth_voting(query, excluded, most_votes):
                break  # the mirror is no likelier: it is not tried
            voted = self._votes(query.descriptors, excluded)
            top = max((v.weight for v in voted.values()), default=0.0) / max(len(query), 1)
            if n and top < MIRROR_VOTES * most_votes:
                break  # the mirror is no likelier: it is not tried
            most_votes = max(most_votes, top)
            for e in self.examine(query, voted, excluded, sure_of=k):
                best[e.image_id] = min(self.distance(e), best.get(e.image_id, 1.0))
        return ranked(best.items(), k, max_distance)

    def _worth_voting(self, mirror: Keypoints, excluded: set[str], most_votes: float) -> bool:
        """Whether a few of the mirror's descriptors vote (per descriptor) about as strongly as
        MIRROR_VOTES asks of all of them (`most_votes`: the query's best, per descriptor)."""
        few = mirror.descriptors[::PROBE_STEP]
        if not len(few):
            return False
        voted = self._votes(few, excluded)
        top = max((v.weight for v in voted.values()), default=0.0) / len(few)
        return top >= PROBE_SLACK * MIRROR_VOTES * most_votes

    def neighbours(
        self, queries: Sequence[bytes], k: int, max_distance: float | None, exclude: Iterable[str]
    ) -> list[Neighbour]:
        """`search`, each hit with its record."""
        found = self.search(queries, k, max_distance, exclude)
        records = self._keypoints.records_of([image_id for image_id, _ in found])
        return [Neighbour(i, d, r) for (i, d), r in zip(found, records, strict=True)]

    def examine(
        self,
        query: Keypoints,
        voted: dict[str, Voted] | None = None,
        excluded: Iterable[str] = (),
        sure_of: int | None = 1,
    ) -> list[Examined]:
        """What verification found of each candidate (`voted`: the query's votes, asked here
        if not given). Pixels are compared, most inliers first, until `sure_of` candidates are
        copies beyond doubt (within the scorer's own threshold; None: all are compared, as
        fitting a scorer needs); the rest keep their inliers only, and rank after those."""
        excluded = set(excluded)
        if voted is None:
            voted = self._votes(query.descriptors, excluded)
        codes = codes_of(query)
        hashed = self._hashed(codes, excluded)
        candidates = [i for i in dict.fromkeys([*voted, *hashed]) if i not in excluded]
        stored = self._stored(candidates)
        candidates = [i for i in candidates if i in stored]
        distances = hash_distances(codes, [codes_of(stored[i]) for i in candidates])
        no_votes = Voted(0.0, [])

        sure = 0  # candidates compared so far that are copies beyond doubt
        beyond_doubt = self._scorer.max_distance

        def enough(n: int, found: alignment.Aligned) -> bool:
            nonlocal sure
            sure += self.distance(Examined(candidates[n], found, distances[n])) <= beyond_doubt
            return sure_of is not None and sure >= sure_of

        prepared = alignment.prepare(query)
        aligned = alignment.align_all(
            prepared,
            [(stored[i], voted.get(i, no_votes).pairs or None) for i in candidates],
            COMPARED,
            enough=enough,
        )
        if not sure:  # nothing surely a copy: align the nearest that keypoints could not
            poor = [
                n
                for n, i in enumerate(candidates)
                if not aligned[n].cover and min(len(query), len(stored[i])) < alignment.POOR
            ]
            nearest = sorted(poor, key=lambda n: (distances[n], n))[:FRAMED]
            framed = in_order(lambda n: alignment.framed(prepared, stored[candidates[n]]), nearest)
            for n, found in zip(nearest, framed, strict=True):
                aligned[n] = found
        return [Examined(i, a, d) for i, a, d in zip(candidates, aligned, distances, strict=True)]

    def distance(self, examined: Examined) -> float:
        """The candidate's verified distance: 1 - the scorer's probability of a copy."""
        return self._scorer.distance_of(examined.aligned, examined.hash_distance)

    def _votes(self, descriptors: Descriptors, excluded: set[str]) -> dict[str, Voted]:
        return self._keypoints.consult(
            partial(votes_of, descriptors=descriptors, excluded=excluded)
        )

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


def votes_of(engine: Engine, descriptors: Descriptors, excluded: set[str]) -> dict[str, Voted]:
    """The VOTED images (not `excluded`) with most votes for a query's `descriptors`, and the
    pairs that voted."""
    if not isinstance(engine, KeypointEngine):
        raise TypeError(f"the keypoints index is served by {type(engine).__name__}")
    votes = engine.votes(descriptors)
    out: dict[str, Voted] = {}
    for image_id, weight in engine.voted(votes, VOTED + len(excluded)):
        slot = engine.slot_of(image_id)
        if slot is not None and image_id not in excluded and len(out) < VOTED:
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
    spec = specs[verified[0]]
    return CopyVerifier(
        indexes[verified[0]], indexes.get(COPY), CopyScorer.load(), spec.alert_max_distance
    )
