"""Approximate nearest-neighbour indexes for float vectors (unit-normalised, cosine distance).

Both engines implement `SearchStructure` (see `feature_index.py`) next to the exact indexes:
vectors travel as raw float32 bytes, distances are cosine distances (1 - dot), smallest first.

* `HnswIndex` ("hnsw"): hnswlib graph over float32 vectors. True in-place updates: a replaced
  image keeps its slot (hnswlib repairs the graph around the new vector); a removed image's slot
  is marked deleted (never returned by a search) and handed to the next new image. Memory stays
  at the peak number of live images. ~2.2 KB per 512-d vector: float32 plus the graph.
* `FaissHnswIndex` ("faiss-hnsw-sq8", "faiss-hnsw"): faiss `IndexHNSWSQ` (8-bit scalar quantised
  codes, a quarter of float32) or `IndexHNSWFlat`. faiss HNSW cannot remove or overwrite a vector,
  so a remove or replace leaves a tombstone; searches filter tombstones with a live-bitmap
  `IDSelector` inside the graph search (removed ids are never returned), and once tombstones
  exceed `compact_fraction` of the live count (`needs_compaction`) the graph is rebuilt from the
  live vectors, inside that write or, with `compact_in_writes=False`, when its owner chooses
  (amortised: a rebuild of L vectors happens at most once per `compact_fraction * L` deletes).
  With `fetch_exact` (e.g. ``partial(store.vectors_of, index)``, the LMDB store of record) the
  top `rerank * k` candidates are re-ranked with their exact float32 vectors, so the quantised
  graph keeps the recall of a float32 one and returns exact distances. With `reduce_to` the
  graph holds PCA projections (`pca.py`) searched by L2, which is cheaper per visited node;
  the re-rank restores exact distances. The quantiser and the projection are fitted on the
  first `train_size` vectors (refitted by `compact`); below that the index is a small exact one.

Checkpoints (`save` / `load_ann_index`): a small JSON manifest names the generation's data files
(the graph as the library writes it, the id of every internal label, tombstones as nulls). Data
files get fresh names, the manifest is written to a temporary file, fsynced and `os.replace`d,
and only then are the previous generation's files deleted: a crash at any point leaves either
the old or the new checkpoint complete. Leftover temporary files are ignored by `load` and
cleaned up by the next `save`. One writer per checkpoint path (the caller's lock).

Thread safety is the caller's (`FeatureIndex` holds one lock around every call).

Why the default (`DEFAULT_KIND`, and `Settings.vector_reduce_dim`): measured with
`bench/index_scale.py` at 1M x 512-d (BENCHMARKS.md). The float32 hnswlib graph needs more
resident memory than the 1.5 GB budget and ~4 ms per query at recall@10 0.95; the SQ8 graph
over all 512 dimensions fits in memory but needs ~2.3 ms; over 64-d projections it reaches the
same recall in 0.84-1.20 ms (three runs).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar, Literal, Self, cast

import faiss
import hnswlib
import numpy as np
import structlog
from numpy.typing import NDArray

from index_store.exact_vector_index import ExactVectorIndex
from index_store.fsync import fsync_dir, fsync_file
from index_store.metric import Metric
from index_store.pca import PcaProjection

log = structlog.get_logger(__name__)

# Exact float32 bytes of images by id, None where absent; one call per batch of ids (a store
# read transaction per id would cost more than the re-ranking it serves).
FetchExact = Callable[[Sequence[str]], list[bytes | None]]
Storage = Literal["sq8", "flat"]
Candidates = tuple[NDArray[np.int64], NDArray[np.float32]]

ANN_KINDS = ("exact", "hnsw", "faiss-hnsw", "faiss-hnsw-sq8")
DEFAULT_KIND = "faiss-hnsw-sq8"
CHECKPOINT_FORMAT = "lookalike-ann-checkpoint/1"
MANIFEST = "ann.json"

# Search-time beam widths (bench/index_scale.py on 1M synthetic 512-d vectors; re-tune on real
# vectors with the same script): faiss, 64-d projections: ef 160 -> recall@10 0.965 (128: 0.947);
# hnswlib float32 needs 512 for 0.957 there, so its default trades recall for latency.
DEFAULT_EF_HNSW = 160
DEFAULT_EF_FAISS = 160


def _require_cosine(metric: Metric) -> None:
    if metric is not Metric.COSINE:
        raise ValueError(f"approximate indexes support cosine only, not {metric}")


class _GraphIndex:
    """What both graph engines share: id <-> label maps, query merging, checkpoints."""

    def __init__(self, dim: int, kind: str) -> None:
        self.dim = dim
        self.kind = kind
        self._label_of: dict[str, int] = {}
        self._id_of: list[str | None] = []  # by label; None: free slot or tombstone

    def __len__(self) -> int:
        return len(self._label_of)

    def __contains__(self, image_id: object) -> bool:
        return image_id in self._label_of

    # -- vectors in --

    def _as_vector(self, vector: bytes) -> NDArray[np.float32]:
        values = np.frombuffer(vector, dtype=np.float32)
        if values.shape != (self.dim,):
            raise ValueError(f"vector has {values.size} floats, index holds {self.dim}")
        return values

    def _as_matrix(self, vectors: Sequence[bytes]) -> NDArray[np.float32]:
        return np.stack([self._as_vector(v) for v in vectors])

    @staticmethod
    def _last_per_id(
        image_ids: Sequence[str], vectors: NDArray[np.float32]
    ) -> tuple[list[str], NDArray[np.float32]]:
        """Within one batch the last vector of an id wins."""
        row_of = {image_id: row for row, image_id in enumerate(image_ids)}
        if len(row_of) == len(image_ids):
            return list(image_ids), vectors
        rows = sorted(row_of.values())
        return [image_ids[r] for r in rows], vectors[rows]

    def _check_batch(self, image_ids: Sequence[str], vectors: NDArray[np.float32]) -> None:
        if vectors.shape != (len(image_ids), self.dim):
            raise ValueError(f"expected {len(image_ids)} x {self.dim} vectors, got {vectors.shape}")

    # -- search --

    def search(
        self,
        queries: Sequence[bytes],
        k: int,
        max_distance: float | None = None,
        exclude: Iterable[str] = (),
    ) -> list[tuple[str, float]]:
        """Top-k (id, distance) by the smallest distance to any of `queries`."""
        if k <= 0 or not queries or not self._label_of:
            return []
        excluded = {i for i in exclude if i in self._label_of}
        want = min(k + len(excluded), len(self._label_of))
        if want <= len(excluded):
            return []
        labels, dists = self._candidates(self._as_matrix(queries), want)
        best: dict[str, float] = {}
        for label, dist in zip(labels.tolist(), dists.tolist(), strict=True):
            if label < 0:
                continue
            image_id = self._id_of[label]
            if image_id is None or image_id in excluded:
                continue
            if dist < best.get(image_id, np.inf):
                best[image_id] = dist
        limit = np.inf if max_distance is None else max_distance
        ranked = sorted(best.items(), key=lambda kv: (kv[1], kv[0]))
        return [(i, float(d)) for i, d in ranked[:k] if d <= limit]

    def _candidates(self, queries: NDArray[np.float32], want: int) -> Candidates:
        """(labels, distances) of candidates for any query, duplicates allowed, -1 = none."""
        raise NotImplementedError

    # -- checkpoints --

    def save(self, directory: Path) -> None:
        """Write a checkpoint into `directory`: new data files, then the manifest, atomically."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        generation = f"{time.time_ns():x}-{os.getpid()}"
        files: dict[str, str] = {}

        def data_file(role: str) -> Path:
            name = f"ann.{generation}.{role}"
            files[role] = name
            return directory / name

        data_file("ids.json").write_text(json.dumps(self._id_of), encoding="utf-8")
        manifest: dict[str, Any] = {
            "format": CHECKPOINT_FORMAT,
            "kind": self.kind,
            "dim": self.dim,
            "generation": generation,
            "params": self._params(),
            **self._write_data(data_file),
        }
        manifest["files"] = files
        for name in files.values():
            fsync_file(directory / name)
        tmp = directory / f"{MANIFEST}.tmp-{generation}"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(manifest, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, directory / MANIFEST)  # the switch: old or new, never half
        fsync_dir(directory)
        keep = {MANIFEST, *files.values()}
        for stale in directory.glob("ann.*"):  # the previous generation, crashed saves
            if stale.name not in keep:
                stale.unlink(missing_ok=True)

    @property
    def layout(self) -> dict[str, object]:
        return {"engine": self.kind, "dim": self.dim}

    def _params(self) -> dict[str, Any]:
        raise NotImplementedError

    def _write_data(self, data_file: Callable[[str], Path]) -> dict[str, Any]:
        """Write the engine's data files (named by `data_file(role)`); extra manifest fields."""
        raise NotImplementedError

    def _restore_ids(self, ids: list[str | None]) -> None:
        self._id_of = ids
        self._label_of = {i: label for label, i in enumerate(ids) if i is not None}


