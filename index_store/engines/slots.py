"""Image id <-> slot: the one map every engine keeps between its ids and its rows or graph nodes.

A removed image's slot is either handed to the next new image (`reuse=True`: exact scans,
hnswlib) or stays dead (`reuse=False`: faiss HNSW cannot delete, a dead slot is a tombstone
until the engine is rebuilt). New slots are numbered on from the highest one handed out.
`SlotEngine` is what every engine that keeps such a map answers from it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Self

FILE = "ids.json"


class SlotMap:
    def __init__(self, *, reuse: bool) -> None:
        self.reuse = reuse
        self._slot_of: dict[str, int] = {}
        self._id_at: list[str | None] = []  # by slot; None: free or dead
        self._free: list[int] = []

    def __len__(self) -> int:
        """Live ids."""
        return len(self._slot_of)

    def __contains__(self, image_id: object) -> bool:
        return image_id in self._slot_of

    @property
    def size(self) -> int:
        """Slots handed out, live or not: [0, size) is what the engine holds."""
        return len(self._id_at)

    @property
    def dead(self) -> int:
        """Slots that hold no live id."""
        return len(self._id_at) - len(self._slot_of)

    def slot_of(self, image_id: str) -> int | None:
        return self._slot_of.get(image_id)

    def id_at(self, slot: int) -> str | None:
        return self._id_at[slot]

    def ids_at(self, slots: Iterable[int]) -> list[str | None]:
        id_at = self._id_at
        return [id_at[s] for s in slots]

    def live(self) -> Iterator[tuple[int, str]]:
        """(slot, id) of every live id, by slot."""
        return ((slot, i) for slot, i in enumerate(self._id_at) if i is not None)

    def add(self, image_id: str) -> int:
        """A slot for an id not in the map: a free one if slots are reused, else the next."""
        if image_id in self._slot_of:
            raise ValueError(f"{image_id!r} already has slot {self._slot_of[image_id]}")
        if self._free:
            slot = self._free.pop()
            self._id_at[slot] = image_id
        else:
            slot = len(self._id_at)
            self._id_at.append(image_id)
        self._slot_of[image_id] = slot
        return slot

    def release(self, image_id: str) -> int | None:
        """Unmap `image_id`; its slot (returned) becomes free or dead."""
        slot = self._slot_of.pop(image_id, None)
        if slot is not None:
            self._id_at[slot] = None
            if self.reuse:
                self._free.append(slot)
        return slot

    def save(self, directory: Path) -> None:
        (directory / FILE).write_text(json.dumps(self._id_at), encoding="utf-8")

    @classmethod
    def load(cls, directory: Path, *, reuse: bool) -> Self:
        ids: list[str | None] = json.loads((directory / FILE).read_text(encoding="utf-8"))
        return cls.of(ids, reuse=reuse)

    @classmethod
    def of(cls, ids: Sequence[str | None], *, reuse: bool) -> Self:
        """The map of `ids` by slot (None: a free or dead slot)."""
        slots = cls(reuse=reuse)
        slots._id_at = list(ids)
        slots._slot_of = {i: slot for slot, i in enumerate(ids) if i is not None}
        if len(slots._slot_of) != len(ids) - slots._id_at.count(None):
            raise ValueError("an id holds two slots")
        if reuse:
            slots._free = [slot for slot, i in enumerate(ids) if i is None]
        return slots


class SlotEngine:
    """The part of an engine that its slot map answers: size, membership, removal.

    A subclass sets `_slots` and says what a removed slot means for its rows (`_vacate`)."""

    _slots: SlotMap

    @property
    def slots(self) -> int:
        """Slots held, live or dead: what memory grows with."""
        return self._slots.size

    def __len__(self) -> int:
        return len(self._slots)

    def __contains__(self, image_id: object) -> bool:
        return image_id in self._slots

    def filled(self) -> None:
        """Nothing to build: rows are searchable as they are upserted."""

    def remove(self, image_id: str) -> bool:
        slot = self._slots.release(image_id)
        if slot is None:
            return False
        self._vacate(slot)
        return True

    def _vacate(self, slot: int) -> None:
        """Searches must no longer return `slot` (it is free or dead now)."""
        raise NotImplementedError
