"""Which indexed images share keypoints with a query: the candidates copy verification aligns.

Every indexed image's ORB descriptors go into one faiss binary IVF index (descriptors grouped
by their nearest centroid; a search compares each query descriptor with every centroid, then
scans the PROBES nearest groups). With sqrt(PROBES x descriptors) groups both parts cost the
same, and a search grows with the square root of the gallery instead of with the gallery.
Each of the query's descriptors looks up its NEIGHBOURS nearest; every one within MAX_DISTANCE
bits is a vote for the image it belongs to (weighted: nearer counts more) and a keypoint pair
that alignment can start from, so the candidates need no descriptor matching of their own.

Built once over a gallery (images numbered by their place in it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import faiss
import numpy as np
from numpy.typing import NDArray

from index_store.alignment import Pairs
from index_store.keypoints import DESCRIPTOR_BYTES, Keypoints

PROBES = 16
TRAINING_PER_LIST = 64  # descriptors per centroid the k-means sees (faiss's default: 256)
NEIGHBOURS = 16
MAX_DISTANCE = 64  # bits of 256


@dataclass(frozen=True)
class Votes:
    """A query's votes: their weight per image, and the keypoint pairs that cast them (kept
    sorted by image, so one image's pairs are one slice)."""

    weights: NDArray[np.float64]  # by image number
    images: NDArray[np.int64]  # the image of each pair, ascending
    query_keypoints: NDArray[np.int64]
    image_keypoints: NDArray[np.int64]

    @classmethod
    def none(cls) -> Votes:
        empty = np.zeros(0, np.int64)
        return cls(np.zeros(0), empty, empty, empty)

    def most(self, n: int) -> list[int]:
        """The `n` images with the most votes, most first."""
        voted = np.flatnonzero(self.weights > 0)
        if len(voted) > n:
            voted = voted[np.argpartition(-self.weights[voted], n - 1)[:n]]
        return [int(i) for i in voted[np.argsort(-self.weights[voted], kind="stable")]]

    def weight(self, image: int) -> float:
        return float(self.weights[image]) if image < len(self.weights) else 0.0

    def pairs(self, image: int) -> Pairs:
        lo, hi = np.searchsorted(self.images, [image, image + 1])
        return list(
            zip(
                self.query_keypoints[lo:hi].tolist(),
                self.image_keypoints[lo:hi].tolist(),
                strict=True,
            )
        )


class KeypointVotes:
    def __init__(self, gallery: Sequence[Keypoints], lists: int | None = None) -> None:
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
        if lists is None:
            lists = round(np.sqrt(PROBES * len(descriptors)))
        lists = max(1, min(lists, len(descriptors) // 39))  # faiss wants ~39 per centroid
        self.index = faiss.IndexBinaryIVF(faiss.IndexBinaryFlat(bits), bits, lists)
        self.index.cp.max_points_per_centroid = TRAINING_PER_LIST
        if len(descriptors):
            self.index.train(descriptors)
            self.index.add(descriptors)
        self.index.nprobe = min(PROBES, lists)

    def vote(self, query: Keypoints, neighbours: int = NEIGHBOURS) -> Votes:
        if not len(query) or not self.index.ntotal:
            return Votes.none()
        distances, ids = self.index.search(query.descriptors, neighbours)
        near = (ids >= 0) & (distances <= MAX_DISTANCE)
        query_keypoints = np.nonzero(near)[0]
        found = ids[near]
        images = self.owner[found]
        weights = np.bincount(images, weights=1 / (1 + distances[near] / 16)).astype(np.float64)
        order = np.argsort(images, kind="stable")
        return Votes(weights, images[order], query_keypoints[order], self.keypoint[found][order])
