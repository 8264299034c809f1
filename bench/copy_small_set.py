"""Copy detection on a small, fixed set (the one the `copy` feature was designed on; issue 15's
held-out benchmark through the stack is bench/copy_detection.py): recall@1 of each feature,
and of their fusion, on transformed copies.

    .venv/bin/python -m bench.copy_small_set
    .venv/bin/python -m bench.copy_small_set --no-clip   # skip CLIP (1-2 min on 2 cores)

The set is generated offline from the scikit-image photographs (`lookalike.samples`):
originals are 3 crops of each of the 20 photos (top-left, top-right, bottom-centre; 60 % of
each side, so neighbouring crops of one photo overlap by ~10-20 %), resized to 640 px wide
and saved as JPEG q=90. Every original gets one copy per transform (seeded, listed in
TRANSFORMS). Every image, original or copy, is decoded with `decode_image` as the product
does (draft mode). Gallery = the originals; a copy counts as found only if its source is
strictly nearer than every other original (ties count as misses).

Methods: pHash as the product uses it (the query's hash and its mirror's, min Hamming), the
same after trimming uniform borders (`consumers.features.border_trim`), with several hashes
per original (`consumers.features.multi_hash`), the colour histogram by L1 and by Hellinger
(sqrt of the histogram, L2, what an L2/inner-product index can serve), CLIP ViT-B-32 with
RANDOM weights (no downloads here: its numbers say nothing about a trained model), and a
fusion of features (a normalised distance sum, and reciprocal rank fusion for comparison).
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageDraw, ImageFilter, ImageFont, ImageOps

from consumers.features import colour_histogram, copy_signature, multi_hash, phash
from consumers.features.border_trim import framings
from consumers.features.decode import decode_image
from lookalike.samples import jpeg, photos

WIDTH = 640
CROP_SIDE = 0.6
CROP_ANCHORS = (
    (0.0, 0.0),
    (1.0, 0.0),
    (0.5, 1.0),
)  # (x, y) of the window: 0 left/top, 1 right/bottom

S = TypeVar("S")
T = TypeVar("T")
Transform = Callable[[Image.Image, np.random.Generator], bytes]


def _resized(img: Image.Image, rng: np.random.Generator) -> bytes:
    scale = rng.uniform(0.3, 0.5)
    return jpeg(img.resize((round(img.width * scale), round(img.height * scale))))


def _recompressed(img: Image.Image, rng: np.random.Generator) -> bytes:
    return jpeg(img, quality=20)


def _mirrored(img: Image.Image, rng: np.random.Generator) -> bytes:
    return jpeg(ImageOps.mirror(img))


def _rotated(img: Image.Image, rng: np.random.Generator) -> bytes:
    angle = rng.uniform(5, 10) * rng.choice([-1, 1])
    return jpeg(img.rotate(angle, resample=Image.Resampling.BICUBIC, fillcolor=(0, 0, 0)))


def _cropped(img: Image.Image, rng: np.random.Generator) -> bytes:
    keep = rng.uniform(0.7, 0.8)
    w, h = img.size
    cw, ch = round(w * keep), round(h * keep)
    # Centred, give or take 3 % of the side.
    left = int(np.clip((w - cw) / 2 + rng.uniform(-0.03, 0.03) * w, 0, w - cw))
    top = int(np.clip((h - ch) / 2 + rng.uniform(-0.03, 0.03) * h, 0, h - ch))
    return jpeg(img.crop((left, top, left + cw, top + ch)))


def _padded(img: Image.Image, rng: np.random.Generator) -> bytes:
    border = rng.uniform(0.10, 0.20)
    colour = (255, 255, 255) if rng.random() < 0.5 else (0, 0, 0)
    bx, by = round(img.width * border), round(img.height * border)
    return jpeg(ImageOps.expand(img, border=(bx, by, bx, by), fill=colour))


def _recoloured(img: Image.Image, rng: np.random.Generator) -> bytes:
    h, s, v = (np.asarray(c, dtype=np.float32) for c in img.convert("HSV").split())
    h = (h + 255 * rng.uniform(0.08, 0.15) * rng.choice([-1, 1])) % 256
    s = np.clip(s * rng.uniform(0.6, 1.4), 0, 255)
    hsv = Image.merge("HSV", [Image.fromarray(c.astype(np.uint8), "L") for c in (h, s, v)])
    # A channel tweak as well, so that grey photos change colour too.
    rgb = np.asarray(hsv.convert("RGB"), dtype=np.float32)
    gains = np.array([rng.uniform(1.05, 1.2), 1.0, rng.uniform(0.8, 0.95)], dtype=np.float32)
    return jpeg(Image.fromarray(np.clip(rgb * gains, 0, 255).astype(np.uint8), "RGB"))


def _blurred(img: Image.Image, rng: np.random.Generator) -> bytes:
    return jpeg(img.filter(ImageFilter.GaussianBlur(rng.uniform(2.0, 4.0))))


def _watermarked(img: Image.Image, rng: np.random.Generator) -> bytes:
    base = img.convert("RGBA")
    layer = Image.new("RGBA", base.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    w, h = base.size
    # A semi-transparent round logo in a random corner...
    r = round(min(w, h) * 0.12)
    cx = r + 10 if rng.random() < 0.5 else w - r - 10
    cy = r + 10 if rng.random() < 0.5 else h - r - 10
    draw.ellipse(
        (cx - r, cy - r, cx + r, cy + r), fill=(255, 255, 255, 140), outline=(0, 0, 0, 160), width=4
    )
    draw.text((cx, cy), "LA", fill=(0, 0, 0, 200), anchor="mm", font=ImageFont.load_default(size=r))
    # ...and a text line across the lower middle.
    font = ImageFont.load_default(size=max(12, w // 14))
    text = "(c) lookalike stock photos"
    y = round(h * rng.uniform(0.55, 0.8))
    draw.text(
        (w // 2, y),
        text,
        fill=(255, 255, 255, 170),
        anchor="mm",
        font=font,
        stroke_width=2,
        stroke_fill=(0, 0, 0, 170),
    )
    return jpeg(Image.alpha_composite(base, layer).convert("RGB"))


TRANSFORMS: dict[str, Transform] = {
    "resized": _resized,  # to 30-50 % of the side
    "recompressed": _recompressed,  # JPEG q=20
    "mirrored": _mirrored,  # left-right
    "rotated": _rotated,  # 5-10 degrees either way, black corners, size kept
    "cropped": _cropped,  # central 70-80 % of each side, +-3 % off centre
    "padded": _padded,  # 10-20 % white or black border on every side
    "recoloured": _recoloured,  # hue +-8-15 %, saturation x0.6-1.4, red up, blue down
    "blurred": _blurred,  # Gaussian, radius 2-4 px
    "watermarked": _watermarked,  # semi-transparent logo in a corner + a line of text
}


def originals() -> list[tuple[str, Image.Image]]:
    out = []
    for name, img in photos().items():
        w, h = img.size
        cw, ch = round(w * CROP_SIDE), round(h * CROP_SIDE)
        for i, (ax, ay) in enumerate(CROP_ANCHORS):
            left, top = round((w - cw) * ax), round((h - ch) * ay)
            crop = img.crop((left, top, left + cw, top + ch))
            size = (WIDTH, max(1, round(ch * WIDTH / cw)))
            out.append((f"{name}#{i}", crop.resize(size, Image.Resampling.LANCZOS)))
    return out


@dataclass
class CopySet:
    names: list[str]
    gallery: list[bytes]  # originals, JPEG
    queries: list[bytes]  # copies, JPEG
    source: NDArray[np.int64]  # gallery index of each query
    transform: list[str]  # transform of each query


def build_set(seed: int = 0) -> CopySet:
    rng = np.random.default_rng(seed)
    named = originals()
    gallery = [jpeg(img) for _, img in named]
    queries, source, transform = [], [], []
    for i, (_, img) in enumerate(named):
        for tname, make in TRANSFORMS.items():
            queries.append(make(img, rng))
            source.append(i)
            transform.append(tname)
    return CopySet([n for n, _ in named], gallery, queries, np.array(source), transform)


# --- distances: (queries, gallery) matrices, smaller = more alike ------------------------------


Features = list[list[bytes]]  # per image: its descriptors (one per framing or view)


def hamming_matrix(q: Features, g: Features) -> NDArray[np.float64]:
    return multi_hash.distance_matrix(q, g).astype(np.float64)


def _starts(groups: Features) -> NDArray[np.intp]:
    return np.concatenate([[0], np.cumsum([len(x) for x in groups])[:-1]]).astype(np.intp)


def vector_matrix(
    q: Features,
    g: Features,
    metric: Callable[[NDArray[np.float32], NDArray[np.float32]], NDArray[np.float64]],
) -> NDArray[np.float64]:
    """Distances between float32 descriptors; the minimum over each image pair's framings."""
    qv = np.stack([np.frombuffer(x, np.float32) for xs in q for x in xs])
    gv = np.stack([np.frombuffer(x, np.float32) for xs in g for x in xs])
    d = np.minimum.reduceat(metric(qv, gv), _starts(q), axis=0)
    out: NDArray[np.float64] = np.minimum.reduceat(d, _starts(g), axis=1)
    return out