# ------------------------------------------------------------------------------------------------
# hnswlib, float32, in-place updates and slot reuse
# ------------------------------------------------------------------------------------------------


class HnswIndex(_GraphIndex):
    def __init__(
        self,
        dim: int,
        metric: Metric = Metric.COSINE,
        *,
        m: int = 16,
        ef_construction: int = 100,
        ef_search: int = DEFAULT_EF_HNSW,
        capacity: int = 1024,
        add_threads: int = 2,
        seed: int = 100,
    ) -> None:
        _require_cosine(metric)
        super().__init__(dim, "hnsw")
        self.m = m
        self.ef_construction = ef_construction
        self.add_threads = add_threads
        self._seed = seed
        self._free: list[int] = []  # labels of removed images: marked deleted in the graph
        self._graph = hnswlib.Index(space="ip", dim=dim)  # 1 - dot: cosine on unit vectors
        self._graph.init_index(
            max_elements=max(capacity, 1), ef_construction=ef_construction, M=m, random_seed=seed
        )
        self.ef_search = ef_search

    @property
    def ef_search(self) -> int:
        return self._ef

    @ef_search.setter
    def ef_search(self, ef: int) -> None:
        self._ef = ef
        self._graph.set_ef(ef)

    @property
    def slots(self) -> int:
        """Graph nodes, live or reusable: stays at the peak live count under churn."""
        return len(self._id_of)

    @property
    def needs_compaction(self) -> bool:
        return False  # removed labels are reused in place

    def search_like(self, configured: Self) -> None:
        """Search as `configured` does: a snapshot brings data, configuration the knobs."""
        self.ef_search = configured.ef_search

    @property
    def capacity(self) -> int:
        return int(self._graph.get_max_elements())

    def upsert(self, image_id: str, vector: bytes) -> None:
        values = self._as_vector(vector)
        label = self._label_of.get(image_id)
        if label is None:
            label = self._take_label()
            self._label_of[image_id] = label
            self._id_of[label] = image_id
        # A live label is updated in place; a reused (deleted) one is unmarked and updated.
        self._graph.add_items(values[None, :], np.array([label]), num_threads=1)

    def upsert_many(self, image_ids: Sequence[str], vectors: NDArray[np.float32]) -> None:
        """Bulk upsert (initial load, replays): graph insertion runs on `add_threads`."""
        self._check_batch(image_ids, vectors)
        ids, vectors = self._last_per_id(image_ids, vectors)
        labels = np.empty(len(ids), dtype=np.int64)
        for row, image_id in enumerate(ids):
            label = self._label_of.get(image_id)
            if label is None:
                label = self._take_label()
                self._label_of[image_id] = label
                self._id_of[label] = image_id
            labels[row] = label
        if len(ids):
            data = np.ascontiguousarray(vectors, dtype=np.float32)
            self._graph.add_items(data, labels, num_threads=self.add_threads)

    def remove(self, image_id: str) -> bool:
        label = self._label_of.pop(image_id, None)
        if label is None:
            return False
        self._graph.mark_deleted(label)
        self._id_of[label] = None
        self._free.append(label)
        return True

    def code_of(self, image_id: str) -> bytes | None:
        label = self._label_of.get(image_id)
        if label is None:
            return None
        values: NDArray[np.float32] = self._graph.get_items([label], return_type="numpy")[0]
        return values.astype(np.float32).tobytes()

    def _take_label(self) -> int:
        if self._free:
            return self._free.pop()
        label = len(self._id_of)
        if label >= self.capacity:
            self._graph.resize_index(max(2 * self.capacity, 1024))
        self._id_of.append(None)
        return label

    def _candidates(self, queries: NDArray[np.float32], want: int) -> Candidates:
        # hnswlib refuses to return fewer than k rows; that can happen when many nodes near the
        # query are deleted: widen the beam, then ask for fewer.
        k, ef = want, self._ef
        try:
            while True:
                try:
                    labels, dists = self._graph.knn_query(queries, k=k, num_threads=1)
                    return labels.astype(np.int64).ravel(), dists.ravel()
                except RuntimeError:
                    if ef < len(self._id_of):
                        ef *= 4
                        self._graph.set_ef(ef)
                    elif k > 1:
                        k //= 2
                    else:
                        return np.empty(0, np.int64), np.empty(0, np.float32)
        finally:
            if ef != self._ef:
                self._graph.set_ef(self._ef)

    def _params(self) -> dict[str, Any]:
        return {
            "m": self.m,
            "ef_construction": self.ef_construction,
            "ef_search": self._ef,
            "add_threads": self.add_threads,
            "seed": self._seed,
        }

    def _write_data(self, data_file: Callable[[str], Path]) -> dict[str, Any]:
        self._graph.save_index(str(data_file("graph")))
        return {}

    @classmethod
    def empty_like(cls, other: Self) -> Self:
        return cls(other.dim, **other._params())

    @classmethod
    def load(cls, directory: Path) -> Self:
        """Open a checkpoint written by `save`."""
        manifest, ids = _read_checkpoint(Path(directory), "hnsw")
        index = cls(manifest["dim"], capacity=1, **manifest["params"])
        graph = hnswlib.Index(space="ip", dim=index.dim)
        graph.load_index(str(Path(directory) / manifest["files"]["graph"]))
        index._graph = graph
        index.ef_search = index.ef_search  # a loaded graph forgets its ef
        index._restore_ids(ids)
        index._free = [label for label, i in enumerate(ids) if i is None]
        return index


