"""The slot table of one VM: ordered by GPA, O(log n) overlap checks and id allocation."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

from sortedcontainers import SortedDict, SortedList

from .ranges import Range

__all__ = ["Backing", "Slot", "MemslotTable", "GmemBindings"]


@dataclasses.dataclass(frozen=True, slots=True)
class Backing:
    """A part of a slot: a shared-memory region or a guest_memfd, at an offset."""

    object_id: str
    offset: int


@dataclasses.dataclass(frozen=True, slots=True)
class Slot:
    slot_id: int
    guest_phys_addr: int
    memory_size: int
    flags: tuple[str, ...]
    shared: Backing | None
    private: Backing | None
    userspace_addr: int
    userspace_addr_source: str  # "shared_memory" | "guest_memfd_mmap" | "none"
    created_at: float
    generation: int = 1

    @property
    def gpa_range(self) -> Range:
        return Range.of(self.guest_phys_addr, self.memory_size)

    @property
    def etag(self) -> str:
        """Changes whenever the slot does (generation), and differs across delete + re-create."""
        return f'"{self.slot_id}.{self.generation}.{int(self.created_at * 1e6):x}"'

    @property
    def immutable(self) -> bool:
        """guest_memfd slots can only be deleted (kernel M11; older 6.18.y would allow a UAF)."""
        return self.private is not None

    def same_request(self, other: "Slot") -> bool:
        return (self.guest_phys_addr, self.memory_size, self.flags, self.shared, self.private) == (
            other.guest_phys_addr, other.memory_size, other.flags, other.shared, other.private)


class MemslotTable:
    """Slots by id and by GPA. The ranges never overlap (the kernel's EEXIST rule)."""

    def __init__(self, max_slots: int):
        self.max_slots = max_slots
        self._by_id: dict[int, Slot] = {}
        self._by_gpa: SortedDict = SortedDict()  # start -> slot id
        self._free: SortedList = SortedList(range(max_slots))
        self.total_bytes = 0  # kept current: reading it is O(1)

    def __len__(self) -> int:
        return len(self._by_id)

    def get(self, slot_id: int) -> Slot | None:
        return self._by_id.get(slot_id)

    def lowest_free_id(self) -> int | None:
        return self._free[0] if self._free else None

    def highest_free_id(self) -> int | None:
        return self._free[-1] if self._free else None

    # Lookups use irange (bisect on sublist maxima), never positional indexing, which
    # SortedList rebuilds after every insert or delete.
    def first_overlap(self, gpa: Range, *, ignore: int | None = None) -> Slot | None:
        """The slot overlapping ``gpa`` with the lowest address, if any: O(log n)."""
        for slot in self.overlapping(gpa):
            if slot.slot_id != ignore:
                return slot
        return None

    def overlapping(self, gpa: Range) -> Iterator[Slot]:
        """Slots intersecting ``gpa`` in address order: O(log n + k)."""
        first = next(self._by_gpa.irange(maximum=gpa.start, reverse=True), gpa.start)
        for start in self._by_gpa.irange(minimum=first):
            if start >= gpa.end:
                return
            slot = self._by_id[self._by_gpa[start]]
            if slot.gpa_range.end > gpa.start:
                yield slot

    def page(self, gpa: Range, after_gpa: int | None, limit: int) -> tuple[list[Slot], int | None]:
        """Up to ``limit`` slots intersecting ``gpa`` that start after ``after_gpa``; O(log n + limit)."""
        items: list[Slot] = []
        if after_gpa is not None:
            gpa = Range(max(gpa.start, after_gpa + 1), max(gpa.end, after_gpa + 1))
        for slot in self.overlapping(gpa):
            if after_gpa is not None and slot.guest_phys_addr <= after_gpa:
                continue
            if len(items) == limit:
                return items, items[-1].guest_phys_addr
            items.append(slot)
        return items, None

    def add(self, slot: Slot) -> None:
        self.total_bytes += slot.memory_size
        self._by_id[slot.slot_id] = slot
        self._by_gpa[slot.guest_phys_addr] = slot.slot_id
        self._free.remove(slot.slot_id)

    def replace(self, slot: Slot) -> None:
        old = self._by_id[slot.slot_id]
        del self._by_gpa[old.guest_phys_addr]
        self._by_gpa[slot.guest_phys_addr] = slot.slot_id
        self._by_id[slot.slot_id] = slot

    def remove(self, slot_id: int) -> Slot:
        slot = self._by_id.pop(slot_id)
        self.total_bytes -= slot.memory_size
        del self._by_gpa[slot.guest_phys_addr]
        self._free.add(slot_id)
        return slot

    def __iter__(self) -> Iterator[Slot]:
        return (self._by_id[i] for i in self._by_gpa.values())


class GmemBindings:
    """Which file ranges of one guest_memfd are bound to which slots (kernel rule B5)."""

    def __init__(self) -> None:
        self._by_offset: SortedDict = SortedDict()  # offset -> (end, slot id)

    def __len__(self) -> int:
        return len(self._by_offset)

    def overlapping(self, r: Range, *, ignore: int | None = None) -> tuple[int, Range] | None:
        """A binding overlapping ``r`` (other than slot ``ignore``'s), in O(log n)."""
        first = next(self._by_offset.irange(maximum=r.start, reverse=True), r.start)
        for start in self._by_offset.irange(minimum=first):
            if start >= r.end:
                return None
            end, slot_id = self._by_offset[start]
            if slot_id != ignore and end > r.start:
                return slot_id, Range(start, end)
        return None

    def bind(self, r: Range, slot_id: int) -> None:
        self._by_offset[r.start] = (r.end, slot_id)

    def unbind(self, offset: int) -> None:
        del self._by_offset[offset]

    def __iter__(self) -> Iterator[tuple[int, Range]]:
        for start, (end, slot_id) in self._by_offset.items():
            yield slot_id, Range(start, end)
