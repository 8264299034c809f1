"""The copy-detection set: originals cut from photographs, copies of them, non-copies, and
which originals each copy is a copy of (bench/copy_scale.py describes it; used by it and by
bench/copy_verify.py).

Right answers: each original knows the part of its photograph it shows, and each copy the part
of its original it shows (its frame taken back through its transforms). A copy whose pixels
another original also contains whole is a copy of that one too: no method can tell which of
them it was cut from.
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageDraw, ImageEnhance

from lookalike.samples import jpeg, photos

Rng = np.random.Generator


@dataclass(frozen=True)
class Region:
    """Where an image's content lies in its photograph: photo number, (left, top, right,
    bottom) in the photograph's pixels."""

    photo: int
    box: tuple[float, float, float, float]

    def contains(self, other: Region, slack: float = 1.0) -> bool:
        """Whether every pixel of `other` is in this region (within `slack` pixels)."""
        a, b = self.box, other.box
        return (
            self.photo == other.photo
            and a[0] <= b[0] + slack
            and a[1] <= b[1] + slack
            and a[2] >= b[2] - slack
            and a[3] >= b[3] - slack
        )


@functools.cache
def photographs() -> list[Image.Image]:
    """The sample photographs, and last the right eye's view of `stereo_motorcycle` (the
    left one is among the samples): the same scene from another point, never a copy of it."""
    import skimage.data

    right_eye = Image.fromarray(skimage.data.stereo_motorcycle()[1])  # type: ignore[no-untyped-call]
    return [p.convert("RGB") for p in photos().values()] + [right_eye.convert("RGB")]


OUTSIDE = 4  # sample photographs kept out of the gallery, for the non-copies


def split_photographs(seed: int) -> tuple[list[int], list[int]]:
    """Which photographs the gallery is cut from, and which are kept outside it: OUTSIDE
    random samples and the right eye's view (the left eye's stays in): a query cut from
    those is not a copy of anything in the gallery."""
    samples = list(photos())
    right_eye, left_eye = len(samples), samples.index("stereo_motorcycle")
    drawn = [p for p in range(len(samples)) if p != left_eye]
    outside = sorted(np.random.default_rng([seed, 1]).choice(drawn, OUTSIDE, replace=False))
    inside = [p for p in range(len(samples)) if p not in outside]
    return inside, [*(int(p) for p in outside), right_eye]


@dataclass(frozen=True)
class Cut:
    """One original as drawn: where it lies in its photograph, its size, and (a burst-like
    neighbour's) the brightness it was shot at; its pixels are made when asked for."""

    where: Region
    size: tuple[int, int]
    brightness: float | None = None

    def render(self) -> Image.Image:
        left, top, right, bottom = (int(v) for v in self.where.box)
        out = photographs()[self.where.photo].crop((left, top, right, bottom)).resize(self.size)
        if self.brightness is not None:
            out = ImageEnhance.Brightness(out).enhance(self.brightness)
        return out


class Gallery:
    """The originals' pictures, each made from its `Cut` when asked for: 100,000 of them
    would not fit in memory at once."""

    def __init__(self, cuts: list[Cut]) -> None:
        self.cuts = cuts

    def __len__(self) -> int:
        return len(self.cuts)

    def __getitem__(self, n: int) -> Image.Image:
        return self.cuts[n].render()

    def __iter__(self) -> Iterator[Image.Image]:
        return (cut.render() for cut in self.cuts)


def originals(count: int, rng: Rng, photo_numbers: list[int]) -> tuple[Gallery, list[Region]]:
    """`count` originals (480 px wide) cut from the photographs `photo_numbers`, and where
    each lies in its photograph."""
    sources = photographs()
    cuts: list[Cut] = []
    while len(cuts) < count:
        photo = photo_numbers[int(rng.integers(len(photo_numbers)))]
        w, h = sources[photo].size
        cw, ch = int(w * rng.uniform(0.35, 0.8)), int(h * rng.uniform(0.35, 0.8))
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        size = (480, int(480 * ch / cw))
        cuts.append(Cut(Region(photo, (x, y, x + cw, y + ch)), size))
        if rng.random() < 0.3 and len(cuts) < count:  # a burst-like neighbour
            dx, dy = (int(d * rng.uniform(0.01, 0.04)) for d in (cw, ch))
            x2, y2 = min(w - cw, x + dx), min(h - ch, y + dy)
            shifted = Region(photo, (x2, y2, x2 + cw, y2 + ch))
            cuts.append(Cut(shifted, size, float(rng.uniform(0.9, 1.1))))
    return Gallery(cuts), [cut.where for cut in cuts]