def l1(q: NDArray[np.float32], g: NDArray[np.float32]) -> NDArray[np.float64]:
    out: NDArray[np.float64] = np.abs(q[:, None, :] - g[None, :, :]).sum(axis=2, dtype=np.float64)
    return out


def hellinger_l2(q: NDArray[np.float32], g: NDArray[np.float32]) -> NDArray[np.float64]:
    """L2 between square-rooted histograms (unit vectors: what an L2 or IP index serves)."""
    sq, sg = np.sqrt(q), np.sqrt(g)
    d2 = (sq * sq).sum(1)[:, None] + (sg * sg).sum(1)[None, :] - 2.0 * (sq @ sg.T)
    out: NDArray[np.float64] = np.sqrt(np.maximum(d2, 0.0)).astype(np.float64)
    return out


def normalised_sum(parts: Sequence[NDArray[np.float64]]) -> NDArray[np.float64]:
    """Sum over features of each distance divided by that query's median distance."""
    total = np.zeros_like(parts[0])
    for d in parts:
        total += d / np.maximum(np.median(d, axis=1, keepdims=True), 1e-9)
    return total


def rank_fusion(parts: Sequence[NDArray[np.float64]], k: float = 10.0) -> NDArray[np.float64]:
    """Reciprocal rank fusion (sum of 1 / (k + rank)), negated so that smaller = better."""
    score = np.zeros_like(parts[0])
    for d in parts:
        ranks = d.argsort(axis=1, kind="stable").argsort(axis=1)
        score -= 1.0 / (k + 1.0 + ranks)
    return score


