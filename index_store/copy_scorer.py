"""Which candidate a query copies, and whether it is a copy at all: one score per candidate.

The score is a logistic model of what alignment found (index_store/alignment.py), how near the
candidate's copy codes are, and how many keypoint votes it got: the highest-scored candidate
is the answer, and a score of at least the threshold makes it a copy. Weights and threshold
are fitted on the tuning half of bench/copy_set.py's set by `python -m bench.copy_verify
--fit` (threshold: the lowest with precision >= 0.99 there) and shipped as copy_scorer.json;
the held-out half is what BENCHMARKS.md reports.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from index_store.alignment import Aligned

WEIGHTS = Path(__file__).with_name("copy_scorer.json")

# The numbers the model weighs, in order (scaled to about 0..1).
EVIDENCE = (
    "bias",
    "log inliers",
    "cover",
    "whole",
    "block median",
    "block upper",
    "spread / 50",
    "hash distance / 100",
    "log votes",
    "aligned",
    "cover x block median",
    "cover x whole",
    "difference / 50",
    "detail",
    "detail x cover",
    "content",
    "agree",
    "content x block median",
)
Floats = NDArray[np.float64]


def evidence(a: Aligned, hash_distance: float, votes: float) -> Floats:
    """EVIDENCE for one (query, candidate) pair."""
    return np.array(
        [1.0, np.log1p(a.inliers), a.cover, a.whole, a.block_median, a.block_upper,
         a.spread / 50, hash_distance / 100, np.log1p(votes), float(a.aligned),
         a.cover * a.block_median, a.cover * a.whole, a.difference / 50, a.detail,
         a.detail * a.cover, a.content, a.agree, a.content * a.block_median]
    )  # fmt: skip


@dataclass(frozen=True)
class CopyScorer:
    weights: Floats  # one per EVIDENCE
    threshold: float  # a score at least this says "copy"
    fitted_on: str = ""  # what the weights were fitted on

    def __post_init__(self) -> None:
        if self.weights.shape != (len(EVIDENCE),):
            raise ValueError(f"{self.weights.shape[0]} weights for {len(EVIDENCE)} numbers")

    def score(self, rows: Floats) -> Floats:
        """Scores of evidence rows (n, len(EVIDENCE))."""
        out: Floats = rows @ self.weights
        return out

    def save(self, path: Path = WEIGHTS) -> None:
        document = {
            "evidence": list(EVIDENCE),
            "weights": [float(w) for w in self.weights],
            "threshold": self.threshold,
            "fitted_on": self.fitted_on,
        }
        path.write_text(json.dumps(document, indent=2) + "\n")

    @classmethod
    def load(cls, path: Path = WEIGHTS) -> CopyScorer:
        document = json.loads(path.read_text())
        if tuple(document["evidence"]) != EVIDENCE:
            raise ValueError(f"{path} weighs {document['evidence']}, this build {list(EVIDENCE)}")
        weights = np.array(document["weights"], dtype=np.float64)
        return cls(weights, float(document["threshold"]), str(document.get("fitted_on", "")))
