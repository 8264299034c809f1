"""Which candidate a query copies, and whether it is a copy at all: one score per candidate.

The score is a logistic model of what alignment found (index_store/alignment.py) and how near
the candidate's copy codes are (not of keypoint votes: their number depends on how many images
the vote index holds, so a scorer fitted at one size would misjudge another): the
highest-scored candidate is the answer, and a score of at least the threshold makes it a
copy. Weights and threshold are fitted on the tuning halves of bench/copy_set.py's sets by
`python -m bench.copy_verify --fit SEEDS` (threshold: the lowest with precision >= 0.995
there; `fitted_on` in copy_scorer.json says which) and shipped as copy_scorer.json; the
held-out halves are what BENCHMARKS.md reports. Candidates
aligned from their frames alone (alignment.framed) have weights of their own
(`--fit-framed`), and are never called copies.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from index_store.alignment import Aligned

WEIGHTS = Path(__file__).with_name("copy_scorer.json")
LIKELY = 0.5  # the distance at which a copy is as likely as not (the threshold is stricter)

# The numbers the model weighs, in order, each from what alignment found and the hash distance
# (scaled to about 0..1). Their names are the weights file's.
_NUMBERS: dict[str, Callable[[Aligned, float], float]] = {
    "bias": lambda a, hashed: 1.0,
    "log inliers": lambda a, hashed: float(np.log1p(a.inliers)),
    "cover": lambda a, hashed: a.cover,
    "whole": lambda a, hashed: a.whole,
    "block median": lambda a, hashed: a.block_median,
    "block upper": lambda a, hashed: a.block_upper,
    "spread / 50": lambda a, hashed: a.spread / 50,
    "hash distance / 100": lambda a, hashed: hashed / 100,
    "aligned": lambda a, hashed: float(a.aligned),
    "cover x block median": lambda a, hashed: a.cover * a.block_median,
    "cover x whole": lambda a, hashed: a.cover * a.whole,
    "difference / 50": lambda a, hashed: a.difference / 50,
    "detail": lambda a, hashed: a.detail,
    "detail x cover": lambda a, hashed: a.detail * a.cover,
    "content": lambda a, hashed: a.content,
    "agree": lambda a, hashed: a.agree,
    "content x block median": lambda a, hashed: a.content * a.block_median,
    "margin / 10, at most 0.3": lambda a, hashed: min(a.margin, 3.0) / 10,
}
EVIDENCE = tuple(_NUMBERS)
Floats = NDArray[np.float64]


def evidence(a: Aligned, hash_distance: float) -> Floats:
    """EVIDENCE for one (query, candidate) pair."""
    return np.array([number(a, hash_distance) for number in _NUMBERS.values()])


@dataclass(frozen=True)
class CopyScorer:
    """Weights for candidates aligned by keypoint pairs, and (optionally) their own for those
    aligned from frames alone (alignment.framed: no pair agreed). A frame alignment ranks its
    candidate by its own weights but never makes it a copy: it is the guess that correlated
    best, fitted on few rows; without its weights the candidate counts as not aligned."""

    weights: Floats  # one per EVIDENCE
    threshold: float  # a score at least this says "copy"
    fitted_on: str = ""  # what the weights were fitted on
    framed_weights: Floats | None = None  # one per EVIDENCE, for frame alignments
    framed_fitted_on: str = ""

    def __post_init__(self) -> None:
        for weights in (self.weights, self.framed_weights):
            if weights is not None and weights.shape != (len(EVIDENCE),):
                raise ValueError(f"{weights.shape[0]} weights for {len(EVIDENCE)} numbers")

    @property
    def max_distance(self) -> float:
        """The threshold as a distance: the largest `distance` a copy has."""
        return distance(self.threshold)

    def score(self, rows: Floats) -> Floats:
        """Scores of evidence rows (n, len(EVIDENCE)) of keypoint alignments."""
        out: Floats = rows @ self.weights
        return out

    def distance_of(self, aligned: Aligned, hash_distance: float) -> float:
        """A candidate's distance: 1 - the probability of a copy (a frame alignment's: no
        nearer than just past the threshold)."""
        if not aligned.framed:
            return distance(float(self.score(evidence(aligned, hash_distance)[None])[0]))
        if self.framed_weights is None:
            return self.distance_of(Aligned(0), hash_distance)
        found = distance(float(evidence(aligned, hash_distance) @ self.framed_weights))
        return max(found, float(np.nextafter(self.max_distance, 1.0)))

    def save(self, path: Path = WEIGHTS) -> None:
        document: dict[str, object] = {
            "evidence": list(EVIDENCE),
            "weights": [float(w) for w in self.weights],
            "threshold": self.threshold,
            "fitted_on": self.fitted_on,
        }
        if self.framed_weights is not None:
            document["framed_weights"] = [float(w) for w in self.framed_weights]
            document["framed_fitted_on"] = self.framed_fitted_on
        path.write_text(json.dumps(document, indent=2) + "\n")

    @classmethod
    def load(cls, path: Path = WEIGHTS) -> CopyScorer:
        document = json.loads(path.read_text())
        if tuple(document["evidence"]) != EVIDENCE:
            raise ValueError(f"{path} weighs {document['evidence']}, this build {list(EVIDENCE)}")
        weights = np.array(document["weights"], dtype=np.float64)
        framed = document.get("framed_weights")
        return cls(
            weights,
            float(document["threshold"]),
            str(document.get("fitted_on", "")),
            None if framed is None else np.array(framed, dtype=np.float64),
            str(document.get("framed_fitted_on", "")),
        )


def distance(score: float) -> float:
    """A score as the keypoints feature's distance: 1 - the model's probability of a copy
    (smaller is closer, as every feature's distances; 0..1)."""
    return float(1 - 1 / (1 + np.exp(-score)))
