"""The memory budget: what the daemon has committed, checked before anything populates more.

Each guest_memfd and shared memory keeps a run-length map of the ranges that may hold pages
(``populated``), an upper bound the daemon maintains itself: ``allocate``, probe accesses and
hugetlb reservations mark ranges, punches and conversion discards clear them. Checks happen
before the kernel call, so a refused request commits nothing (see ``memslotd.core.limits``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from .attributes import PRIVATE, SHARED
from .errors import HostResourcesExhausted, QuotaExceeded
from .limits import Limits, MemInfo, read_meminfo
from .ranges import Range
from .records import GmemRecord, ShmRecord, VMRecord

if TYPE_CHECKING:
    from .registry import Registry

__all__ = ["MemoryBudget", "HostMemoryLow"]

Backing = GmemRecord | ShmRecord
POPULATED, EMPTY = PRIVATE, SHARED  # the two states of a ``populated`` map


class HostMemoryLow(HostResourcesExhausted):
    """The host cannot give the memory now (``MemAvailable`` minus the reserve): 503."""

    code = "HOST_MEMORY_LOW"
    title = "Host memory low"


class MemoryBudget:
    def __init__(self, registry: Registry, limits: Limits, meminfo: Callable[[], MemInfo] = read_meminfo):
        self.reg = registry
        self.limits = limits
        self.meminfo = meminfo

    @staticmethod
    def unpopulated(obj: Backing, r: Range) -> int:
        """Bytes of ``r`` in ``obj`` not yet counted as committed."""
        return sum(run.size for run, state in obj.populated.runs(r) if state == EMPTY)

    @staticmethod
    def committed_in(vm: VMRecord) -> int:
        return sum(g.populated.private_bytes for g in vm.gmems.values()) + sum(
            s.populated.private_bytes for s in vm.shms.values()
        )

    def committed(self) -> int:
        return sum(self.committed_in(vm) for vm in self.reg.vms.values())

    def check(self, vm: VMRecord, new: int, what: str) -> None:
        """Refuse (507 quota, 503 host) before ``new`` more bytes are populated in ``vm``."""
        if new <= 0:
            return
        limits = self.limits
        in_vm = self.committed_in(vm)
        if in_vm + new > limits.max_bytes_per_vm:
            raise QuotaExceeded(
                f"{what} would commit {new} bytes; VM {vm.id} holds {in_vm} of its {limits.max_bytes_per_vm}",
                bytes_quota=True,
                code="VM_MEMORY_QUOTA",
                limit=limits.max_bytes_per_vm,
                committed=in_vm,
                requested=new,
            )
        total = self.committed()
        if total + new > limits.max_bytes_total:
            raise QuotaExceeded(
                f"{what} would commit {new} bytes; the daemon holds {total} of its {limits.max_bytes_total}",
                bytes_quota=True,
                code="DAEMON_MEMORY_QUOTA",
                limit=limits.max_bytes_total,
                committed=total,
                requested=new,
            )
        info = self.meminfo()
        if info.available - new < limits.memory_reserve_bytes:
            raise HostMemoryLow(
                f"{what} needs {new} bytes; the host has {info.available} available and keeps "
                f"{limits.memory_reserve_bytes} in reserve",
                requested=new,
                mem_available=info.available,
                mem_total=info.total,
                reserve=limits.memory_reserve_bytes,
            )

    def check_size(self, vm: VMRecord, size: int, what: str) -> None:
        """An object that could never be populated within the quota is refused outright."""
        limit = min(self.limits.max_bytes_per_vm, self.limits.max_bytes_total)
        if size > limit:
            code = "VM_MEMORY_QUOTA" if limit == self.limits.max_bytes_per_vm else "DAEMON_MEMORY_QUOTA"
            raise QuotaExceeded(
                f"{what} of {size} bytes exceeds the byte quota of {limit}",
                bytes_quota=True,
                code=code,
                limit=limit,
                requested=size,
            )

    @staticmethod
    def mark(pieces: Iterable[tuple[Backing, Range]]) -> None:
        for obj, r in pieces:
            obj.populated.assign(r, POPULATED)

    @staticmethod
    def release(obj: Backing, r: Range) -> None:
        obj.populated.assign(r, EMPTY)

    def release_discarded(self, vm: VMRecord, invalidation: dict[str, Any]) -> None:
        """A conversion punched the stale side (its ``memory.invalidate_*`` payload)."""
        obj: Backing | None = (
            vm.gmems.get(invalidation["guest_memfd_id"])
            if "guest_memfd_id" in invalidation
            else vm.shms.get(invalidation.get("shared_memory_id", ""))
        )
        if obj is not None:
            self.release(obj, Range.of(invalidation["offset"], invalidation["length"]))

    @staticmethod
    def touched(vm: VMRecord, gpa: int, length: int, page_size: int) -> list[tuple[Backing, Range]]:
        """The backing pages a guest access to ``[gpa, +length)`` may populate: both parts of
        every slot it reaches (an upper bound, whichever part the guest is served from)."""
        start = gpa - gpa % page_size
        end = -(-(gpa + length) // page_size) * page_size
        r = Range(start, end)
        pieces: list[tuple[Backing, Range]] = []
        for slot in vm.slots.overlapping(r):
            clip = slot.gpa_range.intersection(r)
            if clip is None:
                continue
            into = clip.start - slot.guest_phys_addr
            if slot.private is not None and slot.private.object_id in vm.gmems:
                pieces.append((vm.gmems[slot.private.object_id], Range.of(slot.private.offset + into, clip.size)))
            if slot.shared is not None and slot.shared.object_id in vm.shms:
                pieces.append((vm.shms[slot.shared.object_id], Range.of(slot.shared.offset + into, clip.size)))
        return pieces
