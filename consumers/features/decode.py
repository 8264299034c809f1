"""Turn untrusted image bytes into one RGB picture, or a clear reason why not.

Decoding is the one place hostile input is met, so every limit lives here: pixel count
(decompression bombs), truncated files, exotic modes (CMYK, 16-bit, palette + transparency),
animations (first frame is the image).
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError


class UndecodableImage(ValueError):
    """The bytes are not an image we can describe; the text says why (goes to dead-letter)."""


# Features look at <= 224 px (CLIP's input; pHash uses 96, colour 128), so JPEG may decode
# at 1/2, 1/4 or 1/8 scale (draft mode) as long as both sides stay >= 224: far less work for
# big photos, no effect on what the descriptors see.
DRAFT_SIZE = (224, 224)


def decode_image(
    data: bytes, *, max_pixels: int = 80_000_000, draft: tuple[int, int] | None = DRAFT_SIZE
) -> Image.Image:
    if not data:
        raise UndecodableImage("empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            width, height = img.size
            if width * height > max_pixels:
                raise UndecodableImage(
                    f"{width}x{height} is over the {max_pixels:,}-pixel limit (decompression bomb?)"
                )
            if draft is not None and img.format == "JPEG":
                img.draft("RGB", draft)
            img.load()
    except UndecodableImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise UndecodableImage(f"decompression bomb: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise UndecodableImage("not a recognised image format") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise UndecodableImage(f"corrupt or truncated image: {exc}") from exc
    upright: Image.Image = img
    try:
        upright = ImageOps.exif_transpose(img) or img
    except Exception:  # a broken EXIF block is no reason to drop the picture
        pass
    return to_rgb(upright)


def to_rgb(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float32)
        top = 65535.0 if mode.startswith("I;16") else max(float(arr.max()), 1.0)
        grey = np.clip(arr * (255.0 / top), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if (mode == "P" and "transparency" in img.info) or mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = img.convert("RGBA")
        # Transparent areas become white, as most viewers show them.
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")
