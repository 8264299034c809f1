"""Near-duplicate alert thresholds: what separates copies from unrelated images, per feature.

    .venv/bin/python -m bench.alert_thresholds            # all four features
    .venv/bin/python -m bench.alert_thresholds --quick    # a third of the images
    LOOKALIKE_CLIP_PRETRAINED=laion2b_s34b_b79k .venv/bin/python -m bench.alert_thresholds

An indexer's alert for a new image lists the other images whose distance to it, by one
feature, is at most that feature's `alert_max_distance`. This script measures, per feature,
the distances of copy pairs and of unrelated pairs exactly as the alert computes them (the
vectors the extractor publishes, decoded as the extractor decodes, compared as the index
compares them: `phash` one code and no mirror; `copy` the closest of the 18 x 18 code pairs;
`colour` L1; `clip` cosine distance), and picks each threshold by one rule.

The set (generated offline from the scikit-image photographs, `lookalike.samples`):
- originals: random windows of each photograph (each side 35-60 % of the photograph's, at a
  random place; a nearly uniform window, e.g. a blank margin, is drawn again), resized to
  640 px wide, JPEG q=90;
- copies: each original once through each transform of `bench/copy_small_set.py` (resized,
  recompressed, mirrored, rotated, cropped, padded, recoloured, blurred, watermarked), drawn
  with this script's seed. copy_small_set designed the `copy` feature on its seed 0 and fixed
  crops; these windows and this seed were used to design nothing;
- halves: the photographs alternate between a tuning half and a held-out half, so held-out
  numbers come from photographs the threshold never saw;
- CLIP describes only the first `--clip-windows` windows of each photograph (and their
  copies): a few hundred images, a few minutes on 2 CPU cores.

Pairs, within one half: a copy pair is a copy and its original. An unrelated pair is any image
(original or copy) and an original of another source: a window of another photograph, or a
window of the same photograph that does not overlap it (same scene, texture and colours, other
pixels: the near-looking distractors). Overlapping windows of one photograph share pixels:
they are neither copies nor unrelated, and are left out.

The rule: a feature's threshold is the largest distance at which at most `--max-false-rate` of
the tuning half's unrelated pairs fall (distance <= threshold, as the index filters); Hamming
thresholds are whole bits, float ones are rounded down to 3 significant digits. The default
rate, 1e-5 per pair, is about 0.1 unrelated image listed per alert in an index of 10,000
(a rate r lists about r x N of N indexed images; the alert's k caps the list). The false-alert
rate and copy recall (share of copy pairs within the threshold) are reported on both halves,
and the same rule applied to the held-out half shows how much the choice depends on the set.

CLIP is built from Settings as the product builds it (LOOKALIKE_CLIP_MODEL,
LOOKALIKE_CLIP_PRETRAINED, LOOKALIKE_DEVICE). Without pretrained weights it has random weights:
its threshold is then only valid for that random model, and a deployment with real weights
must run this script with them and set LOOKALIKE_ALERT_MAX_DISTANCE to what it prints.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from bench.copy_small_set import TRANSFORMS
from consumers.features.catalog import build_features
from consumers.features.contract import FeatureSpec
from consumers.features.decode import decode_image
from index_store.metric import Metric
from lookalike.samples import PHOTO_NAMES, jpeg, photos
from schemas.settings import Settings

WIDTH = 640
SIDE_RANGE = (0.35, 0.6)  # a window's side, as a share of the photograph's side
MIN_GREY_STD = 12.0  # a window flatter than this (a blank margin) is drawn again
WINDOWS, QUICK_WINDOWS = 12, 4  # per photograph
CLIP_WINDOWS, QUICK_CLIP_WINDOWS = 4, 2
MAX_FALSE_RATE = 1e-5
OTHER_RATES = (1e-3, 1e-4)  # operating points printed for comparison
BATCH = 32
HALVES = ("tuning", "held-out")

Box = tuple[float, float, float, float]  # left, top, right, bottom: shares of the photograph


@dataclass(frozen=True)
class Original:
    photo: str
    window: int  # which window of its photograph
    box: Box
    half: int  # 0 tuning, 1 held-out


@dataclass
class AlertSet:
    originals: list[Original]
    images: list[bytes]  # JPEG; the originals first, in order, then the copies
    source: NDArray[np.intp]  # per image: the index of its original
    transform: list[str]  # per image: "original" or the transform's name

    def subset(self, windows: int) -> AlertSet:
        """The first `windows` windows of each photograph, and their copies."""
        keep = [i for i, o in enumerate(self.originals) if o.window < windows]
        renumber = {old: new for new, old in enumerate(keep)}
        rows = [i for i, s in enumerate(self.source) if int(s) in renumber]
        return AlertSet(
            [self.originals[i] for i in keep],
            [self.images[i] for i in rows],
            np.array([renumber[int(self.source[i])] for i in rows], dtype=np.intp),
            [self.transform[i] for i in rows],
        )


def overlap(a: Box, b: Box) -> bool:
    return min(a[2], b[2]) > max(a[0], b[0]) and min(a[3], b[3]) > max(a[1], b[1])


def _window(img: Image.Image, rng: np.random.Generator) -> tuple[Box, Image.Image]:
    w, h = img.size
    while True:
        fw, fh = (float(x) for x in rng.uniform(*SIDE_RANGE, size=2))
        fx, fy = float(rng.uniform(0, 1 - fw)), float(rng.uniform(0, 1 - fh))
        crop = img.crop((round(fx * w), round(fy * h), round((fx + fw) * w), round((fy + fh) * h)))
        if float(np.asarray(crop.convert("L"), dtype=np.float32).std()) >= MIN_GREY_STD:
            size = (WIDTH, max(1, round(crop.height * WIDTH / crop.width)))
            return (fx, fy, fx + fw, fy + fh), crop.resize(size, Image.Resampling.LANCZOS)


def build_set(windows: int, seed: int) -> AlertSet:
    rng = np.random.default_rng(seed)
    originals: list[Original] = []
    pictures: list[Image.Image] = []
    for name, img in photos().items():
        for w in range(windows):
            box, picture = _window(img, rng)
            originals.append(Original(name, w, box, half=PHOTO_NAMES.index(name) % 2))
            pictures.append(picture)
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


def _bits(vectors: Sequence[bytes], codes_per_item: int) -> NDArray[np.float32]:
    """(items, codes, bits), unpacked to float32 (exact for sums below 2**24)."""
    raw = np.frombuffer(b"".join(vectors), dtype=np.uint8).reshape(len(vectors), codes_per_item, -1)
    out: NDArray[np.float32] = np.unpackbits(raw, axis=2).astype(np.float32)
    return out


def distances(
    spec: FeatureSpec, rows: Sequence[bytes], cols: Sequence[bytes], chunk: int = 64
) -> NDArray[np.float64]:
    """(len(rows), len(cols)) distances between two lists of `spec`'s vectors."""
    out = np.empty((len(rows), len(cols)), dtype=np.float64)
    if spec.metric is Metric.HAMMING:
        g = _bits(cols, spec.codes_per_item)
        gflat = g.reshape(-1, g.shape[2])
        gsum = gflat.sum(1)
        for lo in range(0, len(rows), chunk):
            q = _bits(rows[lo : lo + chunk], spec.codes_per_item)
            qflat = q.reshape(-1, q.shape[2])
            # |a xor b| = |a| + |b| - 2 a.b, then the closest code pair of each item pair.
            pairs = qflat.sum(1)[:, None] + gsum[None, :] - 2.0 * (qflat @ gflat.T)
            blocks = pairs.reshape(q.shape[0], q.shape[1], g.shape[0], g.shape[1])
            out[lo : lo + chunk] = blocks.min(axis=(1, 3))
        return np.rint(out)
    qv = np.stack([np.frombuffer(v, np.float32) for v in rows]).astype(np.float64)
    gv = np.stack([np.frombuffer(v, np.float32) for v in cols]).astype(np.float64)
    if spec.metric is Metric.COSINE:
        return np.asarray(1.0 - qv @ gv.T, dtype=np.float64)
    for lo in range(0, len(rows), chunk):
        out[lo : lo + chunk] = np.abs(qv[lo : lo + chunk, None, :] - gv[None, :, :]).sum(axis=2)
    return out


