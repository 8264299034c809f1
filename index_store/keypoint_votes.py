"""Which indexed images share keypoints with a query: the candidates copy verification aligns.

Every indexed image's ORB descriptors go into one faiss binary IVF index (descriptors grouped
by their nearest of LISTS centroids; a search scans the PROBES nearest groups). Each of the
query's descriptors looks up its NEIGHBOURS nearest; every one within MAX_DISTANCE bits is a
vote for the image it belongs to (weighted: nearer counts more) and a keypoint pair that
alignment can start from, so the candidates need no descriptor matching of their own.

Built once over a gallery (images numbered by their place in it).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import faiss
import numpy as np

from index_store.alignment import Pairs
from index_store.keypoints import DESCRIPTOR_BYTES, Keypoints

LISTS = 1024
PROBES = 16
NEIGHBOURS = 32
MAX_DISTANCE = 64  # bits of 256


@dataclass
class Votes:
    weight: Counter[int] = field(default_factory=Counter)  # by image number
    pairs: dict[int, Pairs] = field(default_factory=dict)  # the keypoint pairs that voted

    def most(self, n: int) -> list[int]:
        """The `n` images with the most votes, most first."""
        return [image for image, _ in self.weight.most_common(n)]


class KeypointVotes:
    def __init__(self, gallery: Sequence[Keypoints], lists: int = LISTS) -> None:
        self.owner = np.concatenate(
            [np.full(len(k), i, np.int64) for i, k in enumerate(gallery)] or [np.zeros(0, np.int64)]
        )
        self.keypoint = np.concatenate(
            [np.arange(len(k)) for k in gallery] or [np.zeros(0, np.int64)]
        )
        descriptors = np.concatenate(
            [k.descriptors for k in gallery] or [np.zeros((0, DESCRIPTOR_BYTES), np.uint8)]
        )
        bits = DESCRIPTOR_BYTES * 8
        lists = max(1, min(lists, len(descriptors) // 39))  # faiss wants ~39 per centroid
        self.index = faiss.IndexBinaryIVF(faiss.IndexBinaryFlat(bits), bits, lists)
        if len(descriptors):
            self.index.train(descriptors)
            self.index.add(descriptors)
        self.index.nprobe = min(PROBES, lists)

    def vote(self, query: Keypoints, neighbours: int = NEIGHBOURS) -> Votes:
        votes = Votes()
        if not len(query) or not self.index.ntotal:
            return votes
        distances, ids = self.index.search(query.descriptors, neighbours)
        rows, cols = np.nonzero((ids >= 0) & (distances <= MAX_DISTANCE))
        found = ids[rows, cols]
        for q, i, d in zip(rows, found, distances[rows, cols], strict=True):
            image = int(self.owner[i])
            votes.weight[image] += 1 / (1 + d / 16)
            votes.pairs.setdefault(image, []).append((int(q), int(self.keypoint[i])))
        return votes
