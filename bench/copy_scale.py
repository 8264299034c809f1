"""Copy detection at scale, on a set nobody tuned on: recall@1 on the held-out half.

Originals (`--originals`, default 2,000) are cut from 16 of the 20 sample photographs
(lookalike/samples.py; the other 4, drawn from the seed, and the right eye's view of
`stereo_motorcycle` are kept outside the gallery for non-copies: see split_photographs):
random crops of 35-80 % of each side anywhere in a photograph, so many overlap heavily, plus
burst-like near-identical neighbours (the same crop moved by 1-4 % with a small brightness
change) as distractors. Queries (`--queries`) are copies of random originals, each made by one
or two transforms drawn from continuous ranges: crop 55-95 % of each side at a random offset and
aspect, turn 1-12 degrees, a caption bar or a logo patch of random size and place, padding, a
colour change, recompression. Everything is drawn from `--seed`, which the feature code never
reads. Queries of even-numbered originals are the tuning half, odd ones the held-out half; only
the held-out half is reported.

Right answers: each original knows the part of its photograph it shows, and each copy the part
of its original it shows (its frame taken back through its transforms). A copy whose pixels
another original also contains whole is a copy of that one too (no method can tell which of
them it was cut from), so recall@1 is printed twice: strictly (its own original) and by
content (any original containing every pixel it shows). Found = a right answer is strictly
nearer than every other original.

Compared in one run: the product's `phash` and `copy` features (their own query vectors:
mirrors and views), PDQ (`pdqhash`, the query's 8 dihedral variants), and `imagehash`'s pHash,
dHash and wHash (64 bits).

    .venv/bin/python -m bench.copy_scale --quick          # 400 originals, 200 queries
    .venv/bin/python -m bench.copy_scale                  # 2,000 originals, 600 queries
"""

from __future__ import annotations

import argparse
import functools
import os
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageDraw, ImageEnhance

from consumers.features.catalog import COPY, PHASH
from consumers.features.decode import decode_image
from index_store.engines.engine import Engine
from index_store.engines.factory import EngineFactory
from index_store.engines.hamming import HammingEngine
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


def originals(
    count: int, rng: Rng, photo_numbers: list[int]
) -> tuple[list[Image.Image], list[Region]]:
    """`count` originals (480 px wide) cut from the photographs `photo_numbers`, and where
    each lies in its photograph."""
    sources = photographs()
    out: list[Image.Image] = []
    regions: list[Region] = []
    while len(out) < count:
        photo = photo_numbers[int(rng.integers(len(photo_numbers)))]
        source = sources[photo]
        w, h = source.size
        cw, ch = int(w * rng.uniform(0.35, 0.8)), int(h * rng.uniform(0.35, 0.8))
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        out.append(source.crop((x, y, x + cw, y + ch)).resize((480, int(480 * ch / cw))))
        regions.append(Region(photo, (x, y, x + cw, y + ch)))
        if rng.random() < 0.3 and len(out) < count:  # a burst-like neighbour
            dx, dy = (int(d * rng.uniform(0.01, 0.04)) for d in (cw, ch))
            x2, y2 = min(w - cw, x + dx), min(h - ch, y + dy)
            shifted = source.crop((x2, y2, x2 + cw, y2 + ch)).resize(out[-1].size)
            out.append(ImageEnhance.Brightness(shifted).enhance(float(rng.uniform(0.9, 1.1))))
            regions.append(Region(photo, (x2, y2, x2 + cw, y2 + ch)))
    return out, regions


# A transform returns the new image and the affine map (2 x 3) taking a point of the new
# image to the point of its input it shows: how make_query knows which pixels a copy keeps.
Transformed = tuple[Image.Image, NDArray[np.float64]]
SAME = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])


def moved(dx: float, dy: float) -> NDArray[np.float64]:
    return np.array([[1.0, 0.0, dx], [0.0, 1.0, dy]])


def crop(img: Image.Image, rng: Rng) -> Transformed:
    w, h = img.size
    cw, ch = int(w * rng.uniform(0.55, 0.95)), int(h * rng.uniform(0.55, 0.95))
    x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    return img.crop((x, y, x + cw, y + ch)), moved(x, y)


def turn(img: Image.Image, rng: Rng) -> Transformed:
    angle = float(rng.uniform(1, 12)) * (1 if rng.random() < 0.5 else -1)
    out = img.rotate(angle, resample=Image.Resampling.BILINEAR, expand=False)
    # PIL turns counter-clockwise as seen (y grows downwards) about the centre.
    a, (cx, cy) = np.radians(angle), (img.width / 2, img.height / 2)
    rotation = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    centre = np.array([cx, cy])
    return out, np.hstack([rotation, (centre - rotation @ centre)[:, None]])


