"""CLIP's int8 OpenVINO image tower on a CPU (random weights here): calibrated on the first
images it is asked to describe, built beside the torch model, saved for the next process, and
its vectors stay within the cosine every CLIP precision keeps."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from consumers.features.clip_embed import ClipEmbedder
from consumers.features.clip_openvino import CALIBRATION_IMAGES
from consumers.features.decode import decode_image
from lookalike.samples import distinct_jpegs

MODEL = "ViT-S-32"


def pixels(embedder: ClipEmbedder, count: int) -> np.ndarray:
    return np.stack([embedder.prepare(decode_image(d)) for d in distinct_jpegs(count, seed=3)])


def test_the_int8_tower_is_calibrated_built_saved_and_keeps_the_vectors(tmp_path: Path) -> None:
    exact = ClipEmbedder(MODEL, None, "cpu", quantize_cpu=False)
    first = ClipEmbedder(MODEL, None, "cpu", cpu_runtime="openvino", cache_dir=tmp_path)
    images = pixels(exact, CALIBRATION_IMAGES + 16)
    calibration, measured = images[:CALIBRATION_IMAGES], images[CALIBRATION_IMAGES:]

    # Torch int8 describes the calibration images while the tower is built in a thread.
    assert first.precision == "int8dyn"
    first.embed_prepared(calibration)
    assert first.tower_ready.wait(timeout=240)
    assert first.precision == "openvino-int8"
    assert list(tmp_path.glob("*-int8.onnx"))

    int8 = first.embed_prepared(measured)
    reference = exact.embed_prepared(measured)
    assert int8.shape == reference.shape and int8.dtype == np.float32
    assert (int8 * reference).sum(axis=1).min() >= 0.999

    # The next process loads the saved graph: no calibration, the same vectors.
    second = ClipEmbedder(MODEL, None, "cpu", cpu_runtime="openvino", cache_dir=tmp_path)
    assert second.precision == "openvino-int8" and second.tower_ready.is_set()
    assert np.allclose(second.embed_prepared(measured), int8, atol=1e-5)
