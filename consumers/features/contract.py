"""The extractor contract: what a feature is, so that adding one is a small, local change.

A feature has a name (its topic and index), a version (model, weights, preprocessing: it
names the index, so two versions never mix), the kind of vector it makes and how those are
compared, and one function that describes a batch of decoded images.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum

from PIL import Image

from schemas.features import VectorKind


class Metric(StrEnum):
    HAMMING = "hamming"
    L1 = "l1"
    COSINE = "cosine"


@dataclass(frozen=True)
class FeatureSpec:
    name: str
    version: str
    vector_kind: VectorKind
    dim: int
    metric: Metric
    describe_batch: Callable[[Sequence[Image.Image]], list[bytes]]

    @property
    def vector_bytes(self) -> int:
        return (self.dim + 7) // 8 if self.vector_kind is VectorKind.BITS else self.dim * 4

    @property
    def index_name(self) -> str:
        return self.version
