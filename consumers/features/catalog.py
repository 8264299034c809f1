"""Which features this build knows, and how to build each from Settings."""

from __future__ import annotations

from collections.abc import Sequence

from consumers.features import colour_histogram, copy_signature, phash
from consumers.features.contract import FeatureSpec
from index_store.metric import Metric
from schemas.features import VectorKind
from schemas.settings import Settings

PHASH = FeatureSpec(
    name=phash.NAME,
    version=phash.VERSION,
    vector_kind=VectorKind.BITS,
    dim=phash.BITS,
    metric=Metric.HAMMING,
    describe_batch=lambda images: [phash.phash(img) for img in images],
    # Query with the image and its mirror: mirrored copies are found too.
    describe_query=lambda img: list(phash.phash_with_mirror(img)),
)

COLOUR = FeatureSpec(
    name=colour_histogram.NAME,
    version=colour_histogram.VERSION,
    vector_kind=VectorKind.FLOAT32,
    dim=colour_histogram.DIM,
    metric=Metric.L1,
    describe_batch=lambda images: [colour_histogram.describe(img) for img in images],
)

COPY = FeatureSpec(
    name=copy_signature.NAME,
    version=copy_signature.VERSION,
    vector_kind=VectorKind.BITS,
    dim=copy_signature.CODES * copy_signature.CODE_BITS,
    metric=Metric.HAMMING,
    describe_batch=lambda images: [copy_signature.describe(img) for img in images],
    describe_query=copy_signature.query_codes,
    codes_per_item=copy_signature.CODES,
)

KNOWN = ("phash", "colour", "copy", "clip")


def clip_feature(settings: Settings) -> FeatureSpec:
    from consumers.features.clip_embed import NAME, ClipEmbedder

    embedder = ClipEmbedder(settings.clip_model, settings.clip_pretrained, settings.device)
    return FeatureSpec(
        name=NAME,
        version=embedder.version,
        vector_kind=VectorKind.FLOAT32,
        dim=embedder.dim,
        metric=Metric.COSINE,
        describe_batch=lambda images: [row.tobytes() for row in embedder.embed_images(images)],
        describe_text=lambda text: embedder.embed_text([text])[0].tobytes(),
    )


def build_features(settings: Settings, names: Sequence[str] | None = None) -> list[FeatureSpec]:
    """The configured features (CLIP loads its model here: do it once per process)."""
    wanted = list(names) if names is not None else settings.feature_names
    unknown = sorted(set(wanted) - set(KNOWN))
    if unknown:
        raise ValueError(f"unknown features {unknown}; known: {list(KNOWN)}")
    specs: list[FeatureSpec] = []
    for name in wanted:
        if name == "phash":
            specs.append(PHASH)
        elif name == "colour":
            specs.append(COLOUR)
        elif name == "copy":
            specs.append(COPY)
        else:
            specs.append(clip_feature(settings))
    return specs
