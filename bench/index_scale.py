"""Index scale: approximate float-vector indexes, ChromaDB and Hamming search at scale.

    # everything at 100k vectors (ANN engines + ChromaDB) and 10M Hamming codes
    .venv/bin/python -m bench.index_scale
    # the real size (BENCHMARKS.md has the exact commands run)
    .venv/bin/python -m bench.index_scale --n 1000000 \
        --engines hnsw,faiss-hnsw-sq8+rerank,faiss-hnsw-sq8+pca+rerank --rebuild \
        --parts ann,chroma,hamming --hamming-n 10000000 --workdir /tmp/scale-work
    # Hamming only
    .venv/bin/python -m bench.index_scale --parts hamming --hamming-n 10000000
    # another graph build (degree, build beam) for the same engine
    .venv/bin/python -m bench.index_scale --n 1000000 --engines faiss-hnsw-sq8+pca+rerank \
        --parts ann --ef-construction 400 --workdir /tmp/scale-work

Data (synthetic, like the project's notes): 48 latent dimensions with a decaying spectrum
(std of latent i ~ i^-decay) projected to 512 by a fixed random matrix, plus isotropic noise,
unit-normalised. 1,000 held-out queries from the same distribution; ground truth is the exact
top-10 by inner product (faiss IndexFlatIP, computed chunk by chunk). Ids look like image keys.

Every engine runs in a fresh subprocess, so its resident-memory delta (RSS after building
minus RSS before, from /proc/self/statm; 'anon' leaves out file-backed pages such as LMDB's
memory map) is not polluted by the others or by the data set. Engines are built by the
product's factory (index_store/engines/factory.py). Inserts: bulk `upsert_many` in batches on
2 threads, then the last `--single-upserts` vectors through the one-at-a-time `upsert` of the
Engine protocol. Queries: one at a time through `search()`, on one thread, k=10; ef (hnswlib)
/ efSearch (faiss) is raised along a ladder until recall@10 reaches `--target-recall`, and the
latencies are from a second pass at that ef. Checkpoint: a snapshot written as the indexer
writes it (index_store/snapshots.py: the engine's files, fsynced, renamed into place), its
size and time; load-to-serving: a fresh process opening the snapshot with the configured
engine and answering its first query. '+rerank' engines re-rank with exact vectors read from
an LMDB FeatureStore (written once per data set), as the indexer would; '+pca' graphs hold PCA
projections of the product's default size (LOOKALIKE_VECTOR_REDUCE_DIM).

ChromaDB: embedded `PersistentClient`, cosine space, the same vectors and queries, batches of
its maximum batch size; its ef_search is raised along the same ladder (from its default 100),
reopening the collection after each change (chromadb 1.5.9 searches with the old value until then).
Restart = a fresh process opening the client and collection and answering one query.

Hamming: `--hamming-n` random 576-bit codes (72 bytes) in the project's HammingEngine (exact,
faiss's popcount kernel) and in faiss IndexBinaryFlat; query p50/p99 over random codes.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from functools import cache, partial
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from schemas.settings import Settings

DIM = 512
LATENT = 48
DECAY = 0.3
GENERATE_BATCH = 100_000
K = 10
INDEX_NAME = "clip"
ENGINES = (
    "default",
    "exact",
    "hnsw",
    "faiss-hnsw",
    "faiss-hnsw-sq8",
    "faiss-hnsw-sq8+rerank",
    "faiss-hnsw-sq8+pca+rerank",
)
# 'default': what the product builds with its default settings, searched with the effort it
# chooses itself (index_store/recall.py); '+pca': the graph holds 64-d PCA projections (the
# product's default before it chose the size from the data).
PCA_DIM = 64
EF_LADDER = (16, 24, 32, 48, 64, 96, 128, 160, 192, 256, 320, 384, 512, 768, 1024)
PAGE = os.sysconf("SC_PAGE_SIZE")
MB = 1024 * 1024

Result = dict[str, Any]


# -- measuring --


def rss() -> tuple[int, int]:
    """(resident bytes, resident anonymous bytes) of this process."""
    with open("/proc/self/statm") as f:
        fields = f.read().split()
    resident, shared = int(fields[1]), int(fields[2])
    return resident * PAGE, (resident - shared) * PAGE


def peak_rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def settled_rss() -> tuple[int, int]:
    gc.collect()
    return rss()


def pct(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def recall_at_k(found: Sequence[Sequence[str]], truth: NDArray[np.int64]) -> float:
    hits = 0
    for got, want in zip(found, truth, strict=True):
        hits += len(set(got) & {image_id(int(i)) for i in want[:K]})
    return hits / (K * len(truth))


class Progress:
    """Prints 'label done/total (rate/s, eta)' to stderr every few percent or 30 s."""

    def __init__(self, label: str, total: int) -> None:
        self.label, self.total = label, total
        self.start = self.last = time.perf_counter()
        self.next_pct = 5.0

    def update(self, done: int) -> None:
        now = time.perf_counter()
        pct_done = 100.0 * done / max(self.total, 1)
        if pct_done < self.next_pct and now - self.last < 30 and done < self.total:
            return
        self.next_pct = pct_done + 5.0
        self.last = now
        rate = done / max(now - self.start, 1e-9)
        eta = (self.total - done) / rate if rate > 0 else float("inf")
        print(
            f"  [{self.label}] {done:,}/{self.total:,} ({pct_done:.0f}%) "
            f"{rate:,.0f}/s, eta {eta:.0f}s",
            file=sys.stderr,
            flush=True,
        )


# -- data --


def image_id(i: int) -> str:
    return f"photos/{i:08d}.jpg"


class DataSet:
    """Vectors on disk (raw float32), queries and ground truth; generated once per parameters."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.meta: dict[str, Any] = json.loads((root / "meta.json").read_text())
        self.n: int = self.meta["n"]

    @property
    def base_path(self) -> Path:
        return self.root / "base.f32"

    def queries(self) -> NDArray[np.float32]:
        q: NDArray[np.float32] = np.load(self.root / "queries.npy")
        return q

    def truth(self) -> NDArray[np.int64]:
        t: NDArray[np.int64] = np.load(self.root / "truth.npy")
        return t

    def chunks(
        self, batch: int, stop: int | None = None, start: int = 0
    ) -> Iterator[tuple[int, NDArray[np.float32]]]:
        stop = self.n if stop is None else stop
        with open(self.base_path, "rb") as f:
            f.seek(start * DIM * 4)
            for first in range(start, stop, batch):
                rows = min(batch, stop - first)
                chunk = np.fromfile(f, dtype=np.float32, count=rows * DIM).reshape(rows, DIM)
                yield first, chunk


