"""Near-duplicate alert thresholds: what separates copies from unrelated images, per feature.

    .venv/bin/python -m bench.alert_thresholds            # all four features (~4 min, 2 cores)
    .venv/bin/python -m bench.alert_thresholds --quick    # a third of the images
    LOOKALIKE_CLIP_PRETRAINED=laion2b_s34b_b79k .venv/bin/python -m bench.alert_thresholds

An indexer alerts with the images whose distance to a new image, by one feature, is at most
that feature's `alert_max_distance`. This measures, for each feature, the distances of copy
pairs and of unrelated pairs exactly as the alert sees them (the vectors the extractor
publishes, compared as the index compares them: phash one code, no mirror; copy the closest of
18 x 18 code pairs; colour L1; clip cosine distance), and picks each threshold by one rule.

The set (generated offline from the scikit-image photographs, `lookalike.samples`):
- originals: random windows of each photograph (each side 35-60 % of the photograph's, placed
  at random; windows that are nearly uniform, e.g. a blank margin, are drawn again), resized
  to 640 px wide, JPEG q=90;
- copies: every original once through each transform of `bench/copy_detection.py` (resized,
  recompressed, mirrored, rotated, cropped, padded, recoloured, blurred, watermarked), drawn
  with this script's own seed (copy_detection tuned the `copy` feature on seed 0 and fixed
  crops; these windows and seeds were not used to design any feature);
- halves: the photographs alternate between a tuning half and a held-out half, so the held-out
  numbers come from photographs the threshold never saw.

Pairs, within a half: a copy pair is a copy and its original. An unrelated pair is any image
(original or copy) and an original of another source: a window of another photograph, or a
window of the same photograph that does not overlap it (same scene, texture and colours, not
the same pixels: the near-looking distractors). Windows of one photograph that overlap share
pixels: such pairs are neither copies nor unrelated, and are left out.

Rule: the threshold is the largest distance at which at most `--max-false-rate` (default
0.1 %) of the tuning half's unrelated pairs are within it (Hamming distances are whole bits;
float distances are rounded down to 3 significant digits); the false-alert rate and the copy
recall (share of copy pairs within it) are then reported on both halves. A per-pair rate r
means about r x N unrelated images within the threshold of a new image in an index of N, so
the alert's k limit, not the threshold, bounds what large indexes list.

CLIP is built from Settings as the product builds it (LOOKALIKE_CLIP_MODEL,
LOOKALIKE_CLIP_PRETRAINED, LOOKALIKE_DEVICE). Without pretrained weights it has random weights:
its threshold is only valid for that same random model, and a deployment with real weights
must run this script with them and set LOOKALIKE_ALERT_MAX_DISTANCE.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from bench.copy_detection import TRANSFORMS
from consumers.features.catalog import build_features
from consumers.features.contract import FeatureSpec
from consumers.features.decode import decode_image
from index_store.metric import Metric
from lookalike.samples import PHOTO_NAMES, jpeg, photos
from schemas.settings import Settings

WIDTH = 640
SIDE_RANGE = (0.35, 0.6)  # window side, share of the photograph's side
MIN_GREY_STD = 12.0  # windows flatter than this (a blank margin) are drawn again
BATCH = 32

Box = tuple[float, float, float, float]  # left, top, right, bottom; shares of the photograph


@dataclass(frozen=True)
class Original:
    photo: str
    box: Box
    half: int  # 0 tuning, 1 held-out


@dataclass
class AlertSet:
    originals: list[Original]
    images: list[bytes]  # originals first, then copies; JPEG
    source: NDArray[np.intp]  # per image: index of its original
    transform: list[str]  # per image: "original" or the transform's name

    @property
    def n_originals(self) -> int:
        return len(self.originals)


def overlap(a: Box, b: Box) -> bool:
    return min(a[2], b[2]) > max(a[0], b[0]) and min(a[3], b[3]) > max(a[1], b[1])


def _window(img: Image.Image, rng: np.random.Generator) -> tuple[Box, Image.Image]:
    w, h = img.size
    for _ in range(100):
        fw, fh = rng.uniform(*SIDE_RANGE, size=2)
        fx, fy = rng.uniform(0, 1 - fw), rng.uniform(0, 1 - fh)
        box: Box = (float(fx), float(fy), float(fx + fw), float(fy + fh))
        crop = img.crop((round(fx * w), round(fy * h), round((fx + fw) * w), round((fy + fh) * h)))
        if float(np.asarray(crop.convert("L"), dtype=np.float32).std()) >= MIN_GREY_STD:
            size = (WIDTH, max(1, round(crop.height * WIDTH / crop.width)))
            return box, crop.resize(size, Image.Resampling.LANCZOS)
    raise RuntimeError("no window with content found")  # pragma: no cover (every photo has some)


def build_set(windows_per_photo: int, seed: int) -> AlertSet:
    rng = np.random.default_rng(seed)
    originals: list[Original] = []
    pictures: list[Image.Image] = []
    for i, (name, img) in enumerate(photos().items()):
        for _ in range(windows_per_photo):
            box, picture = _window(img, rng)
            originals.append(Original(name, box, half=PHOTO_NAMES.index(name) % 2))
            pictures.append(picture)
        del i
    images = [jpeg(p) for p in pictures]
    source = list(range(len(pictures)))
    transform = ["original"] * len(pictures)
    for i, picture in enumerate(pictures):
        for tname, make in TRANSFORMS.items():
            images.append(make(picture, rng))
            source.append(i)
            transform.append(tname)
    return AlertSet(originals, images, np.array(source, dtype=np.intp), transform)


# --- vectors and distances, as the indexer's alert computes them -----------------------------


def describe(spec: FeatureSpec, images: Sequence[Image.Image]) -> list[bytes]:
    out: list[bytes] = []
    for i in range(0, len(images), BATCH):
        out.extend(spec.describe_batch(images[i : i + BATCH]))
    return out


def _bits(codes: Sequence[bytes], code_bytes: int) -> NDArray[np.float32]:
    """(items, codes_per_item, bits) unpacked, as float32 (exact for counts below 2**24)."""
    raw = np.frombuffer(b"".join(codes), dtype=np.uint8).reshape(len(codes), -1, code_bytes)
    out: NDArray[np.float32] = np.unpackbits(raw, axis=2).astype(np.float32)
    return out


def distances(
    spec: FeatureSpec, rows: Sequence[bytes], cols: Sequence[bytes], chunk: int = 64
) -> NDArray[np.float64]:
    """(len(rows), len(cols)) distances between two lists of `spec`'s vectors."""
    out = np.empty((len(rows), len(cols)), dtype=np.float64)
    if spec.metric is Metric.HAMMING:
        code_bytes = spec.vector_bytes // spec.codes_per_item
        g = _bits(cols, code_bytes)
        gflat = g.reshape(-1, g.shape[2])
        gsum = gflat.sum(1)
        for lo in range(0, len(rows), chunk):
            q = _bits(rows[lo : lo + chunk], code_bytes)
            qflat = q.reshape(-1, q.shape[2])
            pairs = qflat.sum(1)[:, None] + gsum[None, :] - 2.0 * (qflat @ gflat.T)
            # Closest code pair of each (row item, column item).
            blocks = pairs.reshape(q.shape[0], q.shape[1], g.shape[0], g.shape[1])
            out[lo : lo + chunk] = blocks.min(axis=(1, 3))
        return np.rint(out)
    q_all = np.stack([np.frombuffer(v, np.float32) for v in rows]).astype(np.float64)
    g_all = np.stack([np.frombuffer(v, np.float32) for v in cols]).astype(np.float64)
    if spec.metric is Metric.COSINE:
        return np.asarray(1.0 - q_all @ g_all.T, dtype=np.float64)
    for lo in range(0, len(rows), chunk):
        q = q_all[lo : lo + chunk]
        out[lo : lo + chunk] = np.abs(q[:, None, :] - g_all[None, :, :]).sum(axis=2)
    return out


