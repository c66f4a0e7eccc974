"""The payloads a memslot change announces: ``memslot.*`` and the invalidate pair of a delete."""

from __future__ import annotations

from typing import Any

from .slot_table import Slot

__all__ = ["slot_event", "invalidation_of_run", "continues_run"]


def continues_run(last: Slot, slot: Slot) -> bool:
    """Does ``slot``'s backing follow ``last``'s in the same objects (offsets back to back)?
    Then deleting both invalidates one file range, as a punch hole would."""
    for a, b in ((last.shared, slot.shared), (last.private, slot.private)):
        if a is None or b is None:
            if a is not b:
                return False
        elif a.object_id != b.object_id or a.offset + last.memory_size != b.offset:
            return False
    return True


def invalidation_of_run(run: list[Slot], *, batch: bool = False) -> dict[str, Any]:
    """The invalidate payload for deleting ``run`` (slots whose backings continue each other):
    the backing file range(s) once, and the GPA range of every slot."""
    first = run[0]
    length = sum(slot.memory_size for slot in run)
    info: dict[str, Any] = {
        "reason": "slot_delete",
        "gpa_ranges": [
            {"slot": slot.slot_id, "guest_phys_addr": slot.guest_phys_addr, "size": slot.memory_size} for slot in run
        ],
    }
    if first.private is not None:
        info["guest_memfd_id"], info["offset"], info["length"] = first.private.object_id, first.private.offset, length
    if first.shared is not None:
        info["shared_memory_id"], info["shared_offset"] = first.shared.object_id, first.shared.offset
        info["shared_length"] = length
    if batch:
        info["batch"] = True
    return info


def slot_event(slot: Slot, *, batch: bool = False) -> dict[str, Any]:
    data = {
        "slot": slot.slot_id,
        "guest_phys_addr": slot.guest_phys_addr,
        "memory_size": slot.memory_size,
        "flags": list(slot.flags),
        "shared": {"shared_memory_id": slot.shared.object_id, "offset": slot.shared.offset} if slot.shared else None,
        "private": {"guest_memfd_id": slot.private.object_id, "offset": slot.private.offset} if slot.private else None,
    }
    if batch:
        data["batch"] = True
    return data
