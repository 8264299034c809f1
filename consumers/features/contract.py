"""The extractor contract: what a feature is, so that adding one is a small, local change.

A feature has a name (its topic and index), a version (model, weights, preprocessing: it
names the index, so two versions never mix), the kind of vector it makes and how those are
compared, how close another image must be to count as a near duplicate of a new one (the
alert threshold, in the feature's own metric), and functions that describe a batch of decoded
images, a query image (possibly as several vectors, e.g. a hash and its mirror) and, for joint
image-text models, a text.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import overload

from PIL import Image

from index_store.metric import Metric
from schemas.features import VectorKind, vector_bytes


@dataclass(frozen=True)
class FeatureSpec:
    name: str
    version: str
    vector_kind: VectorKind
    dim: int
    metric: Metric
    # Near-duplicate alerts list the other images at most this far from a new one, in this
    # feature's metric (Hamming bits of one code, or of the closest code pair; L1; cosine
    # distance). Defaults are measured by bench/alert_thresholds.py; LOOKALIKE_ALERT_MAX_DISTANCE
    # overrides them per feature (catalog.build_features).
    alert_max_distance: float
    describe_batch: Callable[[Sequence[Image.Image]], list[bytes]]
    # A query's vectors (e.g. the image's and its mirror's), first the image's own; may be
    # OnDemand, each described when first read.
    describe_query: Callable[[Image.Image], Sequence[bytes]] | None = None
    describe_text: Callable[[str], bytes] | None = None
    codes_per_item: int = 1  # BITS features: several codes per image, matched by the closest
    # Encoded images (as fetched) -> per image its vector or why it has none. Set where the
    # feature decodes better itself (CLIP on a GPU: nvJPEG); an extractor whose features all
    # have it skips its own CPU decode.
    describe_encoded: Callable[[Sequence[bytes]], list[bytes | str]] | None = None
    # PACKED features: why a vector is not one of this feature's layout (None: it is), so an
    # indexer dead-letters it instead of failing on it.
    check_packed: Callable[[bytes], str | None] | None = None

    def __post_init__(self) -> None:
        low, high = self.distance_range
        if not low <= self.alert_max_distance <= high:
            raise ValueError(
                f"alert_max_distance {self.alert_max_distance:g} of feature {self.name!r} is "
                f"outside the range of its {self.metric.value} distances [{low:g}, {high:g}]"
            )

    @property
    def distance_range(self) -> tuple[float, float]:
        """The smallest and largest distance two of this feature's images can have."""
        if self.metric is Metric.HAMMING:
            return 0.0, float(self.dim // self.codes_per_item)  # bits of one code
        if self.metric is Metric.VERIFIED:
            return 0.0, 1.0  # 1 - a probability
        # Cosine distance of unit vectors; L1 of distributions (histograms that sum to 1).
        return 0.0, 2.0

    @property
    def vector_bytes(self) -> int:
        """Bytes of each vector (PACKED: the most a vector may have)."""
        return vector_bytes(self.vector_kind, self.dim)

    def unusable(self, vector: bytes) -> str | None:
        """Why `vector` is not one of this feature's (its size or layout), or None."""
        size = len(vector)
        if self.vector_kind is VectorKind.PACKED:
            if size > self.vector_bytes:
                return f"vector has {size} bytes, {self.name} takes at most {self.vector_bytes}"
            return self.check_packed(vector) if self.check_packed is not None else None
        if size != self.vector_bytes:
            return f"vector has {size} bytes, {self.name} holds {self.vector_bytes}"
        return None

    def dim_of(self, vector: bytes) -> int:
        """The `dim` an event carrying `vector` says (PACKED: its bytes)."""
        return len(vector) if self.vector_kind is VectorKind.PACKED else self.dim

    @property
    def index_name(self) -> str:
        return self.version

    def query_vectors(self, image: Image.Image) -> Sequence[bytes]:
        if self.describe_query is not None:
            return self.describe_query(image)
        return self.describe_batch([image])


class OnDemand(Sequence[bytes]):
    """Vectors each described when first read (then kept): a search that stops before the
    last (the keypoints search, once the query itself is verified, never asks for its mirror's)
    never pays for it. A slice is on demand too, and shares what was described."""

    def __init__(self, describers: Sequence[Callable[[], bytes]]) -> None:
        self._describers = [d if isinstance(d, _Once) else _Once(d) for d in describers]

    def __len__(self) -> int:
        return len(self._describers)

    @overload
    def __getitem__(self, at: int) -> bytes: ...

    @overload
    def __getitem__(self, at: slice) -> OnDemand: ...

    def __getitem__(self, at: int | slice) -> bytes | OnDemand:
        if isinstance(at, slice):
            return OnDemand(self._describers[at])
        return self._describers[at]()


class _Once:
    """A describer called at most once."""

    def __init__(self, describe: Callable[[], bytes]) -> None:
        self._describe: Callable[[], bytes] | None = describe
        self._vector = b""

    def __call__(self) -> bytes:
        if self._describe is not None:
            self._vector, self._describe = self._describe(), None
        return self._vector
