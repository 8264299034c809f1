"""Near-duplicate alert thresholds: one per feature, in its own metric, overridable by config;
and, on the real stack, alerts that list only what is within their feature's threshold."""

from __future__ import annotations

import io
import uuid

import numpy as np
import pytest
from minio import Minio
from PIL import Image
from pydantic import ValidationError

from bench.alert_thresholds import choose_threshold, distances
from consumers.features.catalog import CLIP_ALERT_MAX_DISTANCE, build_features
from consumers.features.contract import FeatureSpec
from index_store.engines.factory import EngineFactory
from index_store.metric import Metric
from lookalike.samples import distinct_jpegs, jpeg
from producers.uploads import upload_bytes
from schemas.features import VectorKind
from schemas.settings import Settings
from schemas.similarity import SimilarityResult
from tests.kafka_helpers import find_on_topic

CHEAP = ["phash", "colour", "copy"]  # CLIP loads a model: its tests say so


def make_settings(**given: object) -> Settings:
    return Settings(_env_file=None, **given)  # type: ignore[arg-type]


def by_name(specs: list[FeatureSpec]) -> dict[str, FeatureSpec]:
    return {s.name: s for s in specs}


# --- unit ---------------------------------------------------------------------------------------


def test_every_feature_has_a_threshold_inside_its_metrics_range() -> None:
    specs = by_name(build_features(make_settings(), CHEAP))
    assert specs["phash"].distance_range == (0, 576)
    assert specs["copy"].distance_range == (0, 576)  # bits of the closest code pair
    assert specs["colour"].distance_range == (0, 2)
    for spec in specs.values():
        low, high = spec.distance_range
        assert low < spec.alert_max_distance < high, spec.name
    # A Hamming threshold is a whole number of bits.
    assert all(float(specs[n].alert_max_distance).is_integer() for n in ("phash", "copy"))
    assert 0 < CLIP_ALERT_MAX_DISTANCE < 2  # cosine distance


def test_clip_spec_carries_its_threshold_and_its_override() -> None:
    given = {"clip_model": "ViT-S-32", "device": "cpu"}
    (default,) = build_features(make_settings(**given), ["clip"])
    assert default.metric is Metric.COSINE
    assert default.alert_max_distance == CLIP_ALERT_MAX_DISTANCE
    assert default.distance_range == (0, 2)
    (tuned,) = build_features(make_settings(**given, alert_max_distance={"clip": 0.2}), ["clip"])
    assert tuned.alert_max_distance == 0.2


def test_overrides_apply_to_the_named_features_only() -> None:
    defaults = by_name(build_features(make_settings(), CHEAP))
    specs = by_name(
        build_features(make_settings(alert_max_distance={"colour": 0.3, "phash": 40}), CHEAP)
    )
    assert specs["colour"].alert_max_distance == 0.3
    assert specs["phash"].alert_max_distance == 40
    assert specs["copy"].alert_max_distance == defaults["copy"].alert_max_distance
    # Everything else about the feature is unchanged.
    assert specs["colour"].version == defaults["colour"].version


def test_overrides_come_from_the_environment_as_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOOKALIKE_ALERT_MAX_DISTANCE", '{"colour": 0.25, "copy": 100}')
    specs = by_name(build_features(make_settings(), CHEAP))
    assert specs["colour"].alert_max_distance == 0.25
    assert specs["copy"].alert_max_distance == 100
    # A string given directly (the embedded stack hands its environment on so) reads the same.
    assert make_settings(alert_max_distance='{"colour": 0.25}').alert_max_distance == {
        "colour": 0.25
    }


def test_an_override_for_a_known_feature_not_built_here_is_accepted() -> None:
    (spec,) = build_features(make_settings(alert_max_distance={"clip": 0.1}), ["phash"])
    assert spec.name == "phash"  # and no CLIP model was loaded for it


def test_an_override_naming_an_unknown_feature_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"LOOKALIKE_ALERT_MAX_DISTANCE.*'colours'"):
        build_features(make_settings(alert_max_distance={"colours": 0.3}), CHEAP)


def test_an_override_outside_the_metrics_range_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"'colour'.*outside"):
        build_features(make_settings(alert_max_distance={"colour": 3.0}), CHEAP)
    with pytest.raises(ValueError, match=r"'phash'.*outside"):
        build_features(make_settings(alert_max_distance={"phash": 577}), CHEAP)
    with pytest.raises(ValidationError):
        make_settings(alert_max_distance={"colour": -0.1})