# --- the rule ----------------------------------------------------------------------------------


def _round_down(value: float, digits: int = 3) -> float:
    if value <= 0:
        return 0.0
    step = 10.0 ** (math.floor(math.log10(value)) - digits + 1)
    return math.floor(value / step + 1e-9) * step


def choose_threshold(unrelated: NDArray[np.float64], max_false_rate: float, integer: bool) -> float:
    """The largest distance with at most `max_false_rate` of `unrelated` within it (<=)."""
    ordered = np.sort(unrelated)
    allowed = math.floor(max_false_rate * len(ordered))
    if allowed >= len(ordered):
        return float(ordered[-1])
    first_false = float(ordered[allowed])  # the (allowed + 1)-th smallest must stay outside
    if integer:
        return max(0.0, first_false - 1.0)
    t = _round_down(first_false)
    if t >= first_false:  # the value has 3 significant digits or fewer: one step below it
        step = 10.0 ** (math.floor(math.log10(first_false)) - 2)
        t = max(0.0, t - step)
    return float(f"{t:.6g}")


# --- report ----------------------------------------------------------------------------------


@dataclass
class Pairs:
    copy: NDArray[np.float64]
    copy_transform: NDArray[np.str_]
    unrelated: NDArray[np.float64]
    distractor: NDArray[np.float64]  # the unrelated pairs from the same photograph