def generator(
    seed: int, latent_dims: int, decay: float, noise: float
) -> Callable[[int, int], NDArray[np.float32]]:
    rng = np.random.default_rng(seed)
    projection = (rng.standard_normal((latent_dims, DIM)) / np.sqrt(latent_dims)).astype(np.float32)
    scale = np.arange(1, latent_dims + 1, dtype=np.float64) ** -decay
    scale = (scale * np.sqrt(latent_dims / np.sum(scale**2))).astype(np.float32)

    def make(stream: int, rows: int) -> NDArray[np.float32]:
        r = np.random.default_rng([seed, stream])
        latent = r.standard_normal((rows, latent_dims), dtype=np.float32) * scale
        x: NDArray[np.float32] = latent @ projection
        x += noise * r.standard_normal((rows, DIM), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        return x

    return make


def data_meta(args: argparse.Namespace) -> dict[str, Any]:
    """What a data set is made of (its folder is reused while this stays the same)."""
    meta: dict[str, Any] = {"n": args.n, "queries": args.queries, "seed": args.seed, "dim": DIM}
    if args.data_set == "synthetic":
        meta.update(latent=args.latent, decay=args.decay, noise=args.noise)
    else:
        meta.update(source=args.data_set)
    return meta


def describe(meta: dict[str, Any]) -> str:
    if "source" in meta:
        return f"{meta['source']} embeddings of generated pictures (bench/embedding_sets.py)"
    return f"synthetic: latent {meta['latent']} dims, decay {meta['decay']}, noise {meta['noise']}"


def data_dir(work: Path, meta: dict[str, Any]) -> Path:
    if "source" in meta:
        return work / f"data-{meta['source']}-{meta['n']}-{meta['seed']}"
    suffix = "" if meta["latent"] == LATENT else f"-latent{meta['latent']}"
    suffix += "" if meta["decay"] == DECAY else f"-decay{meta['decay']}"
    return work / f"data-{meta['n']}-{meta['seed']}{suffix}"


def prepare_data(root: Path, meta: dict[str, Any]) -> None:
    import faiss

    if (root / "meta.json").exists() and json.loads((root / "meta.json").read_text()) == meta:
        print(f"data set: reusing {root}", file=sys.stderr)
        return
    root.mkdir(parents=True, exist_ok=True)
    n, queries = meta["n"], meta["queries"]
    make = vector_source(meta)
    q = make(0, queries)
    batch = GENERATE_BATCH
    best_sim = np.full((queries, K), -np.inf, dtype=np.float32)
    best_ids = np.full((queries, K), -1, dtype=np.int64)
    progress = Progress("generate + ground truth", n)
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    with open(root / "base.f32", "wb") as f:
        for chunk_no, first in enumerate(range(0, n, batch)):
            rows = min(batch, n - first)
            x = make(1 + chunk_no, rows)
            x.tofile(f)
            flat = faiss.IndexFlatIP(DIM)
            flat.add(x)
            sim, ids = flat.search(q, K)
            sims = np.concatenate([best_sim, sim], axis=1)
            idx = np.concatenate([best_ids, ids + first], axis=1)
            order = np.argsort(-sims, axis=1, kind="stable")[:, :K]
            best_sim = np.take_along_axis(sims, order, axis=1)
            best_ids = np.take_along_axis(idx, order, axis=1)
            progress.update(first + rows)
    np.save(root / "queries.npy", q)
    np.save(root / "truth.npy", best_ids)
    (root / "meta.json").write_text(json.dumps(meta))


def vector_source(meta: dict[str, Any]) -> Callable[[int, int], NDArray[np.float32]]:
    """`make(stream, rows)`: stream 0 the queries, streams 1.. the base vectors in order."""
    if "source" not in meta:
        return generator(meta["seed"], meta["latent"], meta["decay"], meta["noise"])
    from bench.embedding_sets import embed_set

    n, queries = meta["n"], meta["queries"]
    vectors = embed_set(meta["source"], n + queries, meta["seed"])
    base = vectors[:n]
    given = {0: vectors[n:]}  # held out: the last pictures made are the queries
    for stream, first in enumerate(range(0, n, GENERATE_BATCH), start=1):
        given[stream] = base[first : first + GENERATE_BATCH]

    def make(stream: int, rows: int) -> NDArray[np.float32]:
        out = given[stream]
        assert len(out) == rows
        return out

    return make


def prepare_lmdb(data: DataSet, path: Path) -> None:
    """The store of record the '+rerank' engines read exact vectors from."""
    from index_store.lmdb_store import FeatureStore, ImageRecord, Upsert

    done = path / "complete.json"
    if done.exists() and json.loads(done.read_text()) == data.meta:
        print(f"LMDB store: reusing {path}", file=sys.stderr)
        return
    shutil.rmtree(path, ignore_errors=True)
    store = FeatureStore(path)
    progress = Progress("LMDB store of record", data.n)
    for first, chunk in data.chunks(20_000):
        changes = [
            Upsert(
                image_id(first + row),
                chunk[row].tobytes(),
                ImageRecord(bucket="photos", key=f"{first + row:08d}.jpg"),
            )
            for row in range(len(chunk))
        ]
        store.apply(INDEX_NAME, changes, {})
        progress.update(first + len(chunk))
    store.close()
    done.write_text(json.dumps(data.meta))


# -- ANN engines (worker side) --


def reranks(engine: str) -> bool:
    """Whether the engine reads exact vectors from the store of record."""
    return engine.endswith("+rerank") or engine == "default"


@cache
def open_store(work: Path) -> Any:
    """The store of record, opened once per process (LMDB allows one handle per process)."""
    from index_store.lmdb_store import FeatureStore

    return FeatureStore(work / "lmdb", readonly=True)


def open_fetch(engine: str, work: Path) -> Callable[[Sequence[str]], list[bytes | None]] | None:
    if not reranks(engine):
        return None
    return partial(open_store(work).vectors_of, INDEX_NAME)


def new_engine(
    engine: str,
    fetch: Callable[[Sequence[str]], list[bytes | None]] | None,
    args: argparse.Namespace,
) -> Any:
    """The engine as the product's factory builds it (EngineFactory.make); `--m` and
    `--ef-construction` replace the engine's default graph settings where given."""
    from dataclasses import replace

    from index_store.engines.factory import (
        FAISS_GRAPH,
        FLOAT_ENGINES,
        HNSWLIB_GRAPH,
        EngineFactory,
    )
    from index_store.metric import Metric

    if engine == "default":
        product = EngineFactory.from_settings(Settings(_env_file=None))
        product = replace(
            product,
            train_size=args.train_size or product.train_size,
            hold_out_every=args.hold_out_every or product.hold_out_every,
        )
        return product.make(Metric.COSINE, DIM, exact_vectors=fetch)
    kind = engine.removesuffix("+rerank")
    reduce_dim = PCA_DIM if kind.endswith("+pca") else 0
    name = next(n for n in FLOAT_ENGINES if n == kind.split("+")[0])
    graph = HNSWLIB_GRAPH if name == "hnsw" else FAISS_GRAPH
    graph = replace(
        graph, m=args.m or graph.m, ef_construction=args.ef_construction or graph.ef_construction
    )
    factory = EngineFactory(name, reduce_dim, graph=graph, hold_out_every=0)
    if args.train_size:
        factory = replace(factory, train_size=args.train_size)
    return factory.make(Metric.COSINE, DIM, exact_vectors=fetch)


def set_effort(engine: Any, ef: int, depth: int = 0) -> None:
    """Search with beam `ef` (and re-rank depth `depth`, 0: the engine's)."""
    from index_store.engines.engine import Effort

    current = engine.effort
    if current is not None:
        engine.effort = Effort(ef, depth or current.depth)


def product_effort(index: Any, work: Path) -> Result:
    """The effort the indexer would choose (RecallKeeper, probing the store of record)."""
    from index_store.feature_index import FeatureIndex
    from index_store.recall import RecallKeeper

    store = open_store(work)
    t0 = time.perf_counter()
    filled = FeatureIndex(store, INDEX_NAME, index)  # the engine as the indexer holds it
    report = RecallKeeper(filled, store, target=Settings().recall_target).check()
    assert report is not None
    chosen: Result = {
        "ef": report.effort.ef,
        "depth": report.effort.depth,
        "probe_recall": report.recall,
        "tune_s": time.perf_counter() - t0,
    }
    graph = index
    while hasattr(graph, "inner"):
        graph = graph.inner
    chosen["projected_to"] = getattr(graph, "projected_to", None)
    print(f"  [default] chose {chosen}", file=sys.stderr, flush=True)
    return chosen


def run_queries(index: Any, queries: NDArray[np.float32]) -> tuple[list[float], list[list[str]]]:
    raw = [q.tobytes() for q in queries]
    latencies: list[float] = []
    found: list[list[str]] = []
    for q in raw:
        t = time.perf_counter()
        got = index.search([q], K)
        latencies.append(time.perf_counter() - t)
        found.append([i for i, _ in got])
    return latencies, found


def tune(
    index: Any, engine: str, queries: NDArray[np.float32], truth: NDArray[np.int64], target: float
) -> Result:
    """Raise ef until recall@10 >= target; latencies from a second pass at that ef. The
    'default' engine searches with the effort the product chose instead (product_effort)."""
    ladder: list[dict[str, float]] = []
    if engine in ("exact", "default"):
        chosen: int | None = None
    else:
        chosen = EF_LADDER[-1]
        for ef in EF_LADDER:
            set_effort(index, ef)
            lat, found = run_queries(index, queries)
            r = recall_at_k(found, truth)
            ladder.append({"ef": ef, "recall": r, "p50_ms": pct(lat, 50) * 1e3})
            print(f"  [{engine}] ef={ef} recall@10={r:.4f}", file=sys.stderr, flush=True)
            if r >= target:
                chosen = ef
                break
        set_effort(index, chosen)
    lat, found = run_queries(index, queries)
    return {
        "ef": chosen,
        "recall": recall_at_k(found, truth),
        "p50_ms": pct(lat, 50) * 1e3,
        "p99_ms": pct(lat, 99) * 1e3,
        "ladder": ladder,
    }


def worker_build(args: argparse.Namespace) -> Result:
    import faiss

    from index_store.snapshots import write

    data, work, engine = DataSet(Path(args.data)), Path(args.work), args.engine
    queries, truth = data.queries(), data.truth()
    fetch = open_fetch(engine, work)
    base_rss, base_anon = settled_rss()
    base_peak = peak_rss()
    index = new_engine(engine, fetch, args)
    faiss.omp_set_num_threads(2)
    single = min(args.single_upserts, data.n // 10)
    bulk_n = data.n - single
    progress = Progress(f"{engine} insert", data.n)
    t0 = time.perf_counter()
    for first, chunk in data.chunks(args.batch, stop=bulk_n):
        ids = [image_id(first + r) for r in range(len(chunk))]
        index.upsert_many(ids, chunk.data)
        progress.update(first + len(chunk))
    bulk_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for first, chunk in data.chunks(single, start=bulk_n):
        for r in range(len(chunk)):
            index.upsert(image_id(first + r), chunk[r].tobytes())
    single_s = time.perf_counter() - t0
    progress.update(data.n)
    built_rss, built_anon = settled_rss()
    result: Result = {
        "engine": engine,
        "n": data.n,
        "bulk_rate": bulk_n / bulk_s,
        "single_rate": single / single_s if single else float("nan"),
        "build_s": bulk_s + single_s,
        "rss_mb": (built_rss - base_rss) / MB,
        "anon_mb": (built_anon - base_anon) / MB,
        "peak_mb": (peak_rss() - max(base_peak, base_rss)) / MB,
    }
    faiss.omp_set_num_threads(1)
    if engine == "default":
        result.update(product_effort(index, work))
    tuned = tune(index, engine, queries, truth, args.target_recall)
    result.update({k: v for k, v in tuned.items() if v is not None or k not in result})
    served_rss, served_anon = settled_rss()
    result["served_rss_mb"] = (served_rss - base_rss) / MB
    result["served_anon_mb"] = (served_anon - base_anon) / MB
    ckpt = work / "checkpoints" / engine
    shutil.rmtree(ckpt, ignore_errors=True)
    t0 = time.perf_counter()  # what FeatureIndex.checkpoint writes: files, fsync, rename
    snapshot = write(ckpt, data.n, index.save, {"format": index.snapshot_format})
    result["save_s"] = time.perf_counter() - t0
    result["ckpt_mb"] = sum(p.stat().st_size for p in snapshot.path.iterdir()) / MB
    result["checkpoint"] = str(ckpt)
    return result


def worker_load(args: argparse.Namespace) -> Result:
    import faiss

    from index_store.snapshots import latest

    data, work, engine = DataSet(Path(args.data)), Path(args.work), args.engine
    queries, truth = data.queries(), data.truth()
    configured = new_engine(engine, open_fetch(engine, work), args)
    faiss.omp_set_num_threads(1)
    q0 = queries[0].tobytes()

    def open_and_answer() -> Any:
        snapshot = latest(Path(args.checkpoint))  # as FeatureIndex.load finds and opens it
        assert snapshot is not None and snapshot.manifest["format"] == configured.snapshot_format
        index = configured.restored(snapshot.path)
        if args.ef:  # a snapshot brings data, not the beam: search at the build run's
            set_effort(index, args.ef, args.depth)
        index.search([q0], K)
        return index

    index, restart = timed_restart(open_and_answer)
    _, found = run_queries(index, queries)
    return {**restart, "load_recall": recall_at_k(found, truth), "load_len": len(index)}


def timed_restart(open_and_answer: Callable[[], Any]) -> tuple[Any, Result]:
    """Restart-to-serving: time and resident memory of opening an index and answering once."""
    base_rss, base_anon = settled_rss()
    t0 = time.perf_counter()
    opened = open_and_answer()
    seconds = time.perf_counter() - t0
    rss, anon = settled_rss()
    return opened, {
        "load_s": seconds,
        "load_rss_mb": (rss - base_rss) / MB,
        "load_anon_mb": (anon - base_anon) / MB,
    }


def worker_rebuild(args: argparse.Namespace) -> Result:
    """`lookalike rebuild`'s path: a fresh engine filled from the LMDB store of record."""
    import faiss

    from index_store.feature_index import FeatureIndex
    from index_store.lmdb_store import FeatureStore

    data, work, engine = DataSet(Path(args.data)), Path(args.work), args.engine
    store = FeatureStore(work / "lmdb", readonly=True)
    index = FeatureIndex(
        store,
        INDEX_NAME,
        new_engine(engine, partial(store.vectors_of, INDEX_NAME), args),
    )
    faiss.omp_set_num_threads(2)
    progress = Progress(f"{engine} rebuild from store", data.n)
    t0 = time.perf_counter()
    count = index.rebuild(store.vectors(INDEX_NAME), progress.update)
    seconds = time.perf_counter() - t0
    faiss.omp_set_num_threads(1)
    if args.ef:  # the beam width the build run tuned
        set_effort(index.engine, args.ef, args.depth)
    found = [[n.image_id for n in index.search([q.tobytes()], K)] for q in data.queries()[:200]]
    return {
        "rebuild_s": seconds,
        "rebuild_n": count,
        "rebuild_recall_200q": recall_at_k(found, data.truth()[:200]),
    }


# -- ChromaDB (worker side) --


def chroma_client(path: Path) -> Any:
    import chromadb
    from chromadb.config import Settings

    return chromadb.PersistentClient(path=str(path), settings=Settings(anonymized_telemetry=False))


def chroma_queries(
    collection: Any, queries: NDArray[np.float32]
) -> tuple[list[float], list[list[str]]]:
    latencies: list[float] = []
    found: list[list[str]] = []
    for q in queries:
        t = time.perf_counter()
        got = collection.query(query_embeddings=q[None, :], n_results=K, include=["distances"])
        latencies.append(time.perf_counter() - t)
        found.append(list(got["ids"][0]))
    return latencies, found


def worker_chroma_build(args: argparse.Namespace) -> Result:
    import chromadb

    data, work = DataSet(Path(args.data)), Path(args.work)
    n = min(args.chroma_n or data.n, data.n)
    queries, truth = data.queries(), chroma_truth(data, n)
    path = work / "chroma"
    shutil.rmtree(path, ignore_errors=True)
    base_rss, base_anon = settled_rss()
    base_peak = peak_rss()
    client = chroma_client(path)
    collection = client.create_collection("bench", configuration={"hnsw": {"space": "cosine"}})
    batch = min(args.batch, int(client.get_max_batch_size()))
    progress = Progress("chroma insert", n)
    t0 = time.perf_counter()
    for first, chunk in data.chunks(batch, stop=n):
        collection.add(ids=[image_id(first + r) for r in range(len(chunk))], embeddings=chunk)
        progress.update(first + len(chunk))
    insert_s = time.perf_counter() - t0
    built_rss, built_anon = settled_rss()
    result: Result = {
        "engine": f"chromadb {chromadb.__version__}",
        "n": n,
        "bulk_rate": n / insert_s,
        "rss_mb": (built_rss - base_rss) / MB,
        "anon_mb": (built_anon - base_anon) / MB,
        "peak_mb": (peak_rss() - max(base_peak, base_rss)) / MB,
        "count": collection.count(),
    }
    lat, found = chroma_queries(collection, queries)
    result["default_ef_recall"] = recall_at_k(found, truth)
    chosen = 100
    ladder = [{"ef": 100, "recall": result["default_ef_recall"], "p50_ms": pct(lat, 50) * 1e3}]
    for ef in (e for e in EF_LADDER if e > 100):
        if ladder[-1]["recall"] >= args.target_recall:
            break
        collection.modify(configuration={"hnsw": {"ef_search": ef}})
        # chromadb 1.5.9 applies a modified ef_search only to a reopened collection: measured,
        # recall did not move until the client's cache was cleared and the collection reopened.
        client.clear_system_cache()
        client = chroma_client(path)
        collection = client.get_collection("bench")
        lat, found = chroma_queries(collection, queries)
        chosen = ef
        ladder.append({"ef": ef, "recall": recall_at_k(found, truth), "p50_ms": pct(lat, 50) * 1e3})
        print(f"  [chroma] ef={ef} recall@10={ladder[-1]['recall']:.4f}", file=sys.stderr)
    lat, found = chroma_queries(collection, queries)
    served_rss, served_anon = settled_rss()
    result.update(
        {
            "ef": chosen,
            "recall": recall_at_k(found, truth),
            "p50_ms": pct(lat, 50) * 1e3,
            "p99_ms": pct(lat, 99) * 1e3,
            "ladder": ladder,
            "served_rss_mb": (served_rss - base_rss) / MB,
            "served_anon_mb": (served_anon - base_anon) / MB,
            "disk_mb": sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / MB,
        }
    )
    return result


def chroma_truth(data: DataSet, n: int) -> NDArray[np.int64]:
    """Ground truth over the first n vectors (ChromaDB may run on a prefix of the data)."""
    if n == data.n:
        return data.truth()
    import faiss

    flat = faiss.IndexFlatIP(DIM)
    for _, chunk in data.chunks(100_000, stop=n):
        flat.add(chunk)
    _, ids = flat.search(data.queries(), K)
    out: NDArray[np.int64] = ids.astype(np.int64)
    return out


def worker_chroma_reopen(args: argparse.Namespace) -> Result:
    data, work = DataSet(Path(args.data)), Path(args.work)
    n = min(args.chroma_n or data.n, data.n)
    queries, truth = data.queries(), chroma_truth(data, n)

    def open_and_answer() -> Any:
        collection = chroma_client(work / "chroma").get_collection("bench")
        collection.query(query_embeddings=queries[:1], n_results=K)
        return collection

    collection, restart = timed_restart(open_and_answer)
    _, found = chroma_queries(collection, queries)
    return {
        **restart,
        "load_recall": recall_at_k(found, truth),
        "load_ef": collection.configuration["hnsw"]["ef_search"],
    }


# -- Hamming (worker side) --


def worker_hamming(args: argparse.Namespace) -> Result:
    import faiss

    from index_store.engines.hamming import HammingEngine

    n, code_bytes = args.hamming_n, 72
    rng = np.random.default_rng(args.seed)
    base_rss, _ = settled_rss()
    index = HammingEngine(code_bytes)
    binary = faiss.IndexBinaryFlat(code_bytes * 8)
    progress = Progress("hamming insert", n)
    insert_s = 0.0
    for first in range(0, n, 200_000):
        codes = rng.integers(0, 256, (min(200_000, n - first), code_bytes), dtype=np.uint8)
        t1 = time.perf_counter()
        for r in range(len(codes)):
            index.upsert(image_id(first + r), codes[r].tobytes())
        insert_s += time.perf_counter() - t1
        binary.add(codes)
        progress.update(first + len(codes))
    ours_rss, _ = settled_rss()
    queries = rng.integers(0, 256, (args.hamming_queries, code_bytes), dtype=np.uint8)
    result: Result = {
        "n": n,
        "insert_rate": n / insert_s,
        "rss_mb": (ours_rss - base_rss) / MB,
        "rows": [],
    }

    def timed(label: str, threads: int, search: Callable[[int], list[int]]) -> list[list[int]]:
        faiss.omp_set_num_threads(threads)
        search(0)  # warm-up
        lat: list[float] = []
        dists: list[list[int]] = []
        for i in range(len(queries)):
            t = time.perf_counter()
            dists.append(search(i))
            lat.append(time.perf_counter() - t)
            if i % 10 == 9:
                print(f"  [hamming] {label}: {i + 1} queries", file=sys.stderr, flush=True)
        result["rows"].append(
            {"engine": label, "p50_ms": pct(lat, 50) * 1e3, "p99_ms": pct(lat, 99) * 1e3}
        )
        return dists

    def ours(i: int) -> list[int]:
        return [int(d) for _, d in index.search([queries[i].tobytes()], K)]

    def ours_pair(i: int) -> list[int]:  # an image and its mirror: two codes per request
        pair = [queries[i].tobytes(), queries[(i + 1) % len(queries)].tobytes()]
        return [int(d) for _, d in index.search(pair, K)]

    def faiss_flat(i: int) -> list[int]:
        d, _ = binary.search(queries[i : i + 1], K)
        return [int(x) for x in d[0]]

    a = timed("HammingEngine, 1 code/query, 1 thread", 1, ours)
    timed("HammingEngine, 2 codes/query (image + mirror), 1 thread", 1, ours_pair)
    timed("HammingEngine, 2 codes/query (image + mirror), 2 threads", 2, ours_pair)
    b = timed("faiss IndexBinaryFlat, 1 thread", 1, faiss_flat)
    timed("faiss IndexBinaryFlat, 2 threads", 2, faiss_flat)
    result["same_distances"] = a == b
    return result


# -- parent: orchestration and tables --


def run_worker(args: argparse.Namespace, role: str, extra: list[str]) -> Result:
    out = Path(args.work) / f"result-{role}-{time.time_ns()}.json"
    cmd = [
        sys.executable,
        "-m",
        "bench.index_scale",
        "--worker",
        role,
        "--result",
        str(out),
        "--data",
        str(args.data),
        "--work",
        str(args.work),
        "--batch",
        str(args.batch),
        "--single-upserts",
        str(args.single_upserts),
        "--target-recall",
        str(args.target_recall),
        "--chroma-n",
        str(args.chroma_n or 0),
        "--hamming-n",
        str(args.hamming_n),
        "--hamming-queries",
        str(args.hamming_queries),
        "--seed",
        str(args.seed),
        "--m",
        str(args.m),
        "--ef-construction",
        str(args.ef_construction),
        "--train-size",
        str(args.train_size),
        "--hold-out-every",
        str(args.hold_out_every),
        *extra,
    ]
    started = time.perf_counter()
    proc = subprocess.run(cmd, check=False)
    if proc.returncode != 0:
        print(f"worker {role} {extra} failed with exit code {proc.returncode}", file=sys.stderr)
        return {"failed": proc.returncode}
    result: Result = json.loads(out.read_text())
    out.unlink()
    print(f"  {role} {' '.join(extra)}: {time.perf_counter() - started:.0f}s", file=sys.stderr)
    return result


def fmt(value: Any, spec: str = ",.0f") -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float) and not np.isfinite(value):
        return "n/a"
    return format(value, spec) if isinstance(value, int | float) else str(value)


def effort_note(r: Result) -> str:
    """ef, with the re-rank depth and projection where the product chose them."""
    note = fmt(r["ef"], "d")
    if r.get("depth"):
        note += f" (depth {r['depth']}, graph {r.get('projected_to') or DIM}-d)"
    return note


def print_ann_tables(rows: list[Result]) -> None:
    print("\n### Build and query (k=10, queries single-thread, one at a time)\n")
    print(
        "| engine | n | insert/s bulk (2 thr) | insert/s single upsert | ef | recall@10 "
        "| p50 ms | p99 ms | RSS Δ MB (anon) | RSS Δ after queries MB (anon) | peak Δ MB |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        if "failed" in r:
            print(f"| {r['engine']} | failed (exit {r['failed']}) |" + " |" * 9)
            continue
        print(
            f"| {r['engine']} | {r['n']:,} | {fmt(r['bulk_rate'])} | {fmt(r.get('single_rate'))} "
            f"| {effort_note(r)} | {r['recall']:.4f} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} "
            f"| {r['rss_mb']:,.0f} ({r['anon_mb']:,.0f}) "
            f"| {r['served_rss_mb']:,.0f} ({r['served_anon_mb']:,.0f}) | {r['peak_mb']:,.0f} |"
        )
    print("\n### Checkpoint and restart\n")
    print(
        "| engine | checkpoint MB | save s | load-to-serving s | RSS Δ after load MB (anon) "
        "| recall@10 after load |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        if "failed" in r or "save_s" not in r:
            print(f"| {r['engine']} | n/a | n/a | n/a | n/a | n/a |")
            continue
        load = r.get("load", {})
        if "failed" in load or not load:
            print(f"| {r['engine']} | {r['ckpt_mb']:,.0f} | {r['save_s']:.2f} | failed | | |")
            continue
        print(
            f"| {r['engine']} | {r['ckpt_mb']:,.0f} | {r['save_s']:.2f} | {load['load_s']:.2f} "
            f"| {load['load_rss_mb']:,.0f} ({load['load_anon_mb']:,.0f}) "
            f"| {load['load_recall']:.4f} |"
        )
    rebuilt = [r for r in rows if "rebuild_s" in r.get("rebuild", {})]
    if rebuilt:
        print("\n### Rebuild from the store of record (what `lookalike rebuild` runs)\n")
        print("| engine | vectors | rebuild s | vectors/s | recall@10 after (200 queries) |")
        print("| --- | --- | --- | --- | --- |")
        for r in rebuilt:
            b = r["rebuild"]
            print(
                f"| {r['engine']} | {b['rebuild_n']:,} | {b['rebuild_s']:.1f} "
                f"| {b['rebuild_n'] / b['rebuild_s']:,.0f} | {b['rebuild_recall_200q']:.4f} |"
            )
    print("\n### ef ladder (recall@10 and p50 while tuning, 1,000 queries each)\n")
    print("| engine | ef: recall@10 / p50 ms |")
    print("| --- | --- |")
    for r in rows:
        if r.get("ladder"):
            steps = ", ".join(
                f"{s['ef']:.0f}: {s['recall']:.3f} / {s['p50_ms']:.2f}" for s in r["ladder"]
            )
            print(f"| {r['engine']} | {steps} |")


def print_chroma_table(chroma: Result, ours: Result | None) -> None:
    print(f"\n### ChromaDB ({chroma['engine']}, embedded PersistentClient, cosine) vs ours\n")
    if ours is not None and ours.get("n") != chroma["n"]:
        print(f"ChromaDB ran on the first {chroma['n']:,} vectors, ours on {ours['n']:,}.\n")
    head = f"ours: {ours['engine']}" if ours else "ours"
    print(f"| metric | ChromaDB | {head} | ChromaDB / ours |")
    print("| --- | --- | --- | --- |")
    load = chroma.get("load", {})
    our_load = (ours or {}).get("load", {})
    rows: list[tuple[str, Any, Any, str]] = [
        ("vectors", chroma["n"], (ours or {}).get("n"), ",d"),
        ("insert/s (bulk)", chroma["bulk_rate"], (ours or {}).get("bulk_rate"), ",.0f"),
        ("ef_search used", chroma["ef"], (ours or {}).get("ef"), "d"),
        ("recall@10 at ChromaDB default ef (100)", chroma["default_ef_recall"], None, ".4f"),
        ("recall@10", chroma["recall"], (ours or {}).get("recall"), ".4f"),
        ("query p50 ms", chroma["p50_ms"], (ours or {}).get("p50_ms"), ".3f"),
        ("query p99 ms", chroma["p99_ms"], (ours or {}).get("p99_ms"), ".3f"),
        ("RSS Δ after build MB", chroma["rss_mb"], (ours or {}).get("rss_mb"), ",.0f"),
        (
            "RSS Δ after queries MB",
            chroma["served_rss_mb"],
            (ours or {}).get("served_rss_mb"),
            ",.0f",
        ),
        ("on disk MB", chroma["disk_mb"], (ours or {}).get("ckpt_mb"), ",.0f"),
        ("restart: open + first query s", load.get("load_s"), our_load.get("load_s"), ".2f"),
        ("RSS Δ after restart MB", load.get("load_rss_mb"), our_load.get("load_rss_mb"), ",.0f"),
        ("recall@10 after restart", load.get("load_recall"), our_load.get("load_recall"), ".4f"),
    ]
    for label, theirs, mine, spec in rows:
        ratio = ""
        if isinstance(theirs, int | float) and isinstance(mine, int | float) and mine:
            ratio = f"{theirs / mine:.2f}x"
        print(f"| {label} | {fmt(theirs, spec)} | {fmt(mine, spec)} | {ratio} |")
    if "load_ef" in load:
        print(f"\nef_search after reopening the collection: {load['load_ef']}")


def print_hamming_table(h: Result) -> None:
    print(f"\n### Hamming: {h['n']:,} random 576-bit codes (72 bytes), k=10\n")
    print(
        f"HammingEngine: {h['insert_rate']:,.0f} upserts/s; RSS Δ {h['rss_mb']:,.0f} MB for "
        f"HammingEngine + IndexBinaryFlat together; same top-10 distances: {h['same_distances']}\n"
    )
    print("| engine | query p50 ms | query p99 ms |")
    print("| --- | --- | --- |")
    for r in h["rows"]:
        print(f"| {r['engine']} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} |")


def environment() -> str:
    import faiss
    import hnswlib

    try:
        import chromadb

        chroma = chromadb.__version__
    except ImportError:
        chroma = "not installed"
    load = os.getloadavg()
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus; python "
        f"{platform.python_version()}, numpy {np.__version__}, faiss {faiss.__version__}, "
        f"hnswlib {getattr(hnswlib, '__version__', '0.8')}, chromadb {chroma}; "
        f"load average {load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=100_000, help="float vectors")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--engines", default=",".join(ENGINES), help=f"comma list of {ENGINES}")
    parser.add_argument("--parts", default="ann,chroma,hamming", help="ann, chroma, hamming")
    parser.add_argument("--skip-chroma", action="store_true")
    parser.add_argument("--chroma-n", type=int, default=0, help="ChromaDB vectors (0: --n)")
    parser.add_argument(
        "--chroma-from", help="reuse the ChromaDB results of an earlier --json run (same data)"
    )
    parser.add_argument("--ef", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--depth", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--m", type=int, default=0, help="graph degree M (0: engine default)")
    parser.add_argument(
        "--ef-construction", type=int, default=0, help="graph build beam (0: engine default)"
    )
    parser.add_argument("--hamming-n", type=int, default=10_000_000)
    parser.add_argument("--hamming-queries", type=int, default=30)
    parser.add_argument("--target-recall", type=float, default=0.95)
    parser.add_argument("--batch", type=int, default=5000, help="bulk insert batch")
    parser.add_argument("--single-upserts", type=int, default=2000)
    parser.add_argument(
        "--data-set",
        default="synthetic",
        choices=("synthetic", "clip", "cnn"),
        help="synthetic vectors, or real embeddings of generated pictures (--n of them)",
    )
    parser.add_argument("--latent", type=int, default=LATENT, help="synthetic: latent dims")
    parser.add_argument(
        "--train-size", type=int, default=0, help="vectors graphs are fitted on (0: product's)"
    )
    parser.add_argument(
        "--hold-out-every",
        type=int,
        default=0,
        help="'default': one image in N held out of the graph to measure recall (0: product's)",
    )
    parser.add_argument("--decay", type=float, default=DECAY, help="latent spectrum decay")
    parser.add_argument("--flat", action="store_true", help="a flat latent spectrum (decay 0)")
    parser.add_argument("--noise", type=float, default=0.25)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--workdir", default="", help="kept (and reused) when given")
    parser.add_argument("--json", default="", help="also write all results here")
    parser.add_argument(
        "--rebuild", action="store_true", help="time a rebuild from the store ('+rerank' engines)"
    )
    # worker-only
    parser.add_argument("--worker", default="", help=argparse.SUPPRESS)
    parser.add_argument("--engine", default="", help=argparse.SUPPRESS)
    parser.add_argument("--result", default="", help=argparse.SUPPRESS)
    parser.add_argument("--data", default="", help=argparse.SUPPRESS)
    parser.add_argument("--work", default="", help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        roles: dict[str, Callable[[argparse.Namespace], Result]] = {
            "build": worker_build,
            "load": worker_load,
            "rebuild": worker_rebuild,
            "chroma-build": worker_chroma_build,
            "chroma-reopen": worker_chroma_reopen,
            "hamming": worker_hamming,
        }
        Path(args.result).write_text(json.dumps(roles[args.worker](args)))
        return

    parts = set(args.parts.split(","))
    if args.skip_chroma:
        parts.discard("chroma")
    engines = [e for e in args.engines.split(",") if e]
    unknown = set(engines) - set(ENGINES)
    if unknown:
        parser.error(f"unknown engines {sorted(unknown)}; choose from {ENGINES}")
    own_workdir = not args.workdir
    work = Path(args.workdir or tempfile.mkdtemp(prefix="index-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    args.work = str(work)
    if args.flat:
        args.decay = 0.0
    meta = data_meta(args)
    args.data = str(data_dir(work, meta))
    print(f"## Index scale ({environment()})", flush=True)
    print(f"\n`{' '.join(['python -m bench.index_scale', *sys.argv[1:]])}`", flush=True)
    results: dict[str, Any] = {"args": {k: v for k, v in vars(args).items()}}
    started = time.perf_counter()
    try:
        if parts & {"ann", "chroma"}:
            prepare_data(Path(args.data), meta)
            print(
                f"\nData: {args.n:,} x {DIM} float32 ({args.n * DIM * 4 / MB:,.0f} MB), "
                f"{args.queries:,} held-out queries; {describe(meta)}; seed {args.seed}.",
                flush=True,
            )
        rows: list[Result] = []
        if "ann" in parts:
            data = DataSet(Path(args.data))
            if any(reranks(e) for e in engines):
                prepare_lmdb(data, work / "lmdb")
            for engine in engines:
                print(f"\n# engine {engine}", file=sys.stderr, flush=True)
                row = run_worker(args, "build", ["--engine", engine])
                row.setdefault("engine", engine)
                tuned = ["--ef", str(row["ef"])] if row.get("ef") else []
                tuned += ["--depth", str(row["depth"])] if row.get("depth") else []
                if "checkpoint" in row:
                    row["load"] = run_worker(
                        args,
                        "load",
                        ["--engine", engine, "--checkpoint", row["checkpoint"], *tuned],
                    )
                if reranks(engine) and args.rebuild:
                    row["rebuild"] = run_worker(args, "rebuild", ["--engine", engine, *tuned])
                rows.append(row)
            results["ann"] = rows
            print_ann_tables(rows)
        if "chroma" in parts or args.chroma_from:
            if args.chroma_from:  # an earlier run on the same data set and machine
                chroma = json.loads(Path(args.chroma_from).read_text())["chroma"]
                print(f"\nChromaDB rows from {args.chroma_from} (same data set).")
            else:
                chroma = run_worker(args, "chroma-build", [])
                if "failed" not in chroma:
                    chroma["load"] = run_worker(args, "chroma-reopen", [])
            if "failed" not in chroma:
                ok = [r for r in rows if "failed" not in r and r.get("engine") != "exact"]
                preferred = ("default", "faiss-hnsw-sq8+pca+rerank", "faiss-hnsw-sq8+rerank")
                ours = next((r for e in preferred for r in ok if r["engine"] == e), None)
                print_chroma_table(chroma, ours or (ok[0] if ok else None))
            results["chroma"] = chroma
        if "hamming" in parts:
            hamming = run_worker(args, "hamming", [])
            if "failed" not in hamming:
                print_hamming_table(hamming)
            results["hamming"] = hamming
    finally:
        if own_workdir:
            shutil.rmtree(work, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    print(f"\nTotal {time.perf_counter() - started:.0f}s; {environment()}", flush=True)


if __name__ == "__main__":
    main()