def test_a_spec_outside_its_range_cannot_be_built() -> None:
    with pytest.raises(ValueError, match="outside"):
        FeatureSpec("x", "x-v1", VectorKind.FLOAT32, 4, Metric.COSINE, 2.5, lambda images: [])


# --- the benchmark measures what the index computes ---------------------------------------------


def test_bench_distances_equal_the_index_distances() -> None:
    images = [Image.open(io.BytesIO(data)).convert("RGB") for data in distinct_jpegs(6, seed=3)]
    rng = np.random.default_rng(0)
    unit = rng.normal(size=(6, 16)).astype(np.float32)
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    cosine = FeatureSpec(
        "unit", "unit-v1", VectorKind.FLOAT32, 16, Metric.COSINE, 0.5, lambda images: []
    )
    cases = [(s, s.describe_batch(images)) for s in build_features(make_settings(), CHEAP)]
    cases.append((cosine, [row.tobytes() for row in unit]))
    for spec, vectors in cases:
        index = EngineFactory("exact").make(spec.metric, spec.dim, spec.codes_per_item)
        for i, v in enumerate(vectors[1:], start=1):
            index.upsert(str(i), v)
        found = dict(index.search([vectors[0]], k=len(vectors)))
        bench = distances(spec, vectors[:1], vectors[1:])[0]
        expected = np.array([found[str(i)] for i in range(1, len(vectors))])
        assert np.allclose(bench, expected, atol=1e-5), spec.name


def test_threshold_rule_keeps_the_allowed_share_of_unrelated_pairs_out() -> None:
    hamming = np.array([300.0, 250, 240, 240, 260, 280] * 100)
    assert choose_threshold(hamming, 0.0, integer=True) == 239
    # 1 % of 600 pairs: 6 may be in, so the 7th closest (240) must stay out.
    assert choose_threshold(hamming, 0.01, integer=True) == 239
    assert choose_threshold(hamming, 0.4, integer=True) == 249
    floats = np.array([0.51234, 0.9, 1.2])
    assert choose_threshold(floats, 0.0, integer=False) == 0.512
    assert choose_threshold(np.array([0.512, 0.9]), 0.0, integer=False) == 0.511
    for data, rate in ((hamming, 0.01), (floats, 0.0)):
        t = choose_threshold(data, rate, integer=data is hamming)
        assert (data <= t).mean() <= rate


# --- integration: the real stack ----------------------------------------------------------------


async def alert(settings: Settings, image_id: str, feature: str) -> SimilarityResult:
    def match(value: bytes) -> bool:
        result = SimilarityResult.from_bytes(value)
        return result.image_id == image_id and result.feature == feature

    record = await find_on_topic(
        settings, settings.similarity_results_topic, lambda r: match(r.value), timeout=180
    )
    return SimilarityResult.from_bytes(record.value)


@pytest.mark.integration
async def test_alerts_list_only_neighbours_within_their_features_threshold(
    s3: Minio, settings: Settings
) -> None:
    specs = by_name(build_features(settings))
    prefix = f"t-{uuid.uuid4().hex[:8]}"
    # Unrelated pictures (crops of 4 different photographs), then a copy of the first: smaller
    # and re-encoded, uploaded once the original is in every index.
    originals = distinct_jpegs(4, seed=int(uuid.uuid4().int % 10_000) + 1_000)
    ids = []
    for i, data in enumerate(originals):
        key = f"{prefix}/unrelated-{i}.jpg"
        upload_bytes(s3, settings.bucket, key, data)
        ids.append(f"{settings.bucket}/{key}")
    for name in specs:
        await alert(settings, ids[0], name)
    first = Image.open(io.BytesIO(originals[0]))
    copy_key = f"{prefix}/copy-of-0.jpg"
    upload_bytes(s3, settings.bucket, copy_key, jpeg(first.resize((320, 240)), quality=60))
    copy_id = f"{settings.bucket}/{copy_key}"

    for name in ("colour", "clip"):
        threshold = specs[name].alert_max_distance
        for image_id in [*ids, copy_id]:
            result = await alert(settings, image_id, name)
            far = [(h.image_id, h.distance) for h in result.near_duplicates]
            far = [(i, d) for i, d in far if d > threshold]
            assert not far, f"{name} alert of {image_id} lists beyond {threshold}: {far}"
    for name in specs:
        result = await alert(settings, copy_id, name)
        listed = {h.image_id: h.distance for h in result.near_duplicates}
        assert ids[0] in listed, f"{name}: the copy's alert misses its original: {listed}"
        assert listed[ids[0]] <= specs[name].alert_max_distance
