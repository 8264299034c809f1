"""Real image embeddings for bench/index_scale.py (`--data-set clip` or `cnn`).

Synthetic vectors put their signal where the generator says; a network's embeddings put it
where the network does. These sets run real image towers over thousands of generated pictures:
random crops (15-100 % of each side, any aspect), turns, flips and colour changes of the
sample photographs (lookalike/samples.py), 224 px. No weights can be downloaded here, so the
networks have random weights, which is what the random-weight CLIP extractor in the tests
computes too; the point is the shape of the vectors' spectrum, not their meaning.

- `clip`: open_clip ViT-B-32's image tower (the product's CLIP feature, 512 dimensions);
- `cnn`: torchvision ResNet-18's penultimate layer (512 dimensions, after global pooling).

Vectors are L2-normalised; the caller writes them (and the held-out queries, the last ones
made) once into its data folder.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageEnhance, ImageOps

from lookalike.samples import PHOTO_NAMES, photo

SIDE = 224
BATCH = 32
SOURCES = ("clip", "cnn")


def pictures(count: int, seed: int) -> Iterator[Image.Image]:
    """`count` pictures, each a random crop and alteration of one of the sample photographs."""
    rng = np.random.default_rng(seed)
    photos = [photo(name).convert("RGB") for name in PHOTO_NAMES]
    for _ in range(count):
        source = photos[int(rng.integers(len(photos)))]
        w, h = source.size
        cw = int(w * rng.uniform(0.15, 1.0))
        ch = int(h * np.clip(cw / w * rng.uniform(0.6, 1.6), 0.15, 1.0))
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        picture = source.crop((x, y, x + cw, y + ch))
        picture = picture.rotate(float(rng.uniform(-30, 30)), resample=Image.Resampling.BILINEAR)
        if rng.random() < 0.5:
            picture = ImageOps.mirror(picture)
        picture = ImageEnhance.Color(picture).enhance(float(rng.uniform(0.3, 1.7)))
        picture = ImageEnhance.Brightness(picture).enhance(float(rng.uniform(0.6, 1.4)))
        yield picture.resize((SIDE, SIDE), Image.Resampling.BILINEAR)


def embedder(source: str) -> Callable[[list[Image.Image]], NDArray[np.float32]]:
    import torch

    torch.manual_seed(0)
    if source == "clip":
        from consumers.features.clip_embed import ClipEmbedder

        clip = ClipEmbedder("ViT-B-32", None, "cpu")
        return clip.embed_images
    if source == "cnn":
        import torchvision

        net: Any = torchvision.models.resnet18(weights=None)
        net.fc = torch.nn.Identity()
        net.eval()
        mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)

        @torch.inference_mode()
        def embed(batch: list[Image.Image]) -> NDArray[np.float32]:
            pixels = np.stack([np.asarray(p, dtype=np.uint8) for p in batch])
            x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float().div_(255.0)
            out = net((x - mean) / std)
            out = out / out.norm(dim=1, keepdim=True).clamp_min(1e-12)
            vectors: NDArray[np.float32] = out.numpy().astype(np.float32)
            return vectors

        return embed
    raise ValueError(f"unknown embedding set {source!r}; choose from {SOURCES}")


def embed_set(source: str, count: int, seed: int) -> NDArray[np.float32]:
    """`count` unit vectors of `source`'s embeddings of generated pictures (with progress)."""
    embed = embedder(source)
    rows: list[NDArray[np.float32]] = []
    batch: list[Image.Image] = []
    started = last = time.perf_counter()
    for picture in pictures(count, seed):
        batch.append(picture)
        if len(batch) == BATCH:
            rows.append(embed(batch))
            batch = []
            now = time.perf_counter()
            if now - last > 15:
                done = BATCH * len(rows)
                rate = done / (now - started)
                print(
                    f"  [{source} embeddings] {done:,}/{count:,} {rate:.1f}/s, "
                    f"eta {(count - done) / rate:.0f}s",
                    file=sys.stderr,
                    flush=True,
                )
                last = now
    if batch:
        rows.append(embed(batch))
    vectors = np.concatenate(rows).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors
