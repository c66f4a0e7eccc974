"""The slot table of one VM: ordered by GPA, O(log n) overlap checks and id allocation."""

from __future__ import annotations

import heapq
from collections.abc import Container, Iterator

from sortedcontainers import SortedDict

from .ranges import Range
from .sorted_keys import floor_key, higher_key
from .value_type import value_type

__all__ = ["Backing", "Slot", "MemslotTable", "GmemBindings", "FreeIds"]


@value_type
class Backing:
    """A part of a slot: a shared-memory region or a guest_memfd, at an offset."""

    object_id: str
    offset: int


@value_type
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

    def same_request(self, other: Slot) -> bool:
        return (self.guest_phys_addr, self.memory_size, self.flags, self.shared, self.private) == (
            other.guest_phys_addr,
            other.memory_size,
            other.flags,
            other.shared,
            other.private,
        )


class FreeIds:
    """The lowest and highest free slot id, each in O(log n) amortized; taking an id costs
    nothing and returning one O(log n). Memory grows with the ids ever used, not the budget.

    From each end, ids past a watermark that only moves inwards have never been looked at
    and count as free unless in use; the watermark steps over ids in use (each id once).
    Free ids behind a watermark live in a heap with lazy deletion: an id stays there while
    in use and is dropped when it reaches the top. ``in use`` is the slot table itself.
    """

    def __init__(self, max_slots: int, used: Container[int]):
        self._used = used
        self._max = max_slots
        self._low_mark = 0  # ids >= this were never passed from below
        self._high_mark = max_slots - 1  # ids <= this were never passed from above
        self._low: list[int] = []  # min-heap of ids < _low_mark
        self._high: list[int] = []  # max-heap (negated) of ids > _high_mark
        self._in_low: set[int] = set()
        self._in_high: set[int] = set()

    def lowest(self) -> int | None:
        low, used = self._low, self._used
        while low and low[0] in used:
            self._in_low.discard(heapq.heappop(low))
        while self._low_mark < self._max and self._low_mark in used:
            self._low_mark += 1  # freed later, it goes to the heap (give_back)
        candidates = [low[0]] if low else []
        if self._low_mark < self._max:
            candidates.append(self._low_mark)
        return min(candidates) if candidates else None

    def highest(self) -> int | None:
        high, used = self._high, self._used
        while high and -high[0] in used:
            self._in_high.discard(-heapq.heappop(high))
        while self._high_mark >= 0 and self._high_mark in used:
            self._high_mark -= 1
        candidates = [-high[0]] if high else []
        if self._high_mark >= 0:
            candidates.append(self._high_mark)
        return max(candidates) if candidates else None

    def give_back(self, slot_id: int) -> None:
        if slot_id < self._low_mark and slot_id not in self._in_low:
            heapq.heappush(self._low, slot_id)
            self._in_low.add(slot_id)
        if slot_id > self._high_mark and slot_id not in self._in_high:
            heapq.heappush(self._high, -slot_id)
            self._in_high.add(slot_id)


class MemslotTable:
    """Slots by id and by GPA. The ranges never overlap (the kernel's EEXIST rule)."""

    def __init__(self, max_slots: int):
        self.max_slots = max_slots
        self._by_id: dict[int, Slot] = {}
        self._by_gpa: SortedDict = SortedDict()  # start -> slot id
        self._free = FreeIds(max_slots, self._by_id)
        self.total_bytes = 0  # kept current: reading it is O(1)

    def __len__(self) -> int:
        return len(self._by_id)

    def get(self, slot_id: int) -> Slot | None:
        return self._by_id.get(slot_id)

    def lowest_free_id(self) -> int | None:
        return self._free.lowest()

    def highest_free_id(self) -> int | None:
        return self._free.highest()

    def first_overlap(self, gpa: Range, *, ignore: int | None = None) -> Slot | None:
        """The slot overlapping ``gpa`` with the lowest address, if any: O(log n).

        Slots never overlap each other, so only two can be the first: the one starting at or
        before ``gpa.start`` and the one starting right after it."""
        before = floor_key(self._by_gpa, gpa.start)
        if before is not None:
            slot = self._by_id[self._by_gpa[before]]
            if slot.guest_phys_addr + slot.memory_size > gpa.start and slot.slot_id != ignore:
                return slot
        after = higher_key(self._by_gpa, gpa.start)
        while after is not None and after < gpa.end:
            slot = self._by_id[self._by_gpa[after]]
            if slot.slot_id != ignore:
                return slot
            after = higher_key(self._by_gpa, after)  # only the ignored slot is skipped: at most once
        return None

    def overlapping(self, gpa: Range) -> Iterator[Slot]:
        """Slots intersecting ``gpa`` in address order: O(log n + k)."""
        first = floor_key(self._by_gpa, gpa.start)
        for start in self._by_gpa.irange(minimum=gpa.start if first is None else first):
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

    def replace(self, slot: Slot) -> None:
        old = self._by_id[slot.slot_id]
        del self._by_gpa[old.guest_phys_addr]
        self._by_gpa[slot.guest_phys_addr] = slot.slot_id
        self._by_id[slot.slot_id] = slot

    def remove(self, slot_id: int) -> Slot:
        slot = self._by_id.pop(slot_id)
        self.total_bytes -= slot.memory_size
        del self._by_gpa[slot.guest_phys_addr]
        self._free.give_back(slot_id)
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
        """A binding overlapping ``r`` (other than slot ``ignore``'s), in O(log n).

        Bindings never overlap each other: as for slots, only the binding at or before
        ``r.start`` and those right after it can overlap."""
        start = floor_key(self._by_offset, r.start)
        if start is None or self._by_offset[start][0] <= r.start:
            start = higher_key(self._by_offset, r.start)
        while start is not None and start < r.end:
            end, slot_id = self._by_offset[start]
            if slot_id != ignore:
                return slot_id, Range(start, end)
            start = higher_key(self._by_offset, start)
        return None

    def bind(self, r: Range, slot_id: int) -> None:
        self._by_offset[r.start] = (r.end, slot_id)

    def unbind(self, offset: int) -> None:
        del self._by_offset[offset]

    def __iter__(self) -> Iterator[tuple[int, Range]]:
        for start, (end, slot_id) in self._by_offset.items():
            yield slot_id, Range(start, end)
