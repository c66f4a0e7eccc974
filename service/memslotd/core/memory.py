"""A VM's memory (``api/routes/memory.py``): the attribute map, read a page at a time, and
private <-> shared conversion, in QEMU's order (``kvm_convert_memory``).

Per changed piece: (1) ``KVM_SET_MEMORY_ATTRIBUTES`` where the host has it, then
(2) discard the stale side — to shared: punch the guest_memfd; to private: punch
the shared memfd — then (3) commit the piece to the attribute map and announce it.
Enforcement is a property of the VM: on a VM whose type has memory attributes
(``sw_protected``, CoCo types) the kernel routes each guest fault by attribute and the
map mirrors what it was told (``enforcement: "kernel"``); elsewhere (default VMs on
hosts without attributes) the map is the authority (``"daemon"``) and every response says so.

Pieces are processed in chunks, each chunk's syscalls in one worker-thread call,
so a huge range neither blocks the event loop nor pays a thread hop per piece.
A failure stops at the failing piece: the attribute change of that piece is rolled
back; pieces before it stay converted (a discard cannot be undone) and are reported.
Every ``invalidate_start`` gets its ``invalidate_end``: with ``error`` for the failed piece,
``cancelled`` for the pieces of its chunk that were announced but not attempted.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .attributes import PRIVATE, SHARED, attribute_bits
from .errors import Conflict, DomainError, HostResourcesExhausted, kernel_error
from .memslots import GPA_LIMIT
from .ranges import Range, check_aligned_range
from .read_models import AttributePage, AttributeRun
from .records import VMRecord
from .registry import Registry
from .slot_table import Slot

__all__ = ["MemoryService", "ConversionResult", "ConversionFailed"]

CHUNK = 1024  # pieces per worker-thread call


@dataclasses.dataclass(frozen=True, slots=True)
class Piece:
    """One changed sub-range inside one slot."""

    gpa: Range
    slot: Slot
    old: str

    def backing_offset(self, part_offset: int) -> int:
        return part_offset + self.gpa.start - self.slot.guest_phys_addr


@dataclasses.dataclass
class ConversionResult:
    changed: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    unchanged: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    discarded: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    enforcement: str = "daemon"


class ConversionFailed(DomainError):
    """A kernel call failed part-way; ``extra`` says exactly what was converted before it."""

    code = "CONVERSION_PARTIAL"
    title = "Conversion stopped part-way"


class MemoryService:
    def __init__(self, registry: Registry):
        self.reg = registry

    def attributes(
        self, vm_id: str, gpa_start: int, gpa_end: int, limit: int, after: int | None = None
    ) -> AttributePage:
        """Up to ``limit`` run-length private/shared ranges in ``[gpa_start, gpa_end)`` from
        ``after`` (a previous page's ``next_gpa``) on; gaps between slots are not guest memory."""
        vm = self.reg.vm(vm_id)
        start = gpa_start if after is None else max(gpa_start, after)
        ranges: list[AttributeRun] = []
        next_gpa = None
        for r, state in vm.attributes.runs(Range(start, max(gpa_end, start + 1))):
            if len(ranges) == limit:
                next_gpa = r.start
                break
            ranges.append(AttributeRun(r.start, r.size, state))
        return AttributePage(tuple(ranges), vm.enforcement, next_gpa)

    def _plan(self, vm: VMRecord, r: Range, to: str) -> tuple[list[Piece], list[Range]]:
        """Check coverage and private parts; return the pieces that change and those already in state."""
        slots = list(vm.slots.overlapping(r))
        covered = sum(
            s.gpa_range.end - s.gpa_range.start - max(0, r.start - s.guest_phys_addr) - max(0, s.gpa_range.end - r.end)
            for s in slots
        )
        if covered != r.size:
            gaps: list[dict[str, int]] = []
            cursor = r.start
            for s in slots:
                if s.guest_phys_addr > cursor:
                    gaps.append({"guest_phys_addr": cursor, "size": s.guest_phys_addr - cursor})
                cursor = max(cursor, s.gpa_range.end)
            if cursor < r.end:
                gaps.append({"guest_phys_addr": cursor, "size": r.end - cursor})
            raise Conflict(
                f"[{r.start:#x}, {r.end:#x}) is not fully covered by memslots", code="RANGE_NOT_COVERED", gaps=gaps[:64]
            )
        if to == PRIVATE:
            lacking = [s.slot_id for s in slots if s.private is None]
            if lacking:
                raise Conflict(
                    f"slots {lacking[:16]} have no private part: they cannot hold private memory",
                    code="NO_PRIVATE_PART",
                    slots=lacking[:64],
                )
        pieces: list[Piece] = []
        unchanged: list[Range] = []
        for slot in slots:
            clip = slot.gpa_range.intersection(r)
            assert clip is not None
            for run, state in vm.attributes.runs(clip):
                if state == to:
                    unchanged.append(run)
                else:
                    pieces.append(Piece(run, slot, state))
        return pieces, unchanged

    async def convert(self, vm_id: str, gpa: int, size: int, to: str, discard: bool = True) -> ConversionResult:
        r = check_aligned_range(gpa, size, self.reg.page_size, what="conversion range", limit=GPA_LIMIT)
        vm = self.reg.vm(vm_id)
        async with vm.mutation():
            pieces, unchanged = self._plan(vm, r, to)
            result = ConversionResult(unchanged=[_range(u) for u in _merge(unchanged)], enforcement=vm.enforcement)
            for start in range(0, len(pieces), CHUNK):
                await self._convert_chunk(vm, pieces[start : start + CHUNK], to, discard, result)
            return result

    async def preview(self, vm_id: str, gpa: int, size: int, to: str, discard: bool = True) -> ConversionResult:
        """A dry run: every rule of ``convert`` checked, the answer it would give, nothing changed.

        Kept apart from ``convert`` on purpose: it shares only the planning (``_plan``) and the
        shape of each discard (``_invalidation``), never the kernel-calling path.
        """
        r = check_aligned_range(gpa, size, self.reg.page_size, what="conversion range", limit=GPA_LIMIT)
        vm = self.reg.vm(vm_id)
        async with vm.mutation():  # in the VM's order: never a half-done conversion's state
            pieces, unchanged = self._plan(vm, r, to)
        result = ConversionResult(unchanged=[_range(u) for u in _merge(unchanged)], enforcement=self.reg.enforcement)
        for piece in pieces:
            result.changed.append({**_range(piece.gpa), "slot": piece.slot.slot_id, "from": piece.old, "to": to})
            info = self._invalidation(vm, piece, to) if discard else None
            if info is not None:
                result.discarded.append({k: v for k, v in info.items() if k != "gpa_ranges"} | _range(piece.gpa))
        return result

    async def _convert_chunk(
        self, vm: VMRecord, chunk: list[Piece], to: str, discard: bool, result: ConversionResult
    ) -> None:
        invalidations = [self._invalidation(vm, p, to) if discard else None for p in chunk]
        for info in invalidations:
            if info is not None:
                self.reg.emit("memory.invalidate_start", vm.id, **info)
        done, error = await self.reg.blocking(self._apply, vm, chunk, to, discard)
        # invalidations cover the whole chunk, only its first ``done`` pieces were applied
        for piece, info in zip(chunk[:done], invalidations, strict=False):
            self._commit(vm, piece, to, info, result)
        if error is not None:
            failed = invalidations[done]
            if failed is not None:
                self.reg.emit("memory.invalidate_end", vm.id, **failed, error=error.errno)
            for info in invalidations[done + 1 :]:  # announced with the chunk, never attempted
                if info is not None:
                    self.reg.emit("memory.invalidate_end", vm.id, **info, cancelled=True)
            cause = kernel_error(error, "convert")
            failure = ConversionFailed(
                f"stopped at [{chunk[done].gpa.start:#x}, {chunk[done].gpa.end:#x}): {cause.detail}",
                changed=result.changed,
                discarded=result.discarded,
                failed_at=_range(chunk[done].gpa),
                errno=cause.extra.get("errno"),
                errno_name=cause.extra.get("errno_name"),
                ioctl=cause.extra.get("ioctl"),
            )
            failure.status = 503 if isinstance(cause, HostResourcesExhausted) else 500
            raise failure from error

    def _apply(self, vm: VMRecord, chunk: list[Piece], to: str, discard: bool) -> tuple[int, OSError | None]:
        """Worker thread: attribute, then discard, piece by piece. Returns (pieces done, error)."""
        for i, piece in enumerate(chunk):
            attr_set = False
            try:
                if vm.kernel_attributes:
                    vm.port.set_memory_attributes(piece.gpa.start, piece.gpa.size, attribute_bits(to))
                    attr_set = True
                if discard:
                    self._discard(vm, piece, to)
            except OSError as exc:
                if attr_set:  # roll back what can be rolled back: the attribute of this piece
                    try:
                        vm.port.set_memory_attributes(piece.gpa.start, piece.gpa.size, attribute_bits(piece.old))
                    except OSError:
                        pass
                return i, exc
        return len(chunk), None

    @staticmethod
    def _discard(vm: VMRecord, piece: Piece, to: str) -> None:
        slot = piece.slot
        if to == SHARED and slot.private is not None:
            vm.gmems[slot.private.object_id].port.punch_hole(piece.backing_offset(slot.private.offset), piece.gpa.size)
        elif to == PRIVATE and slot.shared is not None:
            vm.shms[slot.shared.object_id].port.punch_hole(piece.backing_offset(slot.shared.offset), piece.gpa.size)

    @staticmethod
    def _invalidation(vm: VMRecord, piece: Piece, to: str) -> dict[str, Any] | None:
        """The discard this piece will do (None when the stale side has no backing)."""
        slot = piece.slot
        gpa = [{"slot": slot.slot_id, "guest_phys_addr": piece.gpa.start, "size": piece.gpa.size}]
        if to == SHARED and slot.private is not None:
            return {
                "reason": "convert_to_shared",
                "guest_memfd_id": slot.private.object_id,
                "offset": piece.backing_offset(slot.private.offset),
                "length": piece.gpa.size,
                "gpa_ranges": gpa,
            }
        if to == PRIVATE and slot.shared is not None:
            return {
                "reason": "convert_to_private",
                "shared_memory_id": slot.shared.object_id,
                "offset": piece.backing_offset(slot.shared.offset),
                "length": piece.gpa.size,
                "gpa_ranges": gpa,
            }
        return None

    def _commit(
        self, vm: VMRecord, piece: Piece, to: str, info: dict[str, Any] | None, result: ConversionResult
    ) -> None:
        vm.attributes.assign(piece.gpa, to)
        self.reg.stats.conversions += 1
        self.reg.stats.converted_bytes += piece.gpa.size
        self.reg.stats.discarded_bytes += piece.gpa.size if info is not None else 0
        changed = {**_range(piece.gpa), "slot": piece.slot.slot_id, "from": piece.old, "to": to}
        result.changed.append(changed)
        if info is not None:
            self.reg.budget.release_discarded(vm, info)
            self.reg.emit("memory.invalidate_end", vm.id, **info)
            result.discarded.append({k: v for k, v in info.items() if k != "gpa_ranges"} | _range(piece.gpa))
        self.reg.emit("memory.converted", vm.id, **changed, enforcement=vm.enforcement, discarded=info is not None)


def _range(r: Range) -> dict[str, int]:
    return {"guest_phys_addr": r.start, "size": r.size}


def _merge(ranges: list[Range]) -> list[Range]:
    out: list[Range] = []
    for r in ranges:
        if out and out[-1].end == r.start:
            out[-1] = Range(out[-1].start, r.end)
        else:
            out.append(r)
    return out
