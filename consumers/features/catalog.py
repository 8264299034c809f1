"""Which features this build knows, and how to build each from Settings.

Each feature's near-duplicate alert threshold (`alert_max_distance`) is part of its definition.
Two rules measure it, and the default is the stricter: `python -m bench.alert_thresholds` (at
most 1 in 100,000 unrelated pairs within it; BENCHMARKS.md, "Near-duplicate alert thresholds")
and, for the hash features, `python -m bench.copy_scale` (verdicts "copy of the nearest
original" of precision >= 0.99 on its tuning half; BENCHMARKS.md, "Copy detection at scale").
LOOKALIKE_ALERT_MAX_DISTANCE overrides them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import structlog

from consumers.features import colour_histogram, copy_keypoints, copy_signature, phash
from consumers.features.contract import FeatureSpec
from index_store import keypoints
from index_store.copy_scorer import CopyScorer
from index_store.metric import Metric
from schemas.features import VectorKind
from schemas.settings import Settings

log = structlog.get_logger(__name__)

PHASH = FeatureSpec(
    name=phash.NAME,
    version=phash.VERSION,
    vector_kind=VectorKind.BITS,
    dim=phash.BITS,
    metric=Metric.HAMMING,
    alert_max_distance=194,  # bench.copy_scale's (bench.alert_thresholds: 233)
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
    alert_max_distance=0.138,
    describe_batch=lambda images: [colour_histogram.describe(img) for img in images],
)

COPY = FeatureSpec(
    name=copy_signature.NAME,
    version=copy_signature.VERSION,
    vector_kind=VectorKind.BITS,
    dim=copy_signature.CODES * copy_signature.CODE_BITS,
    metric=Metric.HAMMING,
    # Hamming bits of the closest of the 18 x 18 code pairs: bench.copy_scale's
    # (bench.alert_thresholds: 157)
    alert_max_distance=138,
    describe_batch=lambda images: [copy_signature.describe(img) for img in images],
    describe_query=copy_signature.query_codes,
    codes_per_item=copy_signature.CODES,
)

# The copy feature's second stage: keypoints that verify its candidates (and find crops its
# codes miss) by alignment (consumers/indexer/copy_verification.py). Its distance is 1 - the
# copy scorer's probability; the alert threshold is the scorer's (chosen for precision >= 0.99
# by `python -m bench.copy_verify --fit`; BENCHMARKS.md, "Copy detection at scale").
KEYPOINTS = FeatureSpec(
    name=copy_keypoints.NAME,
    version=copy_keypoints.VERSION,
    vector_kind=VectorKind.PACKED,
    dim=copy_keypoints.MAX_BYTES,
    metric=Metric.VERIFIED,
    alert_max_distance=CopyScorer.load().max_distance,
    describe_batch=copy_keypoints.packed,
    describe_query=copy_keypoints.packed_query,
    check_packed=keypoints.check,
)

KNOWN = ("phash", "colour", "copy", "keypoints", "clip")

# CLIP's threshold was measured for the default architecture with RANDOM weights (nothing can
# be downloaded where the benchmark ran): it means nothing for trained weights. A deployment
# with real weights runs the benchmark with them and sets LOOKALIKE_ALERT_MAX_DISTANCE.
CLIP_ALERT_MEASURED_FOR = ("ViT-B-32", None)  # (model, pretrained)
CLIP_ALERT_MAX_DISTANCE = 0.0113


def clip_feature(settings: Settings) -> FeatureSpec:
    from consumers.features.clip_embed import NAME, ClipEmbedder

    embedder = ClipEmbedder(
        settings.clip_model,
        settings.clip_pretrained,
        settings.device,
        cpu_runtime=settings.clip_cpu_runtime,
        cache_dir=settings.data_dir / "models",
    )
    measured_for = (settings.clip_model, settings.clip_pretrained or None)
    if measured_for != CLIP_ALERT_MEASURED_FOR and NAME not in settings.alert_max_distance:
        log.warning(
            "clip.alert_threshold_not_measured",
            model=settings.clip_model,
            pretrained=settings.clip_pretrained,
            measured_for=CLIP_ALERT_MEASURED_FOR,
            alert_max_distance=CLIP_ALERT_MAX_DISTANCE,
            fix="python -m bench.alert_thresholds with these settings, then set "
            "LOOKALIKE_ALERT_MAX_DISTANCE",
        )

    def encoded(datas: Sequence[bytes]) -> list[bytes | str]:
        described = embedder.embed_encoded(datas, settings.max_image_pixels)
        return [v if isinstance(v, str) else v.tobytes() for v in described]

    return FeatureSpec(
        name=NAME,
        version=embedder.version,
        vector_kind=VectorKind.FLOAT32,
        dim=embedder.dim,
        metric=Metric.COSINE,
        alert_max_distance=CLIP_ALERT_MAX_DISTANCE,
        describe_batch=lambda images: [row.tobytes() for row in embedder.embed_images(images)],
        describe_text=lambda text: embedder.embed_text([text])[0].tobytes(),
        describe_encoded=encoded if embedder.device == "cuda" else None,
    )


def build_features(settings: Settings, names: Sequence[str] | None = None) -> list[FeatureSpec]:
    """The configured features (CLIP loads its model here: do it once per process), each
    with its alert threshold as configured (LOOKALIKE_ALERT_MAX_DISTANCE) or its default."""
    wanted = list(names) if names is not None else settings.feature_names
    unknown = sorted(set(wanted) - set(KNOWN))
    if unknown:
        raise ValueError(f"unknown features {unknown}; known: {list(KNOWN)}")
    unknown = sorted(set(settings.alert_max_distance) - set(KNOWN))
    if unknown:
        raise ValueError(
            f"LOOKALIKE_ALERT_MAX_DISTANCE names unknown features {unknown}; known: {list(KNOWN)}"
        )
    specs: list[FeatureSpec] = []
    for name in wanted:
        if name == "phash":
            specs.append(PHASH)
        elif name == "colour":
            specs.append(COLOUR)
        elif name == "copy":
            specs.append(COPY)
        elif name == "keypoints":
            specs.append(KEYPOINTS)
        else:
            specs.append(clip_feature(settings))
    return [with_alert_override(spec, settings) for spec in specs]


def with_alert_override(spec: FeatureSpec, settings: Settings) -> FeatureSpec:
    """`spec` with the configured alert threshold, if one is set for it (range-checked)."""
    override = settings.alert_max_distance.get(spec.name)
    if override is None:
        return spec
    return dataclasses.replace(spec, alert_max_distance=float(override))
