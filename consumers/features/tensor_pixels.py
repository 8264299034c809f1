"""Encoded images -> CLIP input pixels as tensor operations, on the GPU when there is one.

The CPU path (decode.py, then clip_embed.prepare) decodes with PIL; on a GPU host that is what
the model waits on. Here a batch of JPEGs is decoded in one call
(`torchvision.io.decode_jpeg(list, device=...)`: nvJPEG on CUDA, libjpeg on the CPU), then
resized (shorter side to `size`, bicubic with antialias, as PIL's resize filters) and
centre-cropped as batched tensor operations on the same device. The vectors stay those of the
CPU path (cosine >= 0.999, tests/test_tensor_pixels.py and bench/gpu_extract.py), so both paths
feed one index.

What the batched decoder should not or cannot decode goes through the CPU path, one image at
a time: other formats (PNG, WebP, ...), JPEGs whose EXIF says "rotate" (nvJPEG ignores
orientation), CMYK, and any image a batched decode fails on. Size limits are checked from the
header first, as decode.py does, and every failure comes back as a reason, never an exception.
"""

from __future__ import annotations

import io
import warnings
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg

from consumers.features.clip_embed import prepare
from consumers.features.decode import UndecodableImage, decode_image

_EXIF_ORIENTATION = 0x0112


@dataclass
class PixelBatch:
    """The inputs that decoded, as one (n, 3, size, size) uint8 tensor on the device."""

    pixels: torch.Tensor
    rows: list[int]  # pixels[i] is input rows[i]
    failures: dict[int, str] = field(default_factory=dict)  # input -> why it cannot be used
    on_cpu: int = 0  # how many went through the CPU fallback


def batch_decodable(data: bytes, max_pixels: int) -> bool:
    """True if the batched JPEG decoder gives the same picture as decode.py for `data`.

    Reads the header only. Raises UndecodableImage for an image over the pixel limit.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img = Image.open(io.BytesIO(data))
            width, height = img.size
            if width * height > max_pixels:
                raise UndecodableImage(
                    f"{width}x{height} is over the {max_pixels:,}-pixel limit (decompression bomb?)"
                )
            if img.format != "JPEG" or img.mode not in ("RGB", "L"):
                return False
            return int(img.getexif().get(_EXIF_ORIENTATION, 1)) == 1
    except UndecodableImage:
        raise
    except Exception:  # not for the batched decoder: decode.py says what is wrong with it
        return False


def resized_shape(height: int, width: int, size: int) -> tuple[int, int]:
    """Shorter side to `size`, as clip_embed.prepare computes it."""
    scale = size / min(width, height)
    return max(size, round(height * scale)), max(size, round(width * scale))


class TensorPixels:
    def __init__(self, size: int, device: str, max_pixels: int = 80_000_000) -> None:
        self.size = size
        self.device = torch.device(device)
        self.max_pixels = max_pixels

    def prepare(self, datas: Sequence[bytes]) -> PixelBatch:
        failures: dict[int, str] = {}
        batched: list[int] = []
        for i, data in enumerate(datas):
            try:
                if batch_decodable(data, self.max_pixels):
                    batched.append(i)
            except UndecodableImage as exc:
                failures[i] = str(exc)
        decoded = self._decode_batched(datas, batched)
        fallback = [i for i in range(len(datas)) if i not in decoded and i not in failures]
        out: dict[int, torch.Tensor] = {}
        by_shape: dict[tuple[int, int], list[int]] = defaultdict(list)
        for i, image in decoded.items():
            by_shape[(image.shape[1], image.shape[2])].append(i)
        for (height, width), rows in by_shape.items():
            stack = torch.stack([decoded[i] for i in rows])
            for i, image in zip(rows, self._resize_crop(stack, height, width), strict=True):
                out[i] = image
        for i in fallback:
            try:
                img = decode_image(datas[i], max_pixels=self.max_pixels)
            except UndecodableImage as exc:
                failures[i] = str(exc)
                continue
            hwc = torch.from_numpy(prepare(img, self.size).copy())
            out[i] = hwc.to(self.device, non_blocking=True).permute(2, 0, 1)
        rows = sorted(out)
        if rows:
            pixels = torch.stack([out[i] for i in rows])
        else:
            pixels = torch.zeros((0, 3, self.size, self.size), dtype=torch.uint8)
        on_cpu = len([i for i in fallback if i not in failures])
        return PixelBatch(pixels.to(self.device), rows, failures, on_cpu)

    def _decode_batched(self, datas: Sequence[bytes], rows: list[int]) -> dict[int, torch.Tensor]:
        """(3, h, w) uint8 on the device for each row it could decode; the rest are left out."""
        if not rows:
            return {}
        encoded = [torch.frombuffer(bytearray(datas[i]), dtype=torch.uint8) for i in rows]
        try:
            images = decode_jpeg(encoded, mode=ImageReadMode.RGB, device=self.device)
            return dict(zip(rows, images, strict=True))
        except RuntimeError:
            pass  # one bad image fails the whole call: find it, one at a time
        decoded = {}
        for i, data in zip(rows, encoded, strict=True):
            try:
                decoded[i] = decode_jpeg(data, mode=ImageReadMode.RGB, device=self.device)
            except RuntimeError:
                continue  # the CPU path decodes it, or says why not
        return decoded

    def _resize_crop(self, stack: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """(n, 3, h, w) uint8 -> (n, 3, size, size) uint8: shorter side to size, centre crop."""
        new_h, new_w = resized_shape(height, width, self.size)
        resized = F.interpolate(
            stack.float(), size=(new_h, new_w), mode="bicubic", antialias=True, align_corners=False
        )
        top, left = (new_h - self.size) // 2, (new_w - self.size) // 2
        crop = resized[:, :, top : top + self.size, left : left + self.size]
        return crop.round_().clamp_(0, 255).to(torch.uint8)


def as_numpy_hwc(batch: PixelBatch) -> np.ndarray:
    """The batch as clip_embed.prepare's (n, size, size, 3) uint8 layout (for comparisons)."""
    return batch.pixels.permute(0, 2, 3, 1).cpu().numpy()
