"""The GPU extractor's pixel path (batched JPEG decode + tensor resize), run here on the CPU:
same vectors as the PIL path, and every input either described or given a reason."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from consumers.features.clip_embed import ClipEmbedder, prepare
from consumers.features.decode import decode_image
from consumers.features.tensor_pixels import TensorPixels
from lookalike.samples import distinct_jpegs, jpeg, photo


@pytest.fixture(scope="module")
def clip() -> ClipEmbedder:
    return ClipEmbedder("ViT-S-32", None, "cpu", quantize_cpu=False)


def png(img: Image.Image) -> bytes:
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()


def rotated_by_exif(img: Image.Image) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # "turn 90 degrees to show"
    out = io.BytesIO()
    img.save(out, format="JPEG", exif=exif.tobytes())
    return out.getvalue()


def test_tensor_path_gives_the_pil_paths_vectors(clip: ClipEmbedder) -> None:
    images = distinct_jpegs(12)
    on_tensors = clip.embed_encoded(images)
    on_pil = clip.embed_prepared(np.stack([prepare(decode_image(d), clip.size) for d in images]))
    cosines = [float(np.dot(a, b)) for a, b in zip(on_tensors, on_pil, strict=True)]
    assert min(cosines) >= 0.999


def test_formats_the_batch_decoder_does_not_take_go_through_pil(clip: ClipEmbedder) -> None:
    picture = photo("coffee")
    inputs = [jpeg(picture), png(picture), rotated_by_exif(picture)]
    batch = TensorPixels(clip.size, "cpu").prepare(inputs)
    assert batch.rows == [0, 1, 2] and batch.on_cpu == 2 and not batch.failures
    # The EXIF turn is applied, as decode.py applies it: the turned copy is not the original.
    turned = batch.pixels[2].numpy().transpose(1, 2, 0)
    upright = prepare(decode_image(inputs[2]), clip.size)
    assert np.abs(turned.astype(int) - upright.astype(int)).mean() < 2


def test_every_input_gets_a_vector_or_a_reason_in_order(clip: ClipEmbedder) -> None:
    good = distinct_jpegs(2)
    truncated = good[0][: len(good[0]) // 3]
    huge = jpeg(Image.new("RGB", (800, 600)))
    small_limit = TensorPixels(clip.size, "cpu", max_pixels=400_000)
    inputs = [good[0], b"not an image", huge, b"", good[1], truncated]
    batch = small_limit.prepare(inputs)
    assert set(batch.failures) >= {1, 2, 3}
    assert "pixel limit" in batch.failures[2]
    assert "not a recognised image format" in batch.failures[1]
    assert batch.failures[3] == "empty file"
    assert batch.rows[:2] == [0, 4]

    out = clip.embed_encoded(inputs[:2] + inputs[3:5])
    assert [isinstance(v, str) for v in out] == [False, True, True, False]
