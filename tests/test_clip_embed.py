"""CLIP embeddings (random weights here: no downloads): shape, normalisation, batching."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from consumers.features.clip_embed import ClipEmbedder
from lookalike.samples import photo


@pytest.fixture(scope="module")
def clip() -> ClipEmbedder:
    return ClipEmbedder("ViT-S-32", None, "cpu")


def test_image_and_text_vectors_share_one_space(clip: ClipEmbedder) -> None:
    images = clip.embed_images([photo("coffee"), photo("rocket")])
    texts = clip.embed_text(["a cup of coffee", "a rocket"])
    assert images.shape == (2, clip.dim) and texts.shape == (2, clip.dim)
    assert images.dtype == np.float32 and texts.dtype == np.float32
    assert np.allclose(np.linalg.norm(images, axis=1), 1.0, atol=1e-5)
    assert np.allclose(np.linalg.norm(texts, axis=1), 1.0, atol=1e-5)


def test_batch_gives_the_same_vectors_as_one_by_one() -> None:
    exact = ClipEmbedder("ViT-S-32", None, "cpu", quantize_cpu=False)
    pictures = [photo(n) for n in ("coffee", "rocket", "chelsea")]
    batch = exact.embed_images(pictures)
    single = np.vstack([exact.embed_images([p]) for p in pictures])
    assert np.allclose(batch, single, atol=1e-5)


def test_quantised_batch_matches_one_by_one_to_cosine_0999(clip: ClipEmbedder) -> None:
    # Dynamic int8 quantisation scales activations per batch: near, not bit-identical.
    pictures = [photo(n) for n in ("coffee", "rocket", "chelsea")]
    batch = clip.embed_images(pictures)
    single = np.vstack([clip.embed_images([p]) for p in pictures])
    assert (batch * single).sum(axis=1).min() > 0.999


def test_every_process_builds_the_same_random_model(clip: ClipEmbedder) -> None:
    again = ClipEmbedder("ViT-S-32", None, "cpu")
    assert again.version == clip.version
    img = [photo("coffee")]
    assert np.allclose(again.embed_images(img), clip.embed_images(img), atol=1e-5)


def test_version_names_model_weights_and_preprocessing(clip: ClipEmbedder) -> None:
    assert clip.version.startswith("clip-ViT-S-32-random-seed0-224px")
    assert clip.precision == "int8dyn"  # CPU: quantised linear layers


def test_every_precision_makes_the_same_vectors_so_they_share_one_index() -> None:
    """What lets a GPU (float16) extractor feed a CPU (int8) indexer: one version, and
    vectors close enough to be one index."""
    pictures = [photo(n) for n in ("coffee", "rocket", "chelsea", "astronaut")]
    exact = ClipEmbedder("ViT-S-32", None, "cpu", quantize_cpu=False)
    int8 = ClipEmbedder("ViT-S-32", None, "cpu", quantize_cpu=True)
    reference = exact.embed_images(pictures)
    assert exact.version == int8.version
    assert (reference * int8.embed_images(pictures)).sum(axis=1).min() > 0.999
    half = ClipEmbedder("ViT-S-32", None, "cpu", quantize_cpu=False)
    half.model = half.model.to(dtype=torch.float16)  # as on a GPU
    half.dtype = torch.float16
    assert (reference * half.embed_images(pictures)).sum(axis=1).min() > 0.999
