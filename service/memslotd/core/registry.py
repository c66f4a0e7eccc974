"""The registry: the daemon's VMs and what every use-case service shares.

It holds the state (VMs by id, the kernel port, the event log, limits, stats, the memory
budget), looks objects up (404 when unknown) and emits events. The use cases live in the
services named after the route files: ``vms``, ``memory_objects``, ``memslots``,
``memory``, ``probe``, ``host_view`` (and ``batch`` under ``memslots``). They follow one
shape: (1) validate every rule the kernel would check, (2) make the kernel calls (slow ones
off the event loop), releasing whatever a failure left half-made, (3) commit the daemon's
state, (4) emit the event.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

from ..uapi import KVM_MEMORY_ATTRIBUTE_PRIVATE
from .budget import MemoryBudget
from .errors import NotFound, ShuttingDown
from .events import EventLog
from .limits import Limits
from .ports import KernelPort
from .ranges import Range
from .records import GmemRecord, ShmRecord, VMRecord
from .stats import Stats

__all__ = ["Registry"]

T = TypeVar("T")


class Registry:
    def __init__(self, kernel: KernelPort, events: EventLog, limits: Limits):
        self.kernel = kernel
        self.host = kernel.host
        self.events = events
        self.limits = limits
        self.vms: dict[str, VMRecord] = {}
        self.stats = Stats()
        self.page_size = self.host.page_size
        self.max_slots = self.host.max_memslots  # slot ids: 0 .. KVM_CAP_NR_MEMSLOTS-1
        # Enforcement is a property of the VM type (see enforcement_for); this is a default VM's.
        self.enforcement = self.enforcement_for("default")
        self.budget = MemoryBudget(self, limits)
        self._closing = False

    @property
    def closing(self) -> bool:
        """Set once at shutdown: every mutation from then on answers 503 ``SHUTTING_DOWN``."""
        return self._closing

    @closing.setter
    def closing(self, value: bool) -> None:
        self._closing = value
        for vm in self.vms.values():
            vm.closing = value

    def refuse_if_closing(self) -> None:
        if self._closing:
            raise ShuttingDown("the daemon is shutting down: no more changes")

    # -- helpers ------------------------------------------------------------------
    def kernel_attributes_for(self, vm_type: str) -> bool:
        """KVM enforces private/shared on VMs of ``vm_type`` only when such a VM reports
        KVM_MEMORY_ATTRIBUTE_PRIVATE and has the ioctl built in."""
        caps = self.host.per_vm_type.get(vm_type)
        return (
            caps is not None
            and bool(caps.memory_attributes & KVM_MEMORY_ATTRIBUTE_PRIVATE)
            and caps.memory_attributes_ioctl
        )

    def enforcement_for(self, vm_type: str) -> str:
        return "kernel" if self.kernel_attributes_for(vm_type) else "daemon"

    def guest_memfd_flags_for(self, vm_type: str) -> int:
        caps = self.host.per_vm_type.get(vm_type)
        return caps.guest_memfd_flags if caps is not None else self.host.guest_memfd_flags

    @staticmethod
    async def blocking(fn: Callable[..., T], *args: Any) -> T:
        """Run a kernel call off the event loop (cffi releases the GIL)."""
        return await asyncio.to_thread(fn, *args)

    def emit(self, type_: str, vm_id: str | None, **data: Any) -> None:
        self.events.append(type_, vm_id, data)

    def vm(self, vm_id: str) -> VMRecord:
        try:
            return self.vms[vm_id]
        except KeyError:
            raise NotFound(f"no VM {vm_id!r}", code="VM_NOT_FOUND", vm_id=vm_id) from None

    def gmem(self, vm: VMRecord, gmem_id: str) -> GmemRecord:
        try:
            return vm.gmems[gmem_id]
        except KeyError:
            raise NotFound(f"no guest_memfd {gmem_id!r} in VM {vm.id}", code="GUEST_MEMFD_NOT_FOUND") from None

    def shm(self, vm: VMRecord, shm_id: str) -> ShmRecord:
        try:
            return vm.shms[shm_id]
        except KeyError:
            raise NotFound(f"no shared memory {shm_id!r} in VM {vm.id}", code="SHARED_MEMORY_NOT_FOUND") from None

    def gmem_invalidation(self, vm: VMRecord, gmem: GmemRecord, file_range: Range, reason: str) -> dict[str, Any]:
        """The file range and the GPA range of every slot bound to it (as the kernel maps them)."""
        gpa_ranges = []
        for slot_id, bound in gmem.bindings:
            piece = bound.intersection(file_range)
            slot = vm.slots.get(slot_id)
            if piece is not None and slot is not None:
                gpa = slot.guest_phys_addr + piece.start - bound.start
                gpa_ranges.append({"slot": slot_id, "guest_phys_addr": gpa, "size": piece.size})
        return {
            "reason": reason,
            "guest_memfd_id": gmem.id,
            "offset": file_range.start,
            "length": file_range.size,
            "gpa_ranges": gpa_ranges,
        }
