"""The private/shared attribute map of one VM: run-length intervals over GPAs.

No per-page objects: one SortedDict entry per maximal run, the value packing
``end << 1 | private``. Lookups and updates cost O(log n + k) for k runs touched.
Adjacent runs with the same state are always merged.
"""

from __future__ import annotations

from collections.abc import Iterator

from sortedcontainers import SortedDict

from ..uapi import KVM_MEMORY_ATTRIBUTE_PRIVATE
from .ranges import Range
from .sorted_keys import floor_key

__all__ = ["AttributeMap", "PRIVATE", "SHARED", "attribute_bits"]

PRIVATE = "private"
SHARED = "shared"


def attribute_bits(state: str) -> int:
    """The ``KVM_SET_MEMORY_ATTRIBUTES`` value that means ``state`` (shared is 0)."""
    return KVM_MEMORY_ATTRIBUTE_PRIVATE if state == PRIVATE else 0


def _pack(end: int, state: str) -> int:
    return end << 1 | (state == PRIVATE)


def _unpack(value: int) -> tuple[int, str]:
    return value >> 1, PRIVATE if value & 1 else SHARED


class AttributeMap:
    def __init__(self) -> None:
        self._runs: SortedDict = SortedDict()  # start -> packed(end, state)
        self.private_bytes = 0  # kept current by every update: reading it is O(1)

    def __len__(self) -> int:
        """Number of runs (fragments)."""
        return len(self._runs)

    # Lookups bisect the sublists (floor_key, irange) and never index by position:
    # SortedList rebuilds its positional index after every insert or delete.
    def _run_at_or_before(self, pos: int) -> int | None:
        return floor_key(self._runs, pos)

    def _split_at(self, pos: int) -> None:
        start = self._run_at_or_before(pos)
        if start is None or start == pos:
            return
        end, state = _unpack(self._runs[start])
        if pos < end:
            self._runs[start] = _pack(pos, state)
            self._runs[pos] = _pack(end, state)

    def _pieces(self, r: Range) -> list[tuple[int, int, str]]:
        """Runs inside ``r`` after splitting at its ends."""
        return [(s, *_unpack(self._runs[s])) for s in self._runs.irange(r.start, r.end, inclusive=(True, False))]

    def _merge_around(self, r: Range) -> None:
        """Merge equal-state neighbours from the run before ``r`` to the run after it."""
        before = next(self._runs.irange(maximum=r.start, inclusive=(True, False), reverse=True), r.start)
        keys = []
        for start in self._runs.irange(minimum=before):
            keys.append(start)
            if start > r.end:
                break
        prev: tuple[int, int, str] | None = None
        for start in keys:
            end, state = _unpack(self._runs[start])
            if prev is not None and prev[1] == start and prev[2] == state:
                del self._runs[start]
                self._runs[prev[0]] = _pack(end, state)
                prev = (prev[0], end, state)
            else:
                prev = (start, end, state)

    def add(self, r: Range, state: str) -> None:
        """Cover a new (uncovered) range, e.g. a new slot: O(log n)."""
        self._add(r.start, r.end, state)

    def _add(self, start: int, end: int, state: str) -> None:
        # Only two runs can merge with [start, end): the one ending at start (the run at or
        # before it) and the one starting at end (a plain dict lookup).
        runs = self._runs
        if state == PRIVATE:
            self.private_bytes += end - start
        before = floor_key(runs, start - 1) if start else None
        if before is not None and runs[before] == _pack(start, state):
            start = before
        after = runs.get(end)
        if after is not None and (after & 1) == (state == PRIVATE):
            del runs[end]
            end = after >> 1
        runs[start] = _pack(end, state)

    def add_many(self, items: list[tuple[int, int, str]]) -> None:
        """``add`` for many disjoint uncovered ``(start, end, state)``; touching ones of one
        state go in as one run."""
        for start, end, state in _coalesce(items, same_state=True):
            self._add(start, end, state)

    def remove(self, r: Range) -> None:
        """Forget a range, e.g. a deleted slot."""
        self._split_at(r.start)
        self._split_at(r.end)
        for start, end, state in self._pieces(r):
            del self._runs[start]
            if state == PRIVATE:
                self.private_bytes -= end - start

    def remove_many(self, ranges: list[tuple[int, int]]) -> None:
        """``remove`` for many disjoint ``(start, end)``; touching ones are removed as one."""
        for start, end, _ in _coalesce([(start, end, SHARED) for start, end in ranges], same_state=False):
            self.remove(Range(start, end))

    def assign(self, r: Range, state: str) -> list[tuple[Range, str]]:
        """Set the covered parts of ``r`` to ``state``; return the pieces that changed with their old state."""
        self._split_at(r.start)
        self._split_at(r.end)
        changed: list[tuple[Range, str]] = []
        for start, end, old in self._pieces(r):
            if old != state:
                self._runs[start] = _pack(end, state)
                self.private_bytes += (end - start) if state == PRIVATE else -(end - start)
                if changed and changed[-1][0].end == start and changed[-1][1] == old:
                    changed[-1] = (Range(changed[-1][0].start, end), old)
                else:
                    changed.append((Range(start, end), old))
        self._merge_around(r)
        return changed

    def runs(self, r: Range) -> Iterator[tuple[Range, str]]:
        """Runs intersecting ``r``, clipped to it, in address order."""
        first = self._run_at_or_before(r.start)
        for start in self._runs.irange(minimum=first if first is not None else r.start):
            if start >= r.end:
                return
            end, state = _unpack(self._runs[start])
            piece = Range(start, end).intersection(r)
            if piece is not None:
                yield piece, state

    def state_at(self, gpa: int) -> str | None:
        for _, state in self.runs(Range(gpa, gpa + 1)):
            return state
        return None


def _coalesce(items: list[tuple[int, int, str]], *, same_state: bool) -> list[tuple[int, int, str]]:
    """Sort disjoint ranges and join the touching ones (of one state, if ``same_state``)."""
    out: list[tuple[int, int, str]] = []
    for start, end, state in sorted(items):
        if out and out[-1][1] == start and (not same_state or out[-1][2] == state):
            out[-1] = (out[-1][0], end, state)
        else:
            out.append((start, end, state))
    return out
