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

Verdicts (bench/copy_verdicts.py): `--non-copies` queries made the same way from originals cut
from the photographs kept outside the gallery join the copies; each method says "copy of its
nearest original" when that one is at most a threshold away, the threshold chosen on the tuning
half for precision >= `--precision`, and precision and recall at it are read on the held-out
half.

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
from PIL import Image

from bench import copy_verdicts as verdicts
from bench.copy_set import add_set_options, copy_set
from consumers.features.catalog import COPY, PHASH
from consumers.features.decode import decode_image
from index_store.engines.engine import Engine
from index_store.engines.factory import EngineFactory
from index_store.engines.hamming import HammingEngine
from lookalike.samples import jpeg


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


def nearest_all(
    engine: Engine, gallery: list[bytes], queries: list[list[bytes]], k: int
) -> list[list[tuple[str, float]]]:
    """Each query's k nearest originals (min over the query's codes), nearest first."""
    engine.upsert_many([str(i) for i in range(len(gallery))], b"".join(gallery))
    return [engine.search(q, k) for q in queries]


def found(hits: list[list[tuple[str, float]]], right: list[frozenset[int]]) -> NDArray[np.bool_]:
    """Per query: whether a right answer is strictly nearer than every wrong one."""
    return np.array([first_is_right(h, r) for h, r in zip(hits, right, strict=True)])


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
    add_set_options(parser)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.originals, args.queries, args.non_copies = 400, 200, 100
    started = time.perf_counter()
    made = copy_set(args.originals, args.queries, args.seed, args.non_copies)
    decoded_gallery = [decode_image(jpeg(g), max_pixels=10**8) for g in made.gallery]
    decoded_queries = [decode_image(q.data, max_pixels=10**8) for q in made.asked]
    kinds = [q.kind for q in made.asked]
    strict, right = made.strict, made.by_content
    is_copy = np.array([len(r) > 0 for r in right])
    tune = made.tuning
    held = ~tune & is_copy
    methods = compared_methods(decoded_gallery, decoded_queries)
    k = max(len(r) for r in right) + 1
    hits = {name: nearest_all(*method, k) for name, method in methods.items()}
    columns = sorted({kind_column(k) for k in kinds[: args.queries]})
    several = sum(len(r) > 1 for r, h in zip(right, held, strict=True) if h)
    print(
        f"\n## Copy detection at scale ({os.cpu_count()} CPUs; {len(made.gallery):,} originals, "
        f"{int(held.sum())} held-out copies of {args.queries}, {several} of them show pixels "
        f"that more than one original contains; {int((~tune & ~is_copy).sum())} held-out "
        f"non-copies of {args.non_copies}; seed {args.seed})\n"
    )
    for title, labels in (
        ("its own original only", strict),
        ("any original containing every pixel it shows", right),
    ):
        print(f"Recall@1 when the right answer is {title}:\n")
        print("| method | held-out recall@1 | " + " | ".join(columns) + " |")
        print("| --- | --- | " + " | ".join("---" for _ in columns) + " |")
        for name, method_hits in hits.items():
            print(recall_row(name, found(method_hits, labels), kinds, held, columns))
        print()
    print(
        f"Verdicts: copy of the nearest original when it is at most the threshold away, the "
        f"threshold chosen on the tuning half for precision >= {args.precision}; right when "
        "that original contains every pixel the copy shows:\n"
    )
    print(verdicts.HEADER)
    alerting = {f"{spec.name} (product)": spec for spec in (PHASH, COPY)}
    for name, method_hits in hits.items():
        nearest = np.array([h[0][1] if h else np.inf for h in method_hits])
        correct = found(method_hits, right) & is_copy
        print(verdicts.verdict_row(name, nearest, correct, is_copy, tune, args.precision, -1))
        if name in alerting:
            fixed = alerting[name].alert_max_distance
            name = f"{name}, at its alert threshold"
            print(verdicts.verdict_row(name, nearest, correct, is_copy, tune, 0, -1, fixed))
    print(f"\n{time.perf_counter() - started:.0f}s")


def compared_methods(
    gallery: list[Image.Image], queries: list[Image.Image]
) -> dict[str, tuple[Engine, list[bytes], list[list[bytes]]]]:
    """Each method's engine, gallery codes and query codes."""
    product = EngineFactory("exact")
    methods: dict[str, tuple[Engine, list[bytes], list[list[bytes]]]] = {
        f"{spec.name} (product)": (
            product.make(spec.metric, spec.dim, spec.codes_per_item),
            spec.describe_batch(gallery),
            [list(spec.query_vectors(q)) for q in queries],
        )
        for spec in (PHASH, COPY)
    }
    methods["PDQ (8 dihedral query variants)"] = (
        HammingEngine(32),
        [pdq_codes(g, dihedral=False)[0] for g in gallery],
        [pdq_codes(q, dihedral=True) for q in queries],
    )
    for kind in ("phash", "dhash", "whash"):
        code = imagehash_code(kind)
        methods[f"imagehash {kind}"] = (
            HammingEngine(8),
            [code(g) for g in gallery],
            [[code(q)] for q in queries],
        )
    return methods


if __name__ == "__main__":
    main()
