"""Fused search (`feature="all"`): which fusion rule, measured through the product's own
query engine (consumers/indexer/query.py + fusion.py) on two sets.

- copies: bench/copy_small_set.py's set (60 originals, one copy per transform, seed 0):
  recall@1, the copy's original ranked first among the 60;
- look-alikes: the same 60 originals are 3 overlapping crops of 20 photographs; a query by id
  of each original should rank another crop of the same photograph first (precision@1);
  the verdict of that first hit is counted too.
Each rule runs over the same in-memory indexes (phash, colour, copy, and CLIP with random
weights unless --no-clip: its distances mean little, so it is reported both ways).

    .venv/bin/python -m bench.fusion            # CLIP with random weights included
    .venv/bin/python -m bench.fusion --no-clip
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections import Counter
from pathlib import Path

from bench.copy_small_set import build_set
from consumers.features.catalog import build_features
from consumers.features.decode import decode_image
from consumers.indexer.query import QueryEngine
from index_store.engines.factory import EngineFactory
from index_store.feature_index import FeatureIndex
from index_store.lmdb_store import FeatureStore, ImageRecord, Upsert
from schemas.search import SearchRequest
from schemas.settings import Settings

RULES = ("calibrated", "rrf")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--no-clip", action="store_true")
    args = parser.parse_args()
    names = ["phash", "colour", "copy"] + ([] if args.no_clip else ["clip"])
    settings = Settings(_env_file=None, clip_model="ViT-B-32", device="cpu")
    specs = {s.name: s for s in build_features(settings, names)}
    data = build_set(seed=0)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        store = FeatureStore(Path(tmp))
        indexes = {}
        images = [decode_image(g, max_pixels=settings.max_image_pixels) for g in data.gallery]
        for name, spec in specs.items():
            engine = EngineFactory("exact").make(spec.metric, spec.dim, spec.codes_per_item)
            index = FeatureIndex(store, spec.index_name, engine)
            vectors = spec.describe_batch(images)
            index.apply(
                [
                    Upsert(f"b/{n}", v, ImageRecord(bucket="b", key=n, etag=f"e{i}"))
                    for i, (n, v) in enumerate(zip(data.names, vectors, strict=True))
                ],
                {},
            )
            indexes[name] = index
        print(f"\n## Fused search ({os.cpu_count()} CPUs; features {', '.join(names)})\n")
        print("| rule | copies recall@1 | look-alikes precision@1 | look-alikes' first verdicts |")
        print("| --- | --- | --- | --- |")
        for rule in RULES:
            answers = QueryEngine(settings.model_copy(update={"fusion_rule": rule}), specs, indexes)
            found = 0
            for query, source in zip(data.queries, data.source, strict=True):
                reply = answers.answer(SearchRequest(image=query, k=1))
                found += bool(reply.hits) and reply.hits[0].image_id == f"b/{data.names[source]}"
            same_photo, verdicts = 0, Counter[str]()
            for name in data.names:
                reply = answers.answer(SearchRequest(image_id=f"b/{name}", k=1))
                first = reply.hits[0]
                same_photo += first.image_id.split("#")[0] == f"b/{name.split('#')[0]}"
                verdicts[first.verdict.value if first.verdict else "-"] += 1
            shown = ", ".join(f"{v} {n}" for v, n in verdicts.most_common())
            print(
                f"| {rule} | {found / len(data.queries):.3f} | "
                f"{same_photo / len(data.names):.3f} | {shown} |"
            )
        store.close()
    took = time.perf_counter() - started
    print(f"\n{len(data.queries)} copies, {len(data.names)} originals; {took:.0f}s")


if __name__ == "__main__":
    main()