# ------------------------------------------------------------------------------------------------
# faiss HNSW (8-bit scalar quantised or flat), tombstones + compaction, exact re-ranking
# ------------------------------------------------------------------------------------------------


class FaissHnswIndex(_GraphIndex):
    _bound_fetch: ClassVar[tuple[FetchExact, ...]] = ()  # see `with_store`

    def __init__(
        self,
        dim: int,
        metric: Metric = Metric.COSINE,
        *,
        storage: Storage = "sq8",
        m: int = 32,
        ef_construction: int = 200,
        ef_search: int = DEFAULT_EF_FAISS,
        fetch_exact: FetchExact | None = None,
        rerank: int = 4,
        train_size: int = 10_000,
        compact_fraction: float = 0.25,
        compact_min: int = 1_000,
        compact_in_writes: bool = True,
        reduce_to: int | None = None,
    ) -> None:
        """`fetch_exact`: float32 bytes of a live image (store of record), for re-ranking the top
        `rerank * k` candidates and for rebuilding; compaction is due once tombstones exceed
        `compact_fraction` of the live count and `compact_min` (`needs_compaction`), and runs
        inside the write that crossed it unless `compact_in_writes=False` (the owner then calls
        `compact()` or rebuilds when convenient); `reduce_to`: the graph holds PCA projections
        of this many dimensions (fitted on the first `train_size` vectors), not the vectors."""
        _require_cosine(metric)
        if storage not in ("sq8", "flat"):
            raise ValueError(f"unknown storage {storage!r}")
        if reduce_to is not None and not 0 < reduce_to < dim:
            raise ValueError(f"reduce_to must be between 1 and {dim - 1}, got {reduce_to}")
        if reduce_to is not None and train_size <= reduce_to:
            raise ValueError(f"train_size {train_size} is too small to fit {reduce_to} components")
        super().__init__(dim, "faiss-hnsw-sq8" if storage == "sq8" else "faiss-hnsw")
        self.storage: Storage = storage
        self.m = m
        self.ef_construction = ef_construction
        self.ef_search = ef_search
        if fetch_exact is None and self._bound_fetch:
            fetch_exact = self._bound_fetch[0]
        self.fetch_exact = fetch_exact
        self.rerank = rerank
        self.reduce_to = reduce_to
        self._pca: PcaProjection | None = None
        self.train_size = train_size if storage == "sq8" or reduce_to else 0
        self.compact_fraction = compact_fraction
        self.compact_min = compact_min
        self.compact_in_writes = compact_in_writes
        self.compactions = 0
        self._tombstones = 0
        self._live_bits = np.zeros(128, dtype=np.uint8)  # bit per label: 1 = live
        # Until the quantiser is trained the vectors live in a small exact index.
        self._staging: ExactVectorIndex | None = None
        self._staged: dict[str, None] = {}
        self._graph: Any = None
        if self.train_size > 0:
            self._staging = ExactVectorIndex(dim, Metric.COSINE)
        else:
            self._graph = self._new_graph()

    # -- state --

    def __len__(self) -> int:
        return len(self._staged) if self._staging is not None else len(self._label_of)

    def __contains__(self, image_id: object) -> bool:
        return image_id in self._staged or image_id in self._label_of

    @property
    def tombstones(self) -> int:
        return self._tombstones

    @property
    def needs_compaction(self) -> bool:
        """Enough dead nodes that a rebuild from the live ones pays (amortised: a rebuild of
        L vectors at most once per `compact_fraction * L` deletes)."""
        return self._tombstones > max(self.compact_min, self.compact_fraction * len(self))

    def search_like(self, configured: Self) -> None:
        """Search (and compact) as `configured` does: a snapshot brings data, configuration
        the knobs."""
        self.ef_search = configured.ef_search
        self.rerank = configured.rerank
        self.compact_fraction = configured.compact_fraction
        self.compact_min = configured.compact_min
        self.compact_in_writes = configured.compact_in_writes

    @property
    def slots(self) -> int:
        """Graph nodes, live or tombstoned."""
        return len(self._id_of)

    @property
    def trained(self) -> bool:
        return self._staging is None

    @property
    def layout(self) -> dict[str, object]:
        return {**super().layout, "reduce_to": self.reduce_to}

    # -- writes --

    def upsert(self, image_id: str, vector: bytes) -> None:
        values = self._as_vector(vector)
        if self._staging is not None:
            self._staging.upsert(image_id, vector)
            self._staged[image_id] = None
            if len(self._staged) >= self.train_size:
                self._leave_staging()
            return
        old = self._label_of.get(image_id)
        if old is not None:
            self._bury(old)
        with _one_omp_thread():  # forking OpenMP threads for one vector costs more than it saves
            self._append([image_id], values[None, :])
        self._maybe_compact()

    def upsert_many(self, image_ids: Sequence[str], vectors: NDArray[np.float32]) -> None:
        """Bulk upsert (initial load, replays): graph insertion runs on faiss's OpenMP threads."""
        self._check_batch(image_ids, vectors)
        ids, vectors = self._last_per_id(image_ids, vectors)
        if self._staging is not None:
            taken = 0
            for image_id, row in zip(ids, vectors, strict=True):
                if len(self._staged) >= self.train_size:
                    break
                self._staging.upsert(image_id, row.tobytes())
                self._staged[image_id] = None
                taken += 1
            if len(self._staged) < self.train_size:
                return
            self._leave_staging()
            ids, vectors = ids[taken:], vectors[taken:]
            if not ids:
                return
        for image_id in ids:
            old = self._label_of.get(image_id)
            if old is not None:
                self._bury(old)
        self._append(ids, np.ascontiguousarray(vectors, dtype=np.float32))
        self._maybe_compact()

    def remove(self, image_id: str) -> bool:
        if self._staging is not None:
            if image_id not in self._staged:
                return False
            del self._staged[image_id]
            return self._staging.remove(image_id)
        label = self._label_of.pop(image_id, None)
        if label is None:
            return False
        self._bury(label, unmap=False)
        self._maybe_compact()
        return True

    def code_of(self, image_id: str) -> bytes | None:
        """Exact bytes through `fetch_exact` when given, else what the index holds (SQ8: decoded,
        within half a quantisation step of the original)."""
        if self._staging is not None:
            return self._staging.code_of(image_id)
        label = self._label_of.get(image_id)
        if label is None:
            return None
        if self.fetch_exact is not None:
            exact = self.fetch_exact([image_id])[0]
            if exact is not None:
                return exact
        values: NDArray[np.float32] = self._graph.reconstruct(label)
        if self._pca is not None:
            values = self._pca.restore(values[None, :])[0]
        return values.astype(np.float32).tobytes()

    def compact(self) -> None:
        """Rebuild the graph from the live vectors: tombstones gone, labels renumbered."""
        if self._staging is not None:
            return
        live = [(label, i) for label, i in enumerate(self._id_of) if i is not None]
        old_graph, old_pca = self._graph, self._pca
        retrain = self.train_size > 0 and self.fetch_exact is not None
        chunk = 50_000

        def vectors_of(part: list[tuple[int, str]]) -> NDArray[np.float32]:
            """Original-space vectors: exact from the store, else decoded from the old graph."""
            out = np.empty((len(part), self.dim), dtype=np.float32)
            decode: list[int] = []
            found = (
                self.fetch_exact([i for _, i in part]) if self.fetch_exact else [None] * len(part)
            )
            for row, exact in enumerate(found):
                if exact is not None and len(exact) == 4 * self.dim:
                    out[row] = np.frombuffer(exact, dtype=np.float32)
                else:
                    decode.append(row)
            if decode:
                labels = np.array([part[row][0] for row in decode], dtype=np.int64)
                decoded: NDArray[np.float32] = old_graph.reconstruct_batch(labels)
                out[decode] = decoded if old_pca is None else old_pca.restore(decoded)
            return out

        graph, pca = self._new_graph(), old_pca
        if retrain and len(live) >= self.train_size:
            sample = vectors_of(live[:: max(1, len(live) // self.train_size)][: self.train_size])
            if self.reduce_to is not None:
                pca = self._fit_projection(sample)
            if self.storage == "sq8":
                graph.train(_projected(pca, sample))
        elif self.storage == "sq8":  # decoded codes re-encode to themselves only under the same
            _copy_quantiser(old_graph, graph)  # quantiser (and the same projection)
        for start in range(0, len(live), chunk):
            graph.add(_projected(pca, vectors_of(live[start : start + chunk])))
        self._graph, self._pca = graph, pca
        self._restore_ids([i for _, i in live])
        self._tombstones = 0
        self._live_bits = np.zeros(max(128, _bitmap_bytes(len(live)) * 2), dtype=np.uint8)
        self._set_live(np.arange(len(live)), True)
        self.compactions += 1

    # -- internals --

    def _new_graph(self) -> Any:
        # A projected graph searches by L2 (see pca.py); for unit vectors the order is cosine's.
        metric = faiss.METRIC_INNER_PRODUCT if self.reduce_to is None else faiss.METRIC_L2
        dim = self.reduce_to or self.dim
        graph: Any
        if self.storage == "sq8":
            qtype: Any = faiss.ScalarQuantizer.QT_8bit
            graph = faiss.IndexHNSWSQ(dim, qtype, self.m, metric)
        else:
            graph = faiss.IndexHNSWFlat(dim, self.m, metric)
        graph.hnsw.efConstruction = self.ef_construction
        return graph

    def _fit_projection(self, sample: NDArray[np.float32]) -> PcaProjection:
        assert self.reduce_to is not None
        pca = PcaProjection.fit(sample, self.reduce_to)
        log.info(
            "index.projection_fitted",
            dims=f"{self.dim}->{self.reduce_to}",
            variance_kept=round(pca.variance_kept, 4),
            vectors=len(sample),
        )
        if pca.variance_kept < 0.9:  # the graph misses neighbours; re-ranking cannot find them
            log.warning("index.projection_loses_variance", variance_kept=pca.variance_kept)
        return pca

    def _leave_staging(self) -> None:
        staging = self._staging
        assert staging is not None
        ids = list(self._staged)
        vectors = np.stack(
            [np.frombuffer(staging.code_of(i) or b"", dtype=np.float32) for i in ids]
        )
        self._graph = self._new_graph()
        if self.reduce_to is not None:
            self._pca = self._fit_projection(vectors)
        if self.storage == "sq8":
            self._graph.train(_projected(self._pca, vectors))
        self._staging = None
        self._staged = {}
        self._append(ids, vectors)

    def _append(self, ids: list[str], vectors: NDArray[np.float32]) -> None:
        first = len(self._id_of)
        self._graph.add(_projected(self._pca, vectors))
        for offset, image_id in enumerate(ids):
            self._label_of[image_id] = first + offset
        self._id_of.extend(ids)
        need = _bitmap_bytes(len(self._id_of))
        if need > self._live_bits.size:
            bits = np.zeros(max(need, 2 * self._live_bits.size), dtype=np.uint8)
            bits[: self._live_bits.size] = self._live_bits
            self._live_bits = bits
        self._set_live(np.arange(first, len(self._id_of)), True)

    def _bury(self, label: int, *, unmap: bool = True) -> None:
        image_id = self._id_of[label]
        if unmap and image_id is not None:
            self._label_of.pop(image_id, None)
        self._id_of[label] = None
        self._live_bits[label >> 3] &= np.uint8(0xFF ^ (1 << (label & 7)))
        self._tombstones += 1

    def _set_live(self, labels: NDArray[np.int64], live: bool) -> None:
        if not labels.size:
            return
        byte, bit = labels >> 3, (labels & 7).astype(np.uint8)
        masks = np.left_shift(np.uint8(1), bit)
        if live:
            np.bitwise_or.at(self._live_bits, byte, masks)
        else:
            np.bitwise_and.at(self._live_bits, byte, ~masks)

    def _maybe_compact(self) -> None:
        if self.compact_in_writes and self.needs_compaction:
            self.compact()

    def search(
        self,
        queries: Sequence[bytes],
        k: int,
        max_distance: float | None = None,
        exclude: Iterable[str] = (),
    ) -> list[tuple[str, float]]:
        if self._staging is not None:
            return self._staging.search(queries, k, max_distance, exclude)
        return super().search(queries, k, max_distance, exclude)

    def _graph_candidates(self, queries: NDArray[np.float32], count: int) -> Candidates:
        params = faiss.SearchParametersHNSW()  # type: ignore[attr-defined]
        params.efSearch = max(self.ef_search, count)
        selector = None
        if self._tombstones:
            selector = faiss.IDSelectorBitmap(self._live_bits.size, faiss.swig_ptr(self._live_bits))
            params.sel = selector
        projected = _projected(self._pca, queries)
        with _one_omp_thread():
            scores, labels = self._graph.search(projected, count, params=params)
        del selector
        dists: NDArray[np.float32]
        if self._pca is None:  # inner products
            dists = (1.0 - scores).astype(np.float32)
        else:  # squared L2 of unit vectors = 2 * cosine distance (approximate: projected)
            dists = (0.5 * scores).astype(np.float32)
        return labels.astype(np.int64).ravel(), dists.ravel()

    def _candidates(self, queries: NDArray[np.float32], want: int) -> Candidates:
        exact_in_graph = self.storage == "flat" and self._pca is None
        if self.fetch_exact is None or self.rerank <= 1 or exact_in_graph:
            return self._graph_candidates(queries, want)
        labels, approx = self._graph_candidates(queries, min(want * self.rerank, len(self)))
        keep = labels >= 0
        labels, approx = labels[keep], approx[keep]
        # One query's candidates are distinct labels; several queries may share some.
        unique = labels if len(queries) == 1 else np.unique(labels)
        if not unique.size:
            return unique, approx[:0]
        ids = [self._id_of[label] or "" for label in unique.tolist()]  # "": a tombstone, absent
        found = self.fetch_exact(ids)
        size = 4 * self.dim
        # Store and index may disagree for a moment (a write between them): such a candidate
        # keeps its best approximate distance over the queries.
        missing = [row for row, exact in enumerate(found) if exact is None or len(exact) != size]
        exact_rows = [
            bytes(size) if exact is None or len(exact) != size else exact for exact in found
        ]
        rows = np.frombuffer(b"".join(exact_rows), np.float32).reshape(-1, self.dim)
        dists: NDArray[np.float32] = (1.0 - rows @ queries.T).min(axis=1).astype(np.float32)
        for row in missing:
            dists[row] = approx[labels == unique[row]].min()
        return unique, dists

    def _params(self) -> dict[str, Any]:
        return {
            "storage": self.storage,
            "m": self.m,
            "ef_construction": self.ef_construction,
            "ef_search": self.ef_search,
            "rerank": self.rerank,
            "train_size": self.train_size,
            "compact_fraction": self.compact_fraction,
            "compact_min": self.compact_min,
            "compact_in_writes": self.compact_in_writes,
            "reduce_to": self.reduce_to,
        }

    def _write_data(self, data_file: Callable[[str], Path]) -> dict[str, Any]:
        if self._staging is not None:
            ids = list(self._staged)
            staged = data_file("staged.npy")
            codes = [self._staging.code_of(i) or b"" for i in ids]
            matrix = np.frombuffer(b"".join(codes), dtype=np.float32).reshape(len(ids), self.dim)
            with open(staged, "wb") as f:
                np.save(f, matrix)
            return {"staged_ids": ids}
        faiss.write_index(self._graph, str(data_file("graph")))
        if self._pca is not None:
            self._pca.save(data_file("pca.npz"))
        return {}

    @classmethod
    def with_store(cls, fetch_exact: FetchExact) -> type[FaissHnswIndex]:
        """A subclass whose instances, `load` and `empty_like` default to `fetch_exact`.

        `FeatureIndex` reloads snapshots with `type(structure).load(directory)`, which cannot
        pass a callable: an instance of this subclass keeps re-ranking across reloads.
        """
        bound = type(f"{cls.__name__}WithStore", (cls,), {"_bound_fetch": (fetch_exact,)})
        return cast(type[FaissHnswIndex], bound)

    @classmethod
    def empty_like(cls, other: Self) -> Self:
        return cls(other.dim, fetch_exact=other.fetch_exact, **other._params())

    @classmethod
    def load(cls, directory: Path, fetch_exact: FetchExact | None = None) -> Self:
        """Open a checkpoint written by `save`; `fetch_exact` as in the constructor."""
        directory = Path(directory)
        manifest, ids = _read_checkpoint(directory, "faiss-hnsw", "faiss-hnsw-sq8")
        params = dict(manifest["params"])
        if params.get("compact_fraction", 0.25) is None:  # older checkpoints said "no compaction
            params.update(compact_fraction=0.25, compact_in_writes=False)  # in writes" this way
        index = cls(manifest["dim"], fetch_exact=fetch_exact, **params)
        files = manifest["files"]
        if "staged.npy" in files:
            matrix = np.load(directory / files["staged.npy"])
            for image_id, row in zip(manifest["staged_ids"], matrix, strict=True):
                index.upsert(image_id, row.tobytes())
            return index
        index._staging = None
        index._staged = {}
        index._graph = faiss.read_index(str(directory / files["graph"]))
        if "pca.npz" in files:
            index._pca = PcaProjection.load(directory / files["pca.npz"])
        elif index.reduce_to is not None:
            raise ValueError(f"{directory}: a reduced graph without its projection")
        index._restore_ids(ids)
        index._tombstones = sum(1 for i in ids if i is None)
        index._live_bits = np.zeros(max(128, 2 * _bitmap_bytes(len(ids))), dtype=np.uint8)
        index._set_live(np.array([lb for lb, i in enumerate(ids) if i is not None]), True)
        return index


@contextmanager
def _one_omp_thread() -> Iterator[None]:
    """Run faiss on the calling thread only (OpenMP's thread count is per calling thread)."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def _projected(pca: PcaProjection | None, vectors: NDArray[np.float32]) -> NDArray[np.float32]:
    return vectors if pca is None else pca.project(vectors)


def _bitmap_bytes(labels: int) -> int:
    return (labels + 7) // 8


def _copy_quantiser(source: Any, target: Any) -> None:
    source_storage: Any = faiss.downcast_index(source.storage)
    trained = faiss.vector_to_array(source_storage.sq.trained)
    storage: Any = faiss.downcast_index(target.storage)
    faiss.copy_array_to_vector(trained, storage.sq.trained)
    storage.is_trained = True
    target.is_trained = True


def _read_checkpoint(directory: Path, *kinds: str) -> tuple[dict[str, Any], list[str | None]]:
    manifest: dict[str, Any] = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
    if manifest.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{directory} holds no {CHECKPOINT_FORMAT} checkpoint")
    if kinds and manifest["kind"] not in kinds:
        raise ValueError(f"{directory} holds a {manifest['kind']} index, not {' or '.join(kinds)}")
    ids_file = directory / manifest["files"]["ids.json"]
    ids: list[str | None] = json.loads(ids_file.read_text(encoding="utf-8"))
    return manifest, ids


# ------------------------------------------------------------------------------------------------
# factory and loading
# ------------------------------------------------------------------------------------------------

AnnIndex = ExactVectorIndex | HnswIndex | FaissHnswIndex


def make_ann_index(
    kind: str,
    dim: int,
    metric: Metric = Metric.COSINE,
    *,
    fetch_exact: FetchExact | None = None,
    ef_search: int | None = None,
    **options: Any,
) -> AnnIndex:
    """A search structure for float vectors. kind: one of ANN_KINDS ("exact" also takes L1).

    `fetch_exact` (faiss-hnsw-sq8): exact float32 bytes by id from the store of record, used to
    re-rank the quantised candidates. Other keyword options go to the engine's constructor.
    """
    if kind == "exact":
        return ExactVectorIndex(dim, metric, **options)
    if kind == "hnsw":
        return HnswIndex(dim, metric, ef_search=ef_search or DEFAULT_EF_HNSW, **options)
    if kind in ("faiss-hnsw", "faiss-hnsw-sq8"):
        storage: Storage = "sq8" if kind == "faiss-hnsw-sq8" else "flat"
        engine = FaissHnswIndex if fetch_exact is None else FaissHnswIndex.with_store(fetch_exact)
        return engine(
            dim, metric, storage=storage, ef_search=ef_search or DEFAULT_EF_FAISS, **options
        )
    raise ValueError(f"unknown index kind {kind!r}; expected one of {ANN_KINDS}")


def load_ann_index(
    directory: Path, fetch_exact: FetchExact | None = None
) -> HnswIndex | FaissHnswIndex:
    """Open the checkpoint in `directory` (written by `save`), whichever engine wrote it."""
    manifest, _ = _read_checkpoint(Path(directory))
    if manifest["kind"] == "hnsw":
        return HnswIndex.load(directory)
    return FaissHnswIndex.load(directory, fetch_exact)