def caption(img: Image.Image, rng: Rng) -> Transformed:
    out = img.copy()
    w, h = out.size
    bar = int(h * rng.uniform(0.06, 0.2))
    top = 0 if rng.random() < 0.4 else h - bar
    draw = ImageDraw.Draw(out)
    draw.rectangle((0, top, w, top + bar), fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    draw.text((int(w * 0.05), top + bar // 3), "lookalike " * 4, fill=(255, 255, 255))
    return out, SAME


def logo(img: Image.Image, rng: Rng) -> Transformed:
    out = img.copy()
    w, h = out.size
    lw, lh = int(w * rng.uniform(0.08, 0.25)), int(h * rng.uniform(0.08, 0.25))
    x, y = int(rng.integers(0, w - lw)), int(rng.integers(0, h - lh))
    ImageDraw.Draw(out).ellipse(
        (x, y, x + lw, y + lh), fill=tuple(int(c) for c in rng.integers(0, 256, 3))
    )
    return out, SAME


def pad(img: Image.Image, rng: Rng) -> Transformed:
    w, h = img.size
    p = int(min(w, h) * rng.uniform(0.04, 0.2))
    colour = (0, 0, 0) if rng.random() < 0.5 else (255, 255, 255)
    out = Image.new("RGB", (w + 2 * p, h + 2 * p), colour)
    out.paste(img, (p, p))
    return out, moved(-p, -p)


def recolour(img: Image.Image, rng: Rng) -> Transformed:
    out = ImageEnhance.Color(img).enhance(float(rng.uniform(0.3, 1.7)))
    out = ImageEnhance.Contrast(out).enhance(float(rng.uniform(0.7, 1.3)))
    return ImageEnhance.Brightness(out).enhance(float(rng.uniform(0.7, 1.3))), SAME


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
    # original (padding shows nothing of it; a turned frame's corners count as shown).
    shown: tuple[float, float, float, float]


def make_query(img: Image.Image, rng: Rng) -> Query:
    names = list(TRANSFORMS)
    picked = [names[int(rng.integers(len(names)))]]
    if rng.random() < 0.35:  # a combination of two
        picked.append(names[int(rng.integers(len(names)))])
    out, to_original = img, np.vstack([SAME, [0.0, 0.0, 1.0]])
    for name in picked:
        out, to_input = TRANSFORMS[name](out, rng)
        to_original = to_original @ np.vstack([to_input, [0.0, 0.0, 1.0]])
    w, h = out.size
    corners = to_original @ np.array([[0, w, 0, w], [0, 0, h, h], [1, 1, 1, 1]], dtype=float)
    xs, ys = np.clip(corners[0], 0, img.width), np.clip(corners[1], 0, img.height)
    shown = (float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max()))
    return Query(jpeg(out, quality=int(rng.integers(40, 95))), "+".join(picked), shown)


def shown_region(query: Query, original: Image.Image, where: Region) -> Region:
    """The part of the photograph a copy of `original` (which lies at `where`) shows."""
    left, top, right, bottom = where.box
    sx, sy = (right - left) / original.width, (bottom - top) / original.height
    x0, y0, x1, y1 = query.shown
    return Region(where.photo, (left + x0 * sx, top + y0 * sy, left + x1 * sx, top + y1 * sy))


def answers(shown: Region, regions: list[Region]) -> frozenset[int]:
    """Every original a copy showing `shown` is a copy of: all that contain those pixels."""
    return frozenset(i for i, r in enumerate(regions) if r.contains(shown))


def pdq_codes(img: Image.Image, dihedral: bool) -> list[bytes]:
    import pdqhash

    pixels = np.asarray(img.convert("RGB"))
    if dihedral:
        hashes, _ = pdqhash.compute_dihedral(pixels)
    else:
        hashes = [pdqhash.compute(pixels)[0]]
    return [np.packbits(np.asarray(h, dtype=np.uint8)).tobytes() for h in hashes]


def imagehash_code(kind: str) -> Callable[[Image.Image], bytes]:
    import imagehash

    make = {"phash": imagehash.phash, "dhash": imagehash.dhash, "whash": imagehash.whash}[kind]

    def code(img: Image.Image) -> bytes:
        return np.packbits(make(img).hash.flatten()).tobytes()

    return code


def first_is_right(hits: list[tuple[str, float]], right: frozenset[int]) -> bool:
    """Whether a right answer is strictly nearer than every wrong one among `hits` (sorted
    nearest first, at least len(right) + 1 of them when the gallery has that many)."""
    best_right = min((d for i, d in hits if int(i) in right), default=float("inf"))
    best_wrong = min((d for i, d in hits if int(i) not in right), default=float("inf"))
    return best_right < best_wrong


def recall_by_kind(
    engine: Engine, gallery: list[bytes], queries: list[list[bytes]], right: list[frozenset[int]]
) -> NDArray[np.bool_]:
    """Whether each query's nearest (min over the query's codes) is one of its right answers
    and strictly nearer than every wrong one."""
    engine.upsert_many([str(i) for i in range(len(gallery))], b"".join(gallery))
    found = [
        first_is_right(engine.search(q, len(r) + 1), r) for q, r in zip(queries, right, strict=True)
    ]
    return np.array(found)


@dataclass
class CopySet:
    """The originals (gallery), where each lies in its photograph, and the copies (queries)
    of random ones: `source` is each copy's original, `right` every original it is a copy
    of (its own, and any other that contains all the pixels it shows)."""

    gallery: list[Image.Image]
    regions: list[Region]
    queries: list[Query]
    source: NDArray[np.int64]
    right: list[frozenset[int]]
    outside: list[int]  # photographs no original is cut from

    @property
    def strict(self) -> list[frozenset[int]]:
        """Only each copy's own original counts."""
        return [frozenset([int(s)]) for s in self.source]


def copy_set(count: int, queries: int, seed: int) -> CopySet:
    """`count` originals and `queries` copies of random ones. One seed draws all of it, in
    this order."""
    rng = np.random.default_rng(seed)
    inside, outside = split_photographs(seed)
    gallery, regions = originals(count, rng, inside)
    source = rng.integers(0, len(gallery), queries)
    made = [make_query(gallery[s], rng) for s in source]
    right = [
        answers(shown_region(q, gallery[s], regions[s]), regions) | {int(s)}
        for q, s in zip(made, source, strict=True)
    ]
    return CopySet(gallery, regions, made, source, right, outside)


def kind_column(kind: str) -> str:
    """The table column of a query's kind ("crop", or "two transforms" for "crop+turn")."""
    return "two transforms" if "+" in kind else kind


def recall_row(
    name: str,
    found: NDArray[np.bool_],
    kinds: list[str],
    held_out: NDArray[np.bool_],
    columns: list[str],
) -> str:
    """A table row: recall@1 of the held-out queries among `found`, overall and per kind."""
    per: dict[str, list[bool]] = defaultdict(list)
    for f, k, h in zip(found, kinds, held_out, strict=True):
        if h:
            per[kind_column(k)].append(bool(f))
    cells = [f"{np.mean(per[c]):.2f} ({len(per[c])})" if per[c] else "-" for c in columns]
    return f"| {name} | {found[held_out].mean():.3f} | " + " | ".join(cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--originals", type=int, default=2000)
    parser.add_argument("--queries", type=int, default=600)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.originals, args.queries = 400, 200
    started = time.perf_counter()
    made = copy_set(args.originals, args.queries, args.seed)
    decoded_gallery = [decode_image(jpeg(g), max_pixels=10**8) for g in made.gallery]
    decoded_queries = [decode_image(q.data, max_pixels=10**8) for q in made.queries]
    kinds = [q.kind for q in made.queries]
    held_out = made.source % 2 == 1
    product = EngineFactory("exact")
    methods: dict[str, tuple[Engine, list[bytes], list[list[bytes]]]] = {
        f"{spec.name} (product)": (
            product.make(spec.metric, spec.dim, spec.codes_per_item),
            spec.describe_batch(decoded_gallery),
            [spec.query_vectors(q) for q in decoded_queries],
        )
        for spec in (PHASH, COPY)
    }
    methods["PDQ (8 dihedral query variants)"] = (
        HammingEngine(32),
        [pdq_codes(g, dihedral=False)[0] for g in decoded_gallery],
        [pdq_codes(q, dihedral=True) for q in decoded_queries],
    )
    for kind in ("phash", "dhash", "whash"):
        code = imagehash_code(kind)
        methods[f"imagehash {kind}"] = (
            HammingEngine(8),
            [code(g) for g in decoded_gallery],
            [[code(q)] for q in decoded_queries],
        )
    columns = sorted({kind_column(k) for k in kinds})
    several = sum(len(r) > 1 for r, h in zip(made.right, held_out, strict=True) if h)
    print(
        f"\n## Copy detection at scale ({os.cpu_count()} CPUs; {len(made.gallery):,} originals, "
        f"{int(held_out.sum())} held-out queries of {args.queries}, seed {args.seed}; "
        f"{several} held-out copies show pixels that more than one original contains)\n"
    )
    for title, right in (
        ("its own original only", made.strict),
        ("any original containing every pixel it shows", made.right),
    ):
        print(f"Recall@1 when the right answer is {title}:\n")
        print("| method | held-out recall@1 | " + " | ".join(columns) + " |")
        print("| --- | --- | " + " | ".join("---" for _ in columns) + " |")
        for name, (engine, gallery, queries) in methods.items():
            found = recall_by_kind(engine, gallery, queries, right)
            print(recall_row(name, found, kinds, held_out, columns))
        print()
    print(f"{time.perf_counter() - started:.0f}s")


if __name__ == "__main__":
    main()
