"""Copy verdicts where no sibling competes: crops of whole photographs (issue 15).

    .venv/bin/python -m bench.copy_crops

bench/copy_verify.py's set has ~125 overlapping originals per photograph, so its scorer and
threshold are shaped by siblings (which a copy's right answer must beat). A gallery whose
pictures are all different asks something else of the same scorer: that a plain crop of one
is called a copy. Here the sample photographs of tests/test_verified_copy_search.py are
indexed whole (copy and keypoints features, as an indexer fills them) and each is asked for
by CROPS random crops (55-95 % of each side, anywhere; seed 5), through the product's own
verified search (consumers/indexer/copy_verification.py). Printed: how often the first
answer is the photograph, how often it is with a `copy` verdict (within the shipped
threshold), and the search time.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import cv2
import faiss
import numpy as np

from consumers.features.catalog import COPY, KEYPOINTS
from consumers.features.decode import decode_image
from consumers.indexer.copy_verification import CopyVerifier
from index_store.copy_scorer import CopyScorer
from index_store.engines.factory import EngineFactory
from index_store.feature_index import FeatureIndex
from index_store.lmdb_store import FeatureStore, ImageRecord, Upsert
from lookalike.samples import jpeg, photo

GALLERY = ("astronaut", "coffee", "rocket", "chelsea", "camera", "brick", "clock")
CROPS = 10  # per photograph
SEED = 5


def crop_boxes(count: int, seed: int) -> list[tuple[float, float, float, float]]:
    """Random crops as shares of a picture's sides: 55-95 % of each, anywhere."""
    rng = np.random.default_rng(seed)
    boxes = []
    for _ in range(count):
        fw, fh = rng.uniform(0.55, 0.95, 2)
        x, y = rng.uniform(0, 1 - fw), rng.uniform(0, 1 - fh)
        boxes.append((float(x), float(y), float(x + fw), float(y + fh)))
    return boxes


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--crops", type=int, default=CROPS, help="crops per photograph")
    args = parser.parse_args()
    faiss.omp_set_num_threads(1)
    cv2.setNumThreads(1)
    scorer = CopyScorer.load()
    factory = EngineFactory("exact")
    with tempfile.TemporaryDirectory() as tmp:
        store = FeatureStore(Path(tmp))
        indexes = {}
        for spec in (COPY, KEYPOINTS):
            index = FeatureIndex(
                store, spec.index_name, factory.make(spec.metric, spec.dim, spec.codes_per_item)
            )
            vectors = spec.describe_batch([photo(name) for name in GALLERY])
            records = [ImageRecord(bucket="b", key=name) for name in GALLERY]
            index.apply(
                [Upsert(n, v, r) for n, v, r in zip(GALLERY, vectors, records, strict=True)],
                {"bench/0": 1},
            )
            indexes[spec.name] = index
        verifier = CopyVerifier(indexes[KEYPOINTS.name], indexes[COPY.name], scorer)
        first = copies = 0
        took: list[float] = []
        boxes = crop_boxes(args.crops, SEED)
        for name in GALLERY:
            img = photo(name)
            w, h = img.size
            for x0, y0, x1, y1 in boxes:
                crop = img.crop((round(x0 * w), round(y0 * h), round(x1 * w), round(y1 * h)))
                queries = KEYPOINTS.query_vectors(decode_image(jpeg(crop), max_pixels=10**8))
                t0 = time.perf_counter()
                hits = verifier.search(queries, 3)
                took.append(1000 * (time.perf_counter() - t0))
                found = bool(hits) and hits[0][0] == name
                first += found
                copies += found and hits[0][1] <= verifier.max_distance
        store.close()
    asked = len(GALLERY) * len(boxes)
    print(f"\n## Crops of whole photographs ({len(GALLERY)} indexed, {asked} crops)\n")
    print("| first answer right | `copy` verdict, right | threshold | search p50 ms |")
    print("| --- | --- | --- | --- |")
    print(
        f"| {first} of {asked} | {copies} of {asked} | {scorer.max_distance:.3g} "
        f"| {np.median(took):.1f} |"
    )


if __name__ == "__main__":
    main()
