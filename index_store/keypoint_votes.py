"""Which indexed images share keypoints with a query: the candidates copy verification aligns.

Every indexed image's ORB descriptors go into one faiss binary IVF index (descriptors grouped
by their nearest centroid; a search compares each query descriptor with every centroid, then
scans the PROBES nearest groups). With sqrt(PROBES x descriptors) groups both parts cost the
same, and a search grows with the square root of the gallery instead of with the gallery.
Each of the query's descriptors looks up its NEIGHBOURS nearest; every one within MAX_DISTANCE
bits is a vote for the image it belongs to (weighted: nearer counts more) and a keypoint pair
that alignment can start from, so the candidates need no descriptor matching of their own.

Built over a gallery, or kept up to date image by image (KeypointVotes).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import faiss
import numpy as np
from numpy.typing import NDArray

from index_store.alignment import Pairs
from index_store.keypoints import DESCRIPTOR_BYTES, MAX_KEYPOINTS

Descriptors = NDArray[np.uint8]  # (n, DESCRIPTOR_BYTES): one image's ORB descriptors

PROBES = 16
TRAINING_PER_LIST = 64  # descriptors per centroid the k-means sees (faiss's default: 256)
NEIGHBOURS = 16
MAX_DISTANCE = 64  # bits of 256
STRIDE = MAX_KEYPOINTS  # a descriptor's id: its image's number x STRIDE + its keypoint's


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
    """The vote index. Built over a gallery (images numbered by their place in it), or grown
    and shrunk image by image (`add`, `remove`, by image number: the caller's slots). Until
    there are enough descriptors for groups of ~39 (faiss's minimum per centroid) it is exact
    (every descriptor compared); a trained index is trained for the descriptors it was built
    with, and says when it has grown enough to be rebuilt (`needs_training`)."""

    def __init__(self, gallery: Sequence[Descriptors] = (), lists: int | None = None) -> None:
        descriptors, ids = rows_of(list(enumerate(gallery)))
        lists = lists_for(len(descriptors)) if lists is None else lists
        lists = min(lists, len(descriptors) // 39)
        bits = DESCRIPTOR_BYTES * 8
        self.trained_for = 0  # descriptors the groups were made for (0: exact, no groups)
        if lists < 2:
            self.index: faiss.IndexBinary = faiss.IndexBinaryIDMap(faiss.IndexBinaryFlat(bits))
        else:
            ivf = faiss.IndexBinaryIVF(faiss.IndexBinaryFlat(bits), bits, lists)
            ivf.cp.max_points_per_centroid = TRAINING_PER_LIST
            ivf.train(descriptors)
            ivf.nprobe = min(PROBES, lists)
            self.index, self.trained_for = ivf, len(descriptors)
        if len(descriptors):
            self.index.add_with_ids(descriptors, ids)

    @classmethod
    def of(cls, index: faiss.IndexBinary, trained_for: int) -> KeypointVotes:
        """The vote index over a faiss index as saved (trained for `trained_for` descriptors,
        0 when exact)."""
        votes = cls()
        votes.index, votes.trained_for = index, trained_for  # nprobe is saved with it
        return votes

    def __len__(self) -> int:
        """Descriptors held."""
        return int(self.index.ntotal)

    @property
    def needs_training(self) -> bool:
        """Whether a rebuild would search much better: exact past the size groups pay at, or
        trained for a quarter of what it holds now."""
        if not self.trained_for:
            return lists_for(len(self)) <= len(self) // 39
        return len(self) >= 4 * self.trained_for

    def add(self, image: int, descriptors: Descriptors, replacing: bool = True) -> None:
        """Index `image`'s descriptors, replacing any it had (`replacing=False`: it has none,
        which saves a pass over every descriptor held)."""
        if replacing:
            self.remove(image)
        rows, ids = rows_of([(image, descriptors)])
        if len(rows):
            self.index.add_with_ids(rows, ids)

    def remove(self, image: int) -> None:
        self.index.remove_ids(faiss.IDSelectorRange(image * STRIDE, (image + 1) * STRIDE))

    def vote(self, query: Descriptors, neighbours: int = NEIGHBOURS) -> Votes:
        """The votes of a query's descriptors."""
        if not len(query) or not self.index.ntotal:
            return Votes.none()
        distances, ids = self.index.search(query, neighbours)
        near = (ids >= 0) & (distances <= MAX_DISTANCE)
        query_keypoints = np.nonzero(near)[0]
        found = ids[near]
        images, image_keypoints = found // STRIDE, found % STRIDE
        weights = np.bincount(images, weights=1 / (1 + distances[near] / 16)).astype(np.float64)
        order = np.argsort(images, kind="stable")
        return Votes(weights, images[order], query_keypoints[order], image_keypoints[order])


def lists_for(descriptors: int) -> int:
    """Groups for which comparing with every centroid costs what scanning PROBES groups does."""
    return round(float(np.sqrt(PROBES * descriptors)))


def rows_of(images: Sequence[tuple[int, Descriptors]]) -> tuple[Descriptors, NDArray[np.int64]]:
    """The images' descriptors, one per row, and their ids (image x STRIDE + keypoint)."""
    if any(len(k) > STRIDE for _, k in images):
        raise ValueError(f"an image has more than {STRIDE} keypoints")
    descriptors = [k for _, k in images]
    ids = [image * STRIDE + np.arange(len(k), dtype=np.int64) for image, k in images]
    if not descriptors:
        return np.zeros((0, DESCRIPTOR_BYTES), np.uint8), np.zeros(0, np.int64)
    return np.concatenate(descriptors), np.concatenate(ids)