# A transform returns the new image, the affine map (2 x 3) taking a point of the new image to
# the point of its input it shows, and the box of the new image it leaves visible (None: all
# of it; a caption bar hides a strip): how make_query knows which pixels a copy keeps.
Box = tuple[float, float, float, float]
Transformed = tuple[Image.Image, NDArray[np.float64], Box | None]
SAME = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])


def moved(dx: float, dy: float) -> NDArray[np.float64]:
    return np.array([[1.0, 0.0, dx], [0.0, 1.0, dy]])


def crop(img: Image.Image, rng: Rng) -> Transformed:
    w, h = img.size
    cw, ch = int(w * rng.uniform(0.55, 0.95)), int(h * rng.uniform(0.55, 0.95))
    x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    return img.crop((x, y, x + cw, y + ch)), moved(x, y), None


def turn(img: Image.Image, rng: Rng) -> Transformed:
    angle = float(rng.uniform(1, 12)) * (1 if rng.random() < 0.5 else -1)
    out = img.rotate(angle, resample=Image.Resampling.BILINEAR, expand=False)
    # PIL turns counter-clockwise as seen (y grows downwards) about the centre.
    a, (cx, cy) = np.radians(angle), (img.width / 2, img.height / 2)
    rotation = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    centre = np.array([cx, cy])
    return out, np.hstack([rotation, (centre - rotation @ centre)[:, None]]), None


