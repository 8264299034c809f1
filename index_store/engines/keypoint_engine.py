"""The keypoints feature's engine: every image's ORB descriptors in one vote index.

It holds what voting needs (index_store/keypoint_votes.py: descriptors, by image slot), not the
packed keypoints themselves: copy verification reads those of its few candidates from the
store of record. A search ranks images by their keypoint votes (distance 1 / (1 + votes):
unverified; consumers/indexer/copy_verification.py verifies them); `votes` gives the votes
with the keypoint pairs that cast them, by image id.

The vote index is exact while small and grouped (faiss binary IVF) once groups pay; when it
has outgrown its groups it asks to be rebuilt (`needs_compaction`: FeatureIndex rebuilds it
from the store, and a bulk fill trains it for what it holds).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Self

import faiss

from index_store.engines.engine import Effort, Hit, Vectors, ranked, require_distinct
from index_store.engines.slots import SlotEngine, SlotMap
from index_store.keypoint_votes import NEIGHBOURS, Descriptors, KeypointVotes, Votes
from index_store.keypoints import MAGIC, descriptors_of, split
from index_store.openmp import VOTE_THREADS, omp_threads

VOTES_FILE = "votes.faissbin"
TRAINED_FILE = "trained.json"


class KeypointEngine(SlotEngine):
    def __init__(self) -> None:
        self._slots = SlotMap(reuse=True)
        # While the engine has only been bulk-filled (a load, a rebuild: in chunks), the
        # descriptors so far: the vote index is trained for all of them once the fill is over
        # (`filled`), not at every chunk (a training costs more than the last one did, and
        # only the last is kept). Dropped at the first single change.
        self._filled: list[Descriptors] | None = []
        self._built: KeypointVotes | None = KeypointVotes()  # None: filled since it was built

    # --- Engine --------------------------------------------------------------------------------
    @property
    def exact_distances(self) -> bool:
        return True  # vote distances are what they are: nothing to re-rank

    @property
    def effort(self) -> Effort | None:
        return None

    @effort.setter
    def effort(self, effort: Effort) -> None:
        pass

    @property
    def needs_compaction(self) -> bool:
        return self._votes.needs_training

    @property
    def snapshot_format(self) -> dict[str, object]:
        return {"engine": "keypoint-votes", "layout": MAGIC.decode()}

    def empty(self) -> Self:
        return type(self)()

    def upsert(self, image_id: str, vector: bytes) -> None:
        votes = self._changed_one_by_one()
        slot = self._slots.slot_of(image_id)
        replacing = slot is not None  # a new slot (fresh or freed) holds no descriptors
        if slot is None:
            slot = self._slots.add(image_id)
        votes.add(slot, descriptors_of(vector), replacing=replacing)

    def upsert_many(self, image_ids: Sequence[str], vectors: Vectors) -> None:
        """While the engine has only been bulk-filled (a load, a rebuild), one vote index
        for everything so far, trained when the fill is over (`filled`); otherwise one by
        one."""
        require_distinct(image_ids)
        records = split(vectors)
        if len(records) != len(image_ids):
            raise ValueError(f"{len(records)} packed keypoints for {len(image_ids)} ids")
        if self._filled is None or any(i in self._slots for i in image_ids):
            for image_id, record in zip(image_ids, records, strict=True):
                self.upsert(image_id, bytes(record))
            return
        for image_id, record in zip(image_ids, records, strict=True):
            if self._slots.add(image_id) != len(self._filled):
                raise AssertionError("a bulk-filled engine numbers its slots in order")
            self._filled.append(descriptors_of(record))
        self._built = None

    def filled(self) -> None:
        """The vote index trained for every descriptor a bulk fill brought."""
        if self._built is None:
            self._built = KeypointVotes(self._filled or ())

    def _changed_one_by_one(self) -> KeypointVotes:
        """The vote index, for a change of one image: a pending bulk fill is trained first
        (from the descriptors it brought), then bulk-filling ends."""
        votes = self._votes
        self._filled = None
        return votes

    @property
    def _votes(self) -> KeypointVotes:
        """The vote index: built now if a bulk fill was not told to end (`filled`)."""
        self.filled()
        assert self._built is not None
        return self._built

    def _vacate(self, slot: int) -> None:
        self._changed_one_by_one().remove(slot)

    def vector_of(self, image_id: str) -> bytes | None:
        return None  # packed keypoints live in the store only

    def search(
        self,
        queries: Sequence[bytes],
        k: int,
        max_distance: float | None = None,
        exclude: Iterable[str] = (),
    ) -> list[Hit]:
        """Images by keypoint votes for the queries' packed keypoints (1 / (1 + votes))."""
        excluded = set(exclude)
        weights: dict[str, float] = {}
        for query in queries:
            for image_id, weight in self.voted(self.votes(descriptors_of(query)), None):
                if image_id not in excluded:
                    weights[image_id] = max(weight, weights.get(image_id, 0.0))
        return ranked(((i, 1 / (1 + w)) for i, w in weights.items()), k, max_distance)

    def save(self, directory: Path) -> None:
        faiss.write_index_binary(self._votes.index, str(directory / VOTES_FILE))
        self._slots.save(directory)
        (directory / TRAINED_FILE).write_text(json.dumps(self._votes.trained_for))

    def restored(self, directory: Path) -> Self:
        engine = self.empty()
        engine._slots = SlotMap.load(directory, reuse=True)
        index = faiss.read_index_binary(str(directory / VOTES_FILE))
        trained_for = int(json.loads((directory / TRAINED_FILE).read_text()))
        engine._built = KeypointVotes.of(index, trained_for)
        engine._filled = None  # not bulk-filled: what comes later is added one by one
        return engine

    # --- what copy verification asks -----------------------------------------------------------
    def votes(self, query: Descriptors, neighbours: int = NEIGHBOURS) -> Votes:
        """The query's votes, by slot (`voted` names the images). On VOTE_THREADS OpenMP
        threads (index_store/openmp.py)."""
        with omp_threads(VOTE_THREADS):
            return self._votes.vote(query, neighbours)

    def voted(self, votes: Votes, most: int | None) -> list[tuple[str, float]]:
        """The `most` images with the most votes (all voted ones for None), with their
        weight: (image id, weight), most first."""
        slots = votes.most(most if most is not None else len(votes.weights))
        ids = self._slots.ids_at(slots)
        return [(i, votes.weight(s)) for i, s in zip(ids, slots, strict=True) if i is not None]

    def slot_of(self, image_id: str) -> int | None:
        return self._slots.slot_of(image_id)