# --- the rule ----------------------------------------------------------------------------------


def _round_down(value: float, digits: int = 3) -> float:
    step = 10.0 ** (math.floor(math.log10(value)) - digits + 1)
    return math.floor(value / step + 1e-9) * step


def choose_threshold(unrelated: NDArray[np.float64], max_false_rate: float, integer: bool) -> float:
    """The largest distance with at most `max_false_rate` of `unrelated` at or under it."""
    ordered = np.sort(unrelated)
    allowed = math.floor(max_false_rate * len(ordered))
    if allowed >= len(ordered):
        return float(ordered[-1])
    first_out = float(ordered[allowed])  # the (allowed + 1)-th closest pair must stay out
    if first_out <= 0:
        return 0.0  # nothing separates: identical vectors of unrelated images
    if integer:
        return max(0.0, math.ceil(first_out) - 1.0)
    t = _round_down(first_out)
    if t >= first_out:  # exactly 3 significant digits: one step of the last one below it
        t -= 10.0 ** (math.floor(math.log10(first_out)) - 2)
    return float(f"{max(0.0, t):.6g}")


# --- pairs and report -----------------------------------------------------------------------


@dataclass
class Pairs:
    copy: NDArray[np.float64]
    copy_transform: NDArray[np.str_]
    unrelated: NDArray[np.float64]
    distractor: NDArray[np.float64]  # the unrelated pairs of one photograph (not overlapping)


