"""Sample photographs (shipped with scikit-image, usable offline) and transformed copies."""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

# Natural photographs and scans; synthetic patterns and duplicates ('cat' == 'chelsea') left out.
PHOTO_NAMES = (
    "astronaut",
    "brick",
    "camera",
    "cell",
    "chelsea",
    "clock",
    "coffee",
    "coins",
    "colorwheel",
    "grass",
    "gravel",
    "hubble_deep_field",
    "immunohistochemistry",
    "logo",
    "moon",
    "page",
    "retina",
    "rocket",
    "stereo_motorcycle",
    "text",
)


def photo(name: str) -> Image.Image:
    import skimage.data

    arr = getattr(skimage.data, name)()
    if isinstance(arr, tuple):  # stereo_motorcycle returns (left, right, disparity)
        arr = arr[0]
    img = Image.fromarray(np.asarray(arr))
    if img.mode == "RGBA":
        img = Image.alpha_composite(Image.new("RGBA", img.size, "white"), img)
    return img.convert("RGB")


def photos() -> dict[str, Image.Image]:
    return {name: photo(name) for name in PHOTO_NAMES}


def jpeg(img: Image.Image, quality: int = 90) -> bytes:
    out = io.BytesIO()
    img.save(out, "JPEG", quality=quality)
    return out.getvalue()


def png(img: Image.Image) -> bytes:
    out = io.BytesIO()
    img.save(out, "PNG")
    return out.getvalue()


COPY_TRANSFORMS: dict[str, Callable[[Image.Image], bytes]] = {
    "resized": lambda img: jpeg(img.resize((img.width // 2, img.height // 2))),
    "recompressed": lambda img: jpeg(img, quality=25),
    "mirrored": lambda img: jpeg(ImageOps.mirror(img)),
}


def distinct_jpegs(count: int, size: tuple[int, int] = (640, 480), seed: int = 0) -> list[bytes]:
    """`count` different pictures: random crops of the sample photos, rotated and re-toned."""
    rng = np.random.default_rng(seed)
    bases = list(photos().values())
    out = []
    for i in range(count):
        base = bases[i % len(bases)]
        w, h = base.size
        cw, ch = int(w * rng.uniform(0.4, 0.7)), int(h * rng.uniform(0.4, 0.7))
        x, y = int(rng.integers(0, w - cw)), int(rng.integers(0, h - ch))
        img = base.crop((x, y, x + cw, y + ch)).rotate(float(rng.uniform(-20, 20)))
        img = ImageEnhance.Color(img).enhance(float(rng.uniform(0.3, 1.7)))
        out.append(jpeg(img.resize(size, Image.Resampling.BILINEAR), quality=88))
    return out