def hits(dist: NDArray[np.float64], source: NDArray[np.int64]) -> NDArray[np.bool_]:
    """Source strictly nearer than every other original (a tie is a miss)."""
    rows = np.arange(dist.shape[0])
    others = dist.copy()
    others[rows, source] = np.inf
    ok: NDArray[np.bool_] = dist[rows, source] < others.min(axis=1)
    return ok


@dataclass
class Timer:
    seconds: float = 0.0
    count: int = 0

    def map(self, fn: Callable[[S], T], items: Sequence[S]) -> list[T]:
        started = time.perf_counter()
        out = [fn(x) for x in items]
        self.seconds += time.perf_counter() - started
        self.count += len(items)
        return out

    def ms(self) -> float:
        return 1000.0 * self.seconds / max(1, self.count)


def clip_distances(
    g_img: Sequence[Image.Image], q_img: Sequence[Image.Image], timer: Timer
) -> NDArray[np.float64]:
    import torch

    from consumers.features.clip_embed import ClipEmbedder

    torch.set_num_threads(os.cpu_count() or 1)
    embedder = ClipEmbedder("ViT-B-32", None, "cpu")

    def embed(images: Sequence[Image.Image]) -> NDArray[np.float32]:
        started = time.perf_counter()
        out = np.concatenate(
            [embedder.embed_images(images[i : i + 32]) for i in range(0, len(images), 32)]
        )
        timer.seconds += time.perf_counter() - started
        timer.count += len(images)
        return out

    g, q = embed(g_img), embed(q_img)
    return (1.0 - q @ g.T).astype(np.float64)


