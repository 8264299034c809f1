"""Decoding untrusted bytes: odd modes work, broken or hostile files give a reason."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from consumers.features.decode import UndecodableImage, decode_image
from lookalike.samples import jpeg, photo


def encoded(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


@pytest.fixture(scope="module")
def coffee() -> Image.Image:
    return photo("coffee")


def test_cmyk_jpeg_decodes_to_rgb(coffee: Image.Image) -> None:
    assert decode_image(encoded(coffee.convert("CMYK"), "JPEG")).mode == "RGB"


def test_sixteen_bit_png_decodes_with_its_contrast() -> None:
    ramp = (np.linspace(0, 65535, 256 * 64).reshape(64, 256)).astype(np.uint16)
    img = decode_image(encoded(Image.fromarray(ramp), "PNG"))
    arr = np.asarray(img)
    assert img.mode == "RGB" and arr.min() < 5 and arr.max() > 250


def test_palette_with_transparency_becomes_white_background() -> None:
    img = Image.new("P", (32, 32), 0)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    img.info["transparency"] = 0
    out = decode_image(encoded(img, "PNG", transparency=0))
    assert out.mode == "RGB" and out.getpixel((0, 0)) == (255, 255, 255)


def test_animated_gif_uses_first_frame(coffee: Image.Image) -> None:
    frames = [coffee.resize((64, 48)).convert("P"), Image.new("P", (64, 48), 3)]
    data = encoded(frames[0], "GIF", save_all=True, append_images=frames[1:])
    assert decode_image(data).size == (64, 48)


def test_webp_decodes(coffee: Image.Image) -> None:
    assert decode_image(encoded(coffee, "WEBP")).size == coffee.size


def test_truncated_jpeg_is_undecodable(coffee: Image.Image) -> None:
    data = jpeg(coffee)
    with pytest.raises(UndecodableImage, match=r"truncated|corrupt"):
        decode_image(data[: len(data) // 3])


def test_random_bytes_are_undecodable() -> None:
    with pytest.raises(UndecodableImage, match="not a recognised image"):
        decode_image(b"\x00\x01garbage" * 100)


def test_empty_file_is_undecodable() -> None:
    with pytest.raises(UndecodableImage, match="empty"):
        decode_image(b"")


def test_pixel_bomb_is_refused_before_decoding() -> None:
    # 20k x 20k declared in a tiny PNG header: must be refused without allocating 1.2 GB.
    data = encoded(Image.new("L", (20_000, 20_000)), "PNG", optimize=False)
    with pytest.raises(UndecodableImage, match=r"pixel limit|bomb"):
        decode_image(data, max_pixels=50_000_000)


def test_big_jpeg_decodes_at_reduced_size(coffee: Image.Image) -> None:
    big = coffee.resize((2400, 1600))
    assert max(decode_image(jpeg(big)).size) <= 600
