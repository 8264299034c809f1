"""Which features this build knows, by name."""

from __future__ import annotations

from consumers.features import phash
from consumers.features.contract import FeatureSpec, Metric
from schemas.features import VectorKind

PHASH = FeatureSpec(
    name=phash.NAME,
    version=phash.VERSION,
    vector_kind=VectorKind.BITS,
    dim=phash.BITS,
    metric=Metric.HAMMING,
    describe_batch=lambda images: [phash.phash(img) for img in images],
)

FEATURES: dict[str, FeatureSpec] = {PHASH.name: PHASH}


def feature(name: str) -> FeatureSpec:
    try:
        return FEATURES[name]
    except KeyError:
        raise KeyError(f"unknown feature {name!r}; known: {sorted(FEATURES)}") from None