def limits(g_img: Sequence[Image.Image], named: list[tuple[str, Image.Image]]) -> None:
    """Recall@1 of plain pHash and of the best pHash outside the set's ranges."""
    plain_g = [[phash.phash(img)] for img in g_img]
    best_g = [[h for f in framings(img) for h in multi_hash.index_hashes(f)] for img in g_img]
    source = np.arange(len(g_img))

    def turn(angle: float) -> Callable[[Image.Image], Image.Image]:
        return lambda img: img.rotate(angle, Image.Resampling.BICUBIC)

    def crop(keep: float, dx: float = 0.0) -> Callable[[Image.Image], Image.Image]:
        return lambda img: multi_hash.window(img, keep, dx, 0.0)

    cases = [(f"rotated {a} deg", turn(a)) for a in (4, 8, 10, 12, 15)]
    cases += [(f"centred crop keeping {k:.0%}", crop(k)) for k in (0.9, 0.7, 0.6)]
    cases += [(f"75 % crop, {d:.0%} off centre", crop(0.75, d)) for d in (0.05, 0.1)]
    print("\nOutside the set's ranges (one copy of each original; pHash only)")
    print("| copy | plain pHash | pHash + border trim + multi-hash |")
    print("| --- | ---: | ---: |")
    for label, make in cases:
        copies = [decode_image(jpeg(make(img))) for _, img in named]
        plain_q = [multi_hash.query_hashes(img) for img in copies]
        best_q = [[h for f in framings(img) for h in multi_hash.query_hashes(f)] for img in copies]
        plain = hits(hamming_matrix(plain_q, plain_g), source).mean()
        best = hits(hamming_matrix(best_q, best_g), source).mean()
        print(f"| {label} | {plain:.2f} | {best:.2f} |")


