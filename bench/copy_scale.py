"""Copy detection at scale, on a set nobody tuned on: recall@1 on the held-out half.

Originals (`--originals`, default 2,000) are cut from the sample photographs
(lookalike/samples.py): random crops of 35-80 % of each side anywhere in a photograph, so
many overlap heavily, plus burst-like near-identical neighbours (the same crop moved by 1-4 %
with a small brightness change) as distractors. Queries (`--queries`) are copies of random
originals, each made by one or two transforms drawn from continuous ranges: crop 55-95 % of
each side at a random offset and aspect, turn 1-12 degrees, a caption bar or a logo patch of
random size and place, padding, a colour change, recompression. Everything is drawn from
`--seed`, which the feature code never reads. Queries of even-numbered originals are the tuning
half, odd ones the held-out half; only the held-out half is reported.

Compared in one run: the product's `phash` and `copy` features (their own query vectors:
mirrors and views), PDQ (`pdqhash`, the query's 8 dihedral variants), and `imagehash`'s pHash,
dHash and wHash (64 bits). A copy counts as found when its original is strictly nearest.

    .venv/bin/python -m bench.copy_scale --quick          # 400 originals, 200 queries
    .venv/bin/python -m bench.copy_scale                  # 2,000 originals, 600 queries
"""

from __future__ import annotations

import argparse
import os
import time
from collections import defaultdict
from collections.abc import Callable

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


def originals(count: int, rng: Rng) -> list[Image.Image]:
    sources = [p.convert("RGB") for p in photos().values()]
    out: list[Image.Image] = []
    while len(out) < count:
        source = sources[int(rng.integers(len(sources)))]
        w, h = source.size
        cw, ch = int(w * rng.uniform(0.35, 0.8)), int(h * rng.uniform(0.35, 0.8))
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        out.append(source.crop((x, y, x + cw, y + ch)).resize((480, int(480 * ch / cw))))
        if rng.random() < 0.3 and len(out) < count:  # a burst-like neighbour
            dx, dy = (int(d * rng.uniform(0.01, 0.04)) for d in (cw, ch))
            x2, y2 = min(w - cw, x + dx), min(h - ch, y + dy)
            shifted = source.crop((x2, y2, x2 + cw, y2 + ch)).resize(out[-1].size)
            out.append(ImageEnhance.Brightness(shifted).enhance(float(rng.uniform(0.9, 1.1))))
    return out


def crop(img: Image.Image, rng: Rng) -> Image.Image:
    w, h = img.size
    cw, ch = int(w * rng.uniform(0.55, 0.95)), int(h * rng.uniform(0.55, 0.95))
    x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    return img.crop((x, y, x + cw, y + ch))


def turn(img: Image.Image, rng: Rng) -> Image.Image:
    angle = float(rng.uniform(1, 12)) * (1 if rng.random() < 0.5 else -1)
    return img.rotate(angle, resample=Image.Resampling.BILINEAR, expand=False)


def caption(img: Image.Image, rng: Rng) -> Image.Image:
    out = img.copy()
    w, h = out.size
    bar = int(h * rng.uniform(0.06, 0.2))
    top = 0 if rng.random() < 0.4 else h - bar
    draw = ImageDraw.Draw(out)
    draw.rectangle((0, top, w, top + bar), fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    draw.text((int(w * 0.05), top + bar // 3), "lookalike " * 4, fill=(255, 255, 255))
    return out


def logo(img: Image.Image, rng: Rng) -> Image.Image:
    out = img.copy()
    w, h = out.size
    lw, lh = int(w * rng.uniform(0.08, 0.25)), int(h * rng.uniform(0.08, 0.25))
    x, y = int(rng.integers(0, w - lw)), int(rng.integers(0, h - lh))
    ImageDraw.Draw(out).ellipse(
        (x, y, x + lw, y + lh), fill=tuple(int(c) for c in rng.integers(0, 256, 3))
    )
    return out


def pad(img: Image.Image, rng: Rng) -> Image.Image:
    w, h = img.size
    p = int(min(w, h) * rng.uniform(0.04, 0.2))
    colour = (0, 0, 0) if rng.random() < 0.5 else (255, 255, 255)
    out = Image.new("RGB", (w + 2 * p, h + 2 * p), colour)
    out.paste(img, (p, p))
    return out


def recolour(img: Image.Image, rng: Rng) -> Image.Image:
    out = ImageEnhance.Color(img).enhance(float(rng.uniform(0.3, 1.7)))
    out = ImageEnhance.Contrast(out).enhance(float(rng.uniform(0.7, 1.3)))
    return ImageEnhance.Brightness(out).enhance(float(rng.uniform(0.7, 1.3)))


TRANSFORMS: dict[str, Callable[[Image.Image, Rng], Image.Image]] = {
    "crop": crop,
    "turn": turn,
    "caption": caption,
    "logo": logo,
    "pad": pad,
    "colour": recolour,
}


def make_query(img: Image.Image, rng: Rng) -> tuple[bytes, str]:
    names = list(TRANSFORMS)
    picked = [names[int(rng.integers(len(names)))]]
    if rng.random() < 0.35:  # a combination of two
        picked.append(names[int(rng.integers(len(names)))])
    out = img
    for name in picked:
        out = TRANSFORMS[name](out, rng)
    return jpeg(out, quality=int(rng.integers(40, 95))), "+".join(picked)


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


def recall_by_kind(
    engine: Engine, gallery: list[bytes], queries: list[list[bytes]], source: NDArray[np.int64]
) -> NDArray[np.bool_]:
    """Whether each query's original is strictly nearest (min over the query's codes)."""
    engine.upsert_many([str(i) for i in range(len(gallery))], b"".join(gallery))
    found = []
    for q, s in zip(queries, source, strict=True):
        hits = engine.search(q, 2)
        first = len(hits) > 0 and hits[0][0] == str(s)
        found.append(first and (len(hits) < 2 or hits[1][1] > hits[0][1]))
    return np.array(found)


def copy_set(
    count: int, queries: int, seed: int
) -> tuple[list[Image.Image], NDArray[np.int64], list[tuple[bytes, str]]]:
    """The set: `count` originals, and `queries` copies (JPEG, kind) of random ones, whose
    originals' numbers are `source`. One seed draws all of it, in this order."""
    rng = np.random.default_rng(seed)
    gallery_images = originals(count, rng)
    source = rng.integers(0, len(gallery_images), queries)
    return gallery_images, source, [make_query(gallery_images[s], rng) for s in source]


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
    gallery_images, source, made = copy_set(args.originals, args.queries, args.seed)
    decoded_gallery = [decode_image(jpeg(g), max_pixels=10**8) for g in gallery_images]
    decoded_queries = [decode_image(q, max_pixels=10**8) for q, _ in made]
    kinds = [k for _, k in made]
    held_out = source % 2 == 1
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
    print(
        f"\n## Copy detection at scale ({os.cpu_count()} CPUs; {len(gallery_images):,} originals, "
        f"{int(held_out.sum())} held-out queries of {args.queries}, seed {args.seed})\n"
    )
    print("| method | held-out recall@1 | " + " | ".join(columns) + " |")
    print("| --- | --- | " + " | ".join("---" for _ in columns) + " |")
    for name, (engine, gallery, queries) in methods.items():
        found = recall_by_kind(engine, gallery, queries, source)
        print(recall_row(name, found, kinds, held_out, columns))
    print(f"\n{time.perf_counter() - started:.0f}s")


if __name__ == "__main__":
    main()
