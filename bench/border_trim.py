"""How much of a picture each border-trim rule cuts, and how much of an added pad it leaves.

    .venv/bin/python -m bench.border_trim
    .venv/bin/python -m bench.border_trim --originals 2000

consumers/features/border_trim.py has two rules: FLAT (the copy codes') and ADDED (keypoint
queries'). The pictures are bench/copy_set.py's originals (seed 2026: crops of the sample
photographs, some of them mostly smooth: a plain wall, a still background), each as a JPEG
(quality 40, 60 or 95 in turn), and each again with a pad added (4, 10 or 20 % of its
shorter side; black, white or blue; in turn). For every rule, over every picture:

- plain, cut: how far (pixels of a 320 px grey copy, as keypoint queries see it) the trim
  cut into a picture that has no border, on its worst side;
- padded, pad left: how much of the pad it left on the worst side;
- padded, cut: how far it cut into the picture inside the pad.

Printed: p50 / p90 of each and the share over 5 px, per rule; the mean cut of plain pictures
for the photographs the first rule cuts most; the share of padded pictures left with over 5 px
of pad, by the pad's colour and the JPEG quality.
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import numpy as np
from PIL import ImageOps

from bench.copy_set import copy_set, photographs
from consumers.features import border_trim
from consumers.features.decode import decode_image
from lookalike.samples import jpeg, photos

RULES = {"FLAT (copy codes)": border_trim.FLAT, "ADDED (keypoint queries)": border_trim.ADDED}
QUALITIES = (40, 60, 95)
PADS = (0.04, 0.1, 0.2)
COLOURS = ((0, 0, 0), (255, 255, 255), (30, 120, 200))
PAD_NAMES = dict(zip(COLOURS, ("black", "white", "blue"), strict=True))
GREY_SIDE = 320  # keypoint queries' grey copy: the unit of the distances printed
OVER = 5.0


def worst_sides(
    box: tuple[int, int, int, int], picture: tuple[float, ...], scale: float
) -> tuple[float, float]:
    """(pad left, picture cut) on the worst side, in grey-copy pixels, of a trim `box` of an
    image whose picture lies at `picture` (left, top, right, bottom)."""
    left, top, right, bottom = box
    pl, pt, pr, pb = picture
    left_over = max(pl - left, pt - top, right - pr, bottom - pb, 0.0)
    cut = max(left - pl, top - pt, pr - right, pb - bottom, 0.0)
    return left_over * scale, cut * scale


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--originals", type=int, default=1080)
    parser.add_argument("--seed", type=int, default=2026)
    args = parser.parse_args()
    copies = copy_set(args.originals, 0, args.seed, non_copies=0)
    names = [*photos(), "right eye"]
    assert len(names) == len(photographs())
    found: dict[str, dict[str, list[float]]] = {r: defaultdict(list) for r in RULES}
    by_photo: dict[str, dict[str, list[float]]] = {r: defaultdict(list) for r in RULES}
    by_pad: dict[str, dict[str, list[float]]] = {r: defaultdict(list) for r in RULES}
    for n, original in enumerate(copies.gallery):
        quality = QUALITIES[n % 3]
        share, colour = PADS[(n // 3) % 3], COLOURS[(n // 9) % 3]
        plain = decode_image(jpeg(original, quality=quality), max_pixels=10**8)
        pad = int(min(original.size) * share)
        padded_original = ImageOps.expand(original, pad, colour)
        padded = decode_image(jpeg(padded_original, quality=quality), max_pixels=10**8)
        s = padded.width / padded_original.width  # decoding may shrink (draft mode)
        inside = (pad * s, pad * s, (pad + original.width) * s, (pad + original.height) * s)
        for name, rule in RULES.items():
            whole = (0.0, 0.0, float(plain.width), float(plain.height))
            _, cut = worst_sides(
                border_trim.border_box(plain, rule), whole, GREY_SIDE / max(plain.size)
            )
            found[name]["plain, cut"].append(cut)
            by_photo[name][names[copies.regions[n].photo]].append(cut)
            left_over, cut = worst_sides(
                border_trim.border_box(padded, rule), inside, GREY_SIDE / max(padded.size)
            )
            found[name]["padded, pad left"].append(left_over)
            by_pad[name][f"{PAD_NAMES[colour]}, quality {quality}"].append(left_over)
            found[name]["padded, cut"].append(cut)
    print(
        f"{len(copies.gallery)} originals of seed {args.seed}, each plain "
        f"and padded; pixels of a {GREY_SIDE} px grey copy, worst side\n"
    )
    measures = list(next(iter(found.values())))
    print(
        "| rule | " + " | ".join(f"{m}: p50 / p90 px, share > {OVER:g} px" for m in measures) + " |"
    )
    print("| --- |" + " --- |" * len(measures))
    for name, values in found.items():
        cells = []
        for m in measures:
            a = np.array(values[m])
            cells.append(
                f"{np.median(a):.1f} / {np.percentile(a, 90):.1f}, {np.mean(a > OVER):.3f}"
            )
        print(f"| {name} | " + " | ".join(cells) + " |")
    first = next(iter(RULES))
    worst = sorted(by_photo[first], key=lambda p: -float(np.mean(by_photo[first][p])))[:5]
    print(f"\nPlain pictures cut, mean px, the photographs {first.split()[0]} cuts most:\n")
    print("| photograph | pictures | " + " | ".join(RULES) + " |")
    print("| --- | --- |" + " --- |" * len(RULES))
    for p in worst:
        cells = [f"{np.mean(by_photo[r][p]):.1f}" for r in RULES]
        print(f"| {p} | {len(by_photo[first][p])} | " + " | ".join(cells) + " |")

    print(f"\nPadded pictures left with more than {OVER:g} px of pad, by pad and JPEG quality:\n")
    print("| pad | pictures | " + " | ".join(RULES) + " |")
    print("| --- | --- |" + " --- |" * len(RULES))
    for pad_kind in sorted(by_pad[first]):
        cells = [f"{np.mean(np.array(by_pad[r][pad_kind]) > OVER):.2f}" for r in RULES]
        print(f"| {pad_kind} | {len(by_pad[first][pad_kind])} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
