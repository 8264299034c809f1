"""The id <-> slot map: reused or dead slots, and its saved form."""

from __future__ import annotations

from pathlib import Path

import pytest

from index_store.engines.slots import SlotMap


@pytest.mark.parametrize("reuse", [True, False])
def test_released_slots_are_reused_or_stay_dead(reuse: bool, tmp_path: Path) -> None:
    slots = SlotMap(reuse=reuse)
    assert [slots.add(i) for i in "abc"] == [0, 1, 2]
    assert slots.release("b") == 1 and slots.release("b") is None
    assert slots.add("d") == (1 if reuse else 3)
    assert (len(slots), slots.size, slots.dead) == ((3, 3, 0) if reuse else (3, 4, 1))
    assert "b" not in slots and slots.slot_of("d") == (1 if reuse else 3)
    assert slots.ids_at(range(slots.size)) == (["a", "d", "c"] if reuse else ["a", None, "c", "d"])
    with pytest.raises(ValueError):
        slots.add("a")
    slots.release("a")
    slots.save(tmp_path)
    loaded = SlotMap.load(tmp_path, reuse=reuse)
    assert list(loaded.live()) == list(slots.live())
    assert loaded.add("e") == (0 if reuse else slots.size)


def test_an_id_in_two_slots_is_refused() -> None:
    with pytest.raises(ValueError):
        SlotMap.of(["a", None, "a"], reuse=False)