def pairs_of(data: AlertSet, dist: NDArray[np.float64], half: int) -> Pairs:
    """`dist`: (images, originals). The copy and unrelated pairs of one half."""
    orig = data.originals
    cols = np.array([i for i, o in enumerate(orig) if o.half == half], dtype=np.intp)
    rows = np.array([i for i, s in enumerate(data.source) if orig[s].half == half], dtype=np.intp)
    src = data.source[rows]
    photo = np.array([o.photo for o in orig])
    same_photo = photo[src][:, None] == photo[cols][None, :]
    overlapping = np.array([[overlap(orig[s].box, orig[c].box) for c in cols] for s in src])
    same_source = src[:, None] == cols[None, :]
    unrelated = ~same_photo | (same_photo & ~overlapping)
    block = dist[np.ix_(rows, cols)]
    is_copy = np.array([data.transform[r] != "original" for r in rows])
    copy_rows = np.flatnonzero(is_copy)
    copy_cols = np.argmax(same_source[copy_rows], axis=1)
    return Pairs(
        copy=block[copy_rows, copy_cols],
        copy_transform=np.array([data.transform[r] for r in rows[copy_rows]]),
        unrelated=block[unrelated],
        distractor=block[unrelated & same_photo],
    )


def _fmt(value: float, integer: bool) -> str:
    return f"{value:.0f}" if integer else f"{value:.4g}"


def _pct(values: NDArray[np.float64], q: float, integer: bool) -> str:
    return _fmt(float(np.percentile(values, q)), integer) if values.size else "-"


def _rate(values: NDArray[np.float64], threshold: float) -> float:
    return float((values <= threshold).mean()) if values.size else float("nan")


