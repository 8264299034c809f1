"""How two vectors of one index are compared. Smaller distance = more alike, for every metric."""

from __future__ import annotations

from enum import StrEnum


class Metric(StrEnum):
    HAMMING = "hamming"  # packed bits: number of differing bits
    L1 = "l1"  # float vectors: sum of absolute differences (histograms)
    COSINE = "cosine"  # L2-normalised float vectors: 1 - dot product
    # keypoints: 1 - the copy scorer's probability that the image is the query's original
    # (index_store/copy_scorer.py), after alignment
    VERIFIED = "verified"