def pairs_of(data: AlertSet, dist: NDArray[np.float64], half: int) -> Pairs:
    """`dist`: (images, originals). The copy and unrelated pairs of one half."""
    orig = data.originals
    cols = np.array([i for i, o in enumerate(orig) if o.half == half], dtype=np.intp)
    rows = np.array([i for i, s in enumerate(data.source) if orig[s].half == half], dtype=np.intp)
    src = data.source[rows]
    photo = np.array([o.photo for o in orig])
    same_photo = photo[src][:, None] == photo[cols][None, :]
    shared = np.array([[overlap(orig[s].box, orig[c].box) for c in cols] for s in src])
    unrelated = ~(same_photo & shared)  # a window always overlaps itself: no copy pair here
    block = dist[np.ix_(rows, cols)]
    copy_rows = np.array([i for i, r in enumerate(rows) if data.transform[r] != "original"])
    copy_cols = np.argmax(src[copy_rows][:, None] == cols[None, :], axis=1)
    return Pairs(
        copy=block[copy_rows, copy_cols],
        copy_transform=np.array([data.transform[rows[i]] for i in copy_rows]),
        unrelated=block[unrelated],
        distractor=block[unrelated & same_photo],
    )


def within(values: NDArray[np.float64], threshold: float) -> float:
    return float((values <= threshold).mean()) if values.size else float("nan")


@dataclass
class Measured:
    spec: FeatureSpec
    images: int
    halves: list[Pairs]
    max_false_rate: float
    seconds: float
    threshold: float = field(init=False)

    def __post_init__(self) -> None:
        self.threshold = self.at(self.max_false_rate)

    @property
    def integer(self) -> bool:
        return self.spec.metric is Metric.HAMMING

    def at(self, rate: float, half: int = 0) -> float:
        return choose_threshold(self.halves[half].unrelated, rate, self.integer)

    def fmt(self, value: float) -> str:
        return f"{value:.0f}" if self.integer else f"{value:.3g}"

    def pct(self, values: NDArray[np.float64], q: float) -> str:
        return self.fmt(float(np.percentile(values, q))) if values.size else "-"

    def summary_rows(self) -> list[str]:
        rows = []
        for label, p in zip(HALVES, self.halves, strict=True):
            copy = " | ".join(self.pct(p.copy, q) for q in (50, 95, 99))
            unrelated = " | ".join(self.pct(p.unrelated, q) for q in (1, 5, 50))
            rows.append(
                f"| {self.spec.name} | {label} | {p.copy.size:,} | {copy} | {p.unrelated.size:,}"
                f" | {unrelated} | {self.fmt(self.threshold)} | "
                f"{_share(within(p.unrelated, self.threshold))} | "
                f"{_share(within(p.distractor, self.threshold))} | "
                f"**{within(p.copy, self.threshold):.3f}** |"
            )
        return rows

    def transform_row(self, threshold: float | None = None) -> str:
        """Held-out copy recall by transform at `threshold` (the rule's when None)."""
        t = self.threshold if threshold is None else threshold
        held = self.halves[1]
        cells = [f"{within(held.copy[held.copy_transform == x], t):.2f}" for x in TRANSFORMS]
        return f"| {self.spec.name} | {self.fmt(t)} | " + " | ".join(cells) + " |"

    def shipped_row(self) -> str:
        """Held-out false alerts and copy recall at the product's default threshold."""
        t, held = self.spec.alert_max_distance, self.halves[1]
        return (
            f"| {self.spec.name} | {self.fmt(t)} | {_share(within(held.unrelated, t))} | "
            f"{within(held.copy, t):.3f} |"
        )

    def operating_rows(self) -> list[str]:
        rows = []
        for rate in (*OTHER_RATES, self.max_false_rate):
            t = self.at(rate)
            held = self.halves[1]
            mark = " (the rule)" if rate == self.max_false_rate else ""
            rows.append(
                f"| {self.spec.name} | {rate:g}{mark} | {self.fmt(t)} | "
                f"{_share(within(held.unrelated, t))} | {within(held.copy, t):.3f} | "
                f"{self.fmt(self.at(rate, half=1))} |"
            )
        return rows


def _share(x: float) -> str:
    return "-" if math.isnan(x) else f"{100 * x:.3f} %"