PLAIN = "product `phash`: one hash, query + mirror"
TRIM_ONLY = "pHash + border trim, trimmed image only"
TRIM = "pHash + border trim, both framings"
MULTI = "pHash + multi-hash, no trim"
BEST_HASH = "pHash + border trim (both) + multi-hash"
COLOUR = "product `colour`: L1"
PRODUCT_COPY = "product `copy`: as indexed (18 codes from a <= 256 px copy)"
PRODUCT_FUSED = "product fused: normalised sum (`copy` + `colour`)"
COLOUR_TRIM = "colour L1 + border trim (both)"
HELLINGER = "colour Hellinger (sqrt, L2) + border trim (both)"
CLIP = "CLIP ViT-B-32, RANDOM weights"
FUSED = "fused: normalised distance sum (pHash best + colour Hellinger)"
FUSED_RRF = "fused: reciprocal rank fusion k=10 (same two)"
FUSED_CLIP = "fused: normalised distance sum (pHash best + colour Hellinger + CLIP)"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--clip",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="embed every image with CLIP ViT-B-32 (random weights) on the CPU (~30-60 s)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the transforms")
    parser.add_argument(
        "--limits",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also try pHash on rotations and crops beyond the set's ranges (~15 s)",
    )
    args = parser.parse_args()

    started = time.perf_counter()
    data = build_set(args.seed)
    g_img = [decode_image(b) for b in data.gallery]
    q_img = [decode_image(b) for b in data.queries]
    print(
        f"{len(g_img)} originals ({len(g_img) // len(CROP_ANCHORS)} photos x "
        f"{len(CROP_ANCHORS)} crops, {WIDTH} px wide), {len(q_img)} copies "
        f"({len(TRANSFORMS)} transforms each, seed {args.seed}); built and decoded in "
        f"{time.perf_counter() - started:.1f} s",
        flush=True,
    )

    t_trim, t_query, t_index, t_colour, t_clip = Timer(), Timer(), Timer(), Timer(), Timer()
    g_frames = t_trim.map(framings, g_img)
    q_frames = t_trim.map(framings, q_img)
    trimmed = sum(len(f) > 1 for f in g_frames), sum(len(f) > 1 for f in q_frames)

    def per_frame(
        fn: Callable[[Image.Image], list[bytes]], frames: list[list[Image.Image]]
    ) -> Features:
        return [[h for frame in fs for h in fn(frame)] for fs in frames]

    def one(img: Image.Image) -> list[bytes]:
        return [phash.phash(img)]

    dist: dict[str, NDArray[np.float64]] = {}
    q_plain = t_query.map(multi_hash.query_hashes, q_img)
    dist[PLAIN] = hamming_matrix(q_plain, [one(i) for i in g_img])
    q_trim_only = [multi_hash.query_hashes(fs[-1]) for fs in q_frames]
    dist[TRIM_ONLY] = hamming_matrix(q_trim_only, [one(fs[-1]) for fs in g_frames])
    q_framed = per_frame(multi_hash.query_hashes, q_frames)
    dist[TRIM] = hamming_matrix(q_framed, per_frame(one, g_frames))
    dist[MULTI] = hamming_matrix(q_plain, [multi_hash.index_hashes(i) for i in g_img])
    g_best = t_index.map(lambda fs: per_frame(multi_hash.index_hashes, [fs])[0], g_frames)
    dist[BEST_HASH] = hamming_matrix(q_framed, g_best)
    t_product = Timer()
    width = len(phash.phash(g_img[0]))

    def product_codes(img: Image.Image) -> list[bytes]:
        raw = copy_signature.describe(img)
        return [raw[i : i + width] for i in range(0, len(raw), width)]

    g_product = t_product.map(product_codes, g_img)
    dist[PRODUCT_COPY] = hamming_matrix(t_query.map(copy_signature.query_codes, q_img), g_product)

    def histogram(img: Image.Image) -> list[bytes]:
        return [colour_histogram.describe(img)]

    t_colour.map(colour_histogram.describe, q_img)
    g_hist = per_frame(histogram, g_frames)
    q_hist = per_frame(histogram, q_frames)
    dist[COLOUR] = vector_matrix([h[:1] for h in q_hist], [h[:1] for h in g_hist], l1)
    dist[COLOUR_TRIM] = vector_matrix(q_hist, g_hist, l1)
    dist[HELLINGER] = vector_matrix(q_hist, g_hist, hellinger_l2)
    if args.clip:
        print("embedding with CLIP (random weights) on the CPU...", flush=True)
        dist[CLIP] = clip_distances(g_img, q_img, t_clip)
    dist[FUSED] = normalised_sum([dist[BEST_HASH], dist[HELLINGER]])
    dist[PRODUCT_FUSED] = normalised_sum([dist[PRODUCT_COPY], dist[COLOUR]])
    dist[FUSED_RRF] = rank_fusion([dist[BEST_HASH], dist[HELLINGER]])
    if args.clip:
        dist[FUSED_CLIP] = normalised_sum([dist[BEST_HASH], dist[HELLINGER], dist[CLIP]])

    transforms = list(TRANSFORMS)
    kind = np.array(data.transform)
    recall: dict[str, dict[str, float]] = {}
    for name, d in dist.items():
        ok = hits(d, data.source)
        recall[name] = {t: float(ok[kind == t].mean()) for t in transforms}
        recall[name]["overall"] = float(ok.mean())

    print(
        f"\nRecall@1: {len(g_img)} copies per transform, {len(q_img)} overall; gallery = the "
        f"{len(g_img)} originals; a tie with another original counts as a miss"
    )
    print("| method | " + " | ".join(transforms) + " | overall |")
    print("| --- |" + " ---: |" * (len(transforms) + 1))
    for name, r in recall.items():
        cells = " | ".join(f"{r[t]:.2f}" for t in transforms)
        print(f"| {name} | {cells} | **{r['overall']:.3f}** |")
    if not args.clip:
        print("(CLIP skipped: --no-clip)")

    # Recall@1 says nothing about false matches, and a minimum over more hash pairs brings
    # unrelated pictures closer too: threshold each distance at the 1st percentile of
    # (copy, original of ANOTHER photo) pairs and count the copies within it of their source.
    photo_of = np.arange(len(g_img)) // len(CROP_ANCHORS)
    unrelated = photo_of[None, :] != photo_of[data.source][:, None]
    own_rows = np.arange(len(q_img))
    print(
        "\nSeparation: threshold = 1st percentile of distances between copies and originals "
        "of other photos (1 % false matches per pair); share of copies within it of their source"
    )
    print("| method | median copy->source | threshold | copies found at threshold |")
    print("| --- | ---: | ---: | ---: |")
    for name, d in dist.items():
        if name == FUSED_RRF:
            continue  # ranks, not distances
        own = d[own_rows, data.source]
        threshold = float(np.percentile(d[unrelated], 1))
        print(
            f"| {name} | {np.median(own):.3g} | {threshold:.3g} | "
            f"{float((own < threshold).mean()):.3f} |"
        )

    def step(change: str, a: str, b: str, cost: str) -> str:
        ra, rb = recall[a]["overall"], recall[b]["overall"]
        return f"| {change} | {ra:.3f} -> {rb:.3f} | {rb - ra:+.3f} | {cost} |"

    n_hashes = multi_hash.HASHES
    print("\nWhat each change bought (overall recall@1)")
    print("| change | from -> to | delta | cost |")
    print("| --- | --- | ---: | --- |")
    rows = [
        step(
            "border trim replacing the image (pHash)",
            PLAIN,
            TRIM_ONLY,
            f"{t_trim.ms():.1f} ms/image to find the borders",
        ),
        step(
            "border trim as a 2nd framing (pHash)",
            PLAIN,
            TRIM,
            f"a 2nd hash for images with borders ({trimmed[0]}/{len(g_img)} originals, "
            f"{trimmed[1]}/{len(q_img)} copies)",
        ),
        step(
            "multi-hash, no trim",
            PLAIN,
            MULTI,
            f"{n_hashes} hashes stored per original, not 1",
        ),
        step(
            "multi-hash on top of border trim",
            TRIM,
            BEST_HASH,
            f"{n_hashes}x hashes stored and compared; {t_index.ms():.1f} ms per indexed image",
        ),
        step("border trim (colour L1)", COLOUR, COLOUR_TRIM, "as for pHash"),
        step(
            "Hellinger (sqrt, L2) instead of L1",
            COLOUR_TRIM,
            HELLINGER,
            "none: sqrt once at index time; servable by an L2/IP index",
        ),
        step(
            "fusing colour Hellinger with the best pHash",
            BEST_HASH,
            FUSED,
            f"a colour histogram per image ({t_colour.ms():.2f} ms) and a 2nd lookup",
        ),
        step("rank fusion instead of distance sum", FUSED, FUSED_RRF, "same"),
        step(
            "the product's `copy` feature instead of `phash`",
            PLAIN,
            PRODUCT_COPY,
            f"18 codes (1,296 bytes) per image; {t_product.ms():.1f} ms per indexed image",
        ),
        step("product: fusing `copy` with `colour` (L1)", PRODUCT_COPY, PRODUCT_FUSED, "2 lookups"),
    ]
    if args.clip:
        rows.append(
            step(
                "adding random-weight CLIP to the fusion",
                FUSED,
                FUSED_CLIP,
                f"CLIP on {os.cpu_count()} CPU cores: {t_clip.ms():.0f} ms/image",
            )
        )
    print("\n".join(rows))
    if args.limits:
        limits(g_img, originals())
    print(
        f"\nquery pHash (+ mirror): {t_query.ms():.2f} ms/image; border search: "
        f"{t_trim.ms():.1f} ms/image; total run {time.perf_counter() - started:.0f} s"
    )


if __name__ == "__main__":
    main()