def caption(img: Image.Image, rng: Rng) -> Transformed:
    out = img.copy()
    w, h = out.size
    bar = int(h * rng.uniform(0.06, 0.2))
    top = 0 if rng.random() < 0.4 else h - bar
    draw = ImageDraw.Draw(out)
    draw.rectangle((0, top, w, top + bar), fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    draw.text((int(w * 0.05), top + bar // 3), "lookalike " * 4, fill=(255, 255, 255))
    return out, SAME, (0, bar, w, h) if top == 0 else (0, 0, w, h - bar)


def logo(img: Image.Image, rng: Rng) -> Transformed:
    out = img.copy()
    w, h = out.size
    lw, lh = int(w * rng.uniform(0.08, 0.25)), int(h * rng.uniform(0.08, 0.25))
    x, y = int(rng.integers(0, w - lw)), int(rng.integers(0, h - lh))
    ImageDraw.Draw(out).ellipse(
        (x, y, x + lw, y + lh), fill=tuple(int(c) for c in rng.integers(0, 256, 3))
    )
    return out, SAME, None  # a logo hides pixels inside the frame: they still count as shown


def pad(img: Image.Image, rng: Rng) -> Transformed:
    w, h = img.size
    p = int(min(w, h) * rng.uniform(0.04, 0.2))
    colour = (0, 0, 0) if rng.random() < 0.5 else (255, 255, 255)
    out = Image.new("RGB", (w + 2 * p, h + 2 * p), colour)
    out.paste(img, (p, p))
    return out, moved(-p, -p), None


def recolour(img: Image.Image, rng: Rng) -> Transformed:
    out = ImageEnhance.Color(img).enhance(float(rng.uniform(0.3, 1.7)))
    out = ImageEnhance.Contrast(out).enhance(float(rng.uniform(0.7, 1.3)))
    return ImageEnhance.Brightness(out).enhance(float(rng.uniform(0.7, 1.3))), SAME, None


TRANSFORMS: dict[str, Callable[[Image.Image, Rng], Transformed]] = {
    "crop": crop,
    "turn": turn,
    "caption": caption,
    "logo": logo,
    "pad": pad,
    "colour": recolour,
}


@dataclass(frozen=True)
class Query:
    data: bytes  # the copy, as a JPEG
    kind: str  # its transforms, "crop" or "crop+turn"
    # The part of the original it shows, (left, top, right, bottom) in the original's pixels:
    # the bounding box of the copy's frame taken back through its transforms, inside the
    # original, less caption bars (padding shows nothing of it; a turned frame's corners and
    # what a logo covers count as shown).
    shown: Box


def make_query(img: Image.Image, rng: Rng) -> Query:
    names = list(TRANSFORMS)
    picked = [names[int(rng.integers(len(names)))]]
    if rng.random() < 0.35:  # a combination of two
        picked.append(names[int(rng.integers(len(names)))])
    out, to_original = img, np.vstack([SAME, [0.0, 0.0, 1.0]])
    shown: Box = (0.0, 0.0, float(img.width), float(img.height))
    for name in picked:
        out, to_input, visible = TRANSFORMS[name](out, rng)
        to_original = to_original @ np.vstack([to_input, [0.0, 0.0, 1.0]])
        seen = in_original(visible or (0, 0, out.width, out.height), to_original)
        shown = (
            max(shown[0], seen[0]),
            max(shown[1], seen[1]),
            min(shown[2], seen[2]),
            min(shown[3], seen[3]),
        )
    return Query(jpeg(out, quality=int(rng.integers(40, 95))), "+".join(picked), shown)


def in_original(box: Box, to_original: NDArray[np.float64]) -> Box:
    """The bounding box of `box` taken back into the original by `to_original` (3 x 3)."""
    x0, y0, x1, y1 = box
    corners = to_original @ np.array([[x0, x1, x0, x1], [y0, y0, y1, y1], [1, 1, 1, 1]])
    return (corners[0].min(), corners[1].min(), corners[0].max(), corners[1].max())


def shown_region(query: Query, original: Cut) -> Region:
    """The part of the photograph a copy of `original` shows."""
    left, top, right, bottom = original.where.box
    sx, sy = (right - left) / original.size[0], (bottom - top) / original.size[1]
    x0, y0, x1, y1 = query.shown
    return Region(
        original.where.photo, (left + x0 * sx, top + y0 * sy, left + x1 * sx, top + y1 * sy)
    )


def answers(shown: Region, regions: list[Region]) -> frozenset[int]:
    """Every original a copy showing `shown` is a copy of: all that contain those pixels."""
    return frozenset(i for i, r in enumerate(regions) if r.contains(shown))


@dataclass
class CopySet:
    """The originals (gallery), where each lies in its photograph, and the copies (queries)
    of random ones: `source` is each copy's original, `right` every original it is a copy
    of (its own, and any other that contains all the pixels it shows)."""

    gallery: Gallery
    regions: list[Region]
    queries: list[Query]
    source: NDArray[np.int64]
    right: list[frozenset[int]]
    outside: list[int]  # photographs no original is cut from
    non_copies: list[Query]  # copies of originals cut from those: not copies of the gallery

    @property
    def asked(self) -> list[Query]:
        """Every query: the copies, then the non-copies."""
        return self.queries + self.non_copies

    @property
    def by_content(self) -> list[frozenset[int]]:
        """Each query's right answers: any original containing every pixel it shows (none for
        a non-copy)."""
        return self.right + [frozenset() for _ in self.non_copies]

    @property
    def strict(self) -> list[frozenset[int]]:
        """Each query's right answer when only a copy's own original counts."""
        return [frozenset([int(s)]) for s in self.source] + [frozenset() for _ in self.non_copies]

    @property
    def tuning(self) -> NDArray[np.bool_]:
        """Which queries are the tuning half: copies of even-numbered originals, even-numbered
        non-copies."""
        return np.concatenate([self.source % 2 == 0, np.arange(len(self.non_copies)) % 2 == 0])


def copy_set(count: int, queries: int, seed: int, non_copies: int = 300) -> CopySet:
    """`count` originals, `queries` copies of random ones (one seed draws all of it, in this
    order) and `non_copies` (drawn from seed + 1)."""
    rng = np.random.default_rng(seed)
    inside, outside = split_photographs(seed)
    gallery, regions = originals(count, rng, inside)
    source = rng.integers(0, len(gallery), queries)
    made = [make_query(gallery[s], rng) for s in source]
    right = [
        answers(shown_region(q, gallery.cuts[s]), regions) | {int(s)}
        for q, s in zip(made, source, strict=True)
    ]
    rng = np.random.default_rng(seed + 1)
    others, _ = originals(non_copies, rng, outside)
    outsiders = [make_query(o, rng) for o in others]
    return CopySet(gallery, regions, made, source, right, outside, outsiders)


def add_set_options(parser: argparse.ArgumentParser) -> None:
    """The options that say which set to make, and the verdicts' precision target."""
    parser.add_argument("--originals", type=int, default=2000)
    parser.add_argument("--queries", type=int, default=600)
    parser.add_argument("--non-copies", type=int, default=300)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--precision", type=float, default=0.99)