def measure(
    spec: FeatureSpec, data: AlertSet, max_false_rate: float, decoded: Sequence[Image.Image]
) -> Measured:
    started = time.perf_counter()
    vectors = describe(spec, decoded)
    dist = distances(spec, vectors, vectors[: len(data.originals)])
    halves = [pairs_of(data, dist, h) for h in (0, 1)]
    return Measured(spec, len(decoded), halves, max_false_rate, time.perf_counter() - started)


def print_report(results: Sequence[Measured], max_false_rate: float) -> None:
    print(
        f"\nThreshold = the largest distance with at most {max_false_rate:g} of the tuning "
        "half's unrelated pairs at or under it; rates and recall at that threshold"
    )
    print(
        "| feature | half | copy pairs | copy p50 | copy p95 | copy p99 | unrelated pairs | "
        "unrelated p1 | unrelated p5 | unrelated p50 | threshold | false alerts (unrelated "
        "pairs within) | of same-photo distractor pairs | copy recall |"
    )
    print("| --- | --- |" + " ---: |" * 12)
    print("\n".join(row for r in results for row in r.summary_rows()))

    print("\nCopy recall at the threshold, by transform (held-out half)")
    print("| feature | threshold | " + " | ".join(TRANSFORMS) + " |")
    print("| --- |" + " ---: |" * (len(TRANSFORMS) + 1))
    print("\n".join(r.transform_row() for r in results))

    print("\nOther operating points (thresholds from the tuning half, measured on the held-out)")
    print(
        "| feature | max false rate | threshold | held-out false alerts | held-out copy recall "
        "| threshold by the same rule on the held-out half |"
    )
    print("| --- | --- |" + " ---: |" * 4)
    print("\n".join(row for r in results for row in r.operating_rows()))

    print("\nAt the product's default thresholds (consumers/features/catalog.py; held-out half)")
    print("| feature | default | held-out false alerts | held-out copy recall |")
    print("| --- |" + " ---: |" * 3)
    print("\n".join(r.shipped_row() for r in results))
    print("| feature | default | " + " | ".join(TRANSFORMS) + " |")
    print("| --- |" + " ---: |" * (len(TRANSFORMS) + 1))
    print("\n".join(r.transform_row(r.spec.alert_max_distance) for r in results))

    chosen = ", ".join(f'"{r.spec.name}": {r.fmt(r.threshold)}' for r in results)
    print(f"\nLOOKALIKE_ALERT_MAX_DISTANCE='{{{chosen}}}'")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"{QUICK_WINDOWS} windows per photograph ({QUICK_CLIP_WINDOWS} for CLIP)",
    )
    parser.add_argument("--windows", type=int, help=f"per photograph (default {WINDOWS})")
    parser.add_argument(
        "--clip-windows", type=int, help=f"per photograph, for CLIP (default {CLIP_WINDOWS})"
    )
    parser.add_argument("--seed", type=int, default=9, help="seed of the windows and transforms")
    parser.add_argument(
        "--max-false-rate",
        type=float,
        default=MAX_FALSE_RATE,
        help="share of the tuning half's unrelated pairs a threshold may let in",
    )
    parser.add_argument(
        "--features",
        default="phash,copy,colour,clip",
        help="comma-separated; clip is built from the LOOKALIKE_CLIP_* settings",
    )
    args = parser.parse_args()
    windows = args.windows or (QUICK_WINDOWS if args.quick else WINDOWS)
    clip_windows = min(
        windows, args.clip_windows or (QUICK_CLIP_WINDOWS if args.quick else CLIP_WINDOWS)
    )
    names = [n.strip() for n in args.features.split(",") if n.strip()]

    started = time.perf_counter()
    full = build_set(windows, args.seed)
    decoded_full = [decode_image(b) for b in full.images]
    print(
        f"{len(full.originals)} originals ({len(PHOTO_NAMES)} photographs x {windows} windows, "
        f"{WIDTH} px wide) and {len(full.images) - len(full.originals)} copies "
        f"({len(TRANSFORMS)} transforms each), seed {args.seed}; CLIP: the first {clip_windows} "
        f"windows. Tuning half: {', '.join(PHOTO_NAMES[0::2])}. Held-out half: "
        f"{', '.join(PHOTO_NAMES[1::2])}. Built and decoded in "
        f"{time.perf_counter() - started:.0f} s on {os.cpu_count()} CPU cores",
        flush=True,
    )
    small = full.subset(clip_windows)
    decoded_small = [decode_image(b) for b in small.images]
    results: list[Measured] = []
    for spec in build_features(Settings(_env_file=None), names):
        data, decoded = (small, decoded_small) if spec.name == "clip" else (full, decoded_full)
        result = measure(spec, data, args.max_false_rate, decoded)
        results.append(result)
        print(
            f"{spec.name} ({spec.version}): {result.images} images, {result.seconds:.0f} s",
            flush=True,
        )
    print_report(results, args.max_false_rate)
    print(f"total run {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
