"""The extractor contract: what a feature is, so that adding one is a small, local change.

A feature has a name (its topic and index), a version (model, weights, preprocessing: it
names the index, so two versions never mix), the kind of vector it makes and how those are
compared, and functions that describe a batch of decoded images, a query image (possibly as
several vectors, e.g. a hash and its mirror) and, for joint image-text models, a text.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from PIL import Image

from index_store.metric import Metric
from schemas.features import VectorKind


@dataclass(frozen=True)
class FeatureSpec:
    name: str
    version: str
    vector_kind: VectorKind
    dim: int
    metric: Metric
    describe_batch: Callable[[Sequence[Image.Image]], list[bytes]]
    describe_query: Callable[[Image.Image], list[bytes]] | None = None
    describe_text: Callable[[str], bytes] | None = None
    codes_per_item: int = 1  # BITS features: several codes per image, matched by the closest

    @property
    def vector_bytes(self) -> int:
        return (self.dim + 7) // 8 if self.vector_kind is VectorKind.BITS else self.dim * 4

    @property
    def index_name(self) -> str:
        return self.version

    def query_vectors(self, image: Image.Image) -> list[bytes]:
        if self.describe_query is not None:
            return self.describe_query(image)
        return self.describe_batch([image])