def report(
    spec: FeatureSpec, data: AlertSet, dist: NDArray[np.float64], max_false_rate: float
) -> tuple[float, list[str], list[str]]:
    """The chosen threshold, the summary rows (one per half), and per-transform recall cells."""
    integer = spec.metric is Metric.HAMMING
    halves = [pairs_of(data, dist, h) for h in (0, 1)]
    threshold = choose_threshold(halves[0].unrelated, max_false_rate, integer)
    rows = []
    for label, p in zip(("tuning", "held-out"), halves, strict=True):
        rows.append(
            f"| {spec.name} | {label} | {p.copy.size} | "
            + " | ".join(_pct(p.copy, q, integer) for q in (50, 95, 99))
            + f" | {p.unrelated.size} | "
            + " | ".join(_pct(p.unrelated, q, integer) for q in (1, 5, 50))
            + f" | {_fmt(threshold, integer)} | {100 * _rate(p.unrelated, threshold):.3f} % | "
            f"{100 * _rate(p.distractor, threshold):.2f} % | "
            f"**{_rate(p.copy, threshold):.3f}** |"
        )
    held = halves[1]
    cells = [f"{_rate(held.copy[held.copy_transform == t], threshold):.2f}" for t in TRANSFORMS]
    return threshold, rows, cells


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="4 windows per photograph, not 12")
    parser.add_argument("--windows", type=int, default=None, help="windows per photograph")
    parser.add_argument("--seed", type=int, default=9, help="seed of the windows and transforms")
    parser.add_argument(
        "--max-false-rate",
        type=float,
        default=0.001,
        help="share of the tuning half's unrelated pairs a threshold may let in (default 0.1 %%)",
    )
    parser.add_argument(
        "--features",
        default="phash,copy,colour,clip",
        help="comma-separated features (clip is built from LOOKALIKE_CLIP_* settings)",
    )
    args = parser.parse_args()
    windows = args.windows or (4 if args.quick else 12)
    names = [n.strip() for n in args.features.split(",") if n.strip()]

    started = time.perf_counter()
    data = build_set(windows, args.seed)
    decoded = [decode_image(b) for b in data.images]
    n_orig = data.n_originals
    print(
        f"{n_orig} originals ({len(PHOTO_NAMES)} photographs x {windows} windows, {WIDTH} px "
        f"wide), {len(decoded) - n_orig} copies ({len(TRANSFORMS)} transforms each, seed "
        f"{args.seed}); tuning half: {', '.join(PHOTO_NAMES[0::2])}; built and decoded in "
        f"{time.perf_counter() - started:.0f} s",
        flush=True,
    )
    settings = Settings(_env_file=None, device=os.environ.get("LOOKALIKE_DEVICE", "cpu"))  # type: ignore[call-arg]
    specs = build_features(settings, names)
    summary: list[str] = []
    per_transform: list[str] = []
    chosen: dict[str, float] = {}
    for spec in specs:
        t0 = time.perf_counter()
        vectors = describe(spec, decoded)
        t1 = time.perf_counter()
        dist = distances(spec, vectors, vectors[:n_orig])
        threshold, rows, cells = report(spec, data, dist, args.max_false_rate)
        chosen[spec.name] = threshold
        summary.extend(rows)
        per_transform.append(f"| {spec.name} | {_fmt(threshold, spec.metric is Metric.HAMMING)} | "
                             + " | ".join(cells) + " |")
        print(
            f"{spec.name} ({spec.version}): {len(decoded)} images described in {t1 - t0:.0f} s, "
            f"distances in {time.perf_counter() - t1:.1f} s",
            flush=True,
        )

    print(
        f"\nAlert thresholds: the largest distance with <= {100 * args.max_false_rate:g} % of the "
        "tuning half's unrelated pairs within it; rates and recall at that threshold"
    )
    print(
        "| feature | half | copy pairs | copy p50 | copy p95 | copy p99 | unrelated pairs | "
        "unrelated p1 | unrelated p5 | unrelated p50 | threshold | false alerts | "
        "of which same-photo distractors | copy recall |"
    )
    print("| --- | --- |" + " ---: |" * 12)
    print("\n".join(summary))
    print("\nCopy recall at the threshold by transform (held-out half)")
    print("| feature | threshold | " + " | ".join(TRANSFORMS) + " |")
    print("| --- |" + " ---: |" * (len(TRANSFORMS) + 1))
    print("\n".join(per_transform))
    as_json = ", ".join(f'"{k}": {v:g}' for k, v in chosen.items())
    print(f"\nLOOKALIKE_ALERT_MAX_DISTANCE='{{{as_json}}}'")
    print(f"total run {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
