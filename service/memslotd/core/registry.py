"""VMs and the memory objects they own: create, look up, delete; lifecycle events.

Use cases follow one shape: (1) validate every rule the kernel would check,
(2) make the kernel calls (slow ones off the event loop), releasing whatever a failure left
half-made, (3) commit the daemon's state, (4) emit the event.
"""

from __future__ import annotations

import asyncio
import errno as _errno
import contextlib
from collections.abc import Callable
from typing import Any, TypeVar

from ..uapi import GUEST_MEMFD_FLAG_INIT_SHARED, GUEST_MEMFD_FLAG_MMAP, KVM_MEMORY_ATTRIBUTE_PRIVATE
from .budget import MemoryBudget
from .errors import (CapabilityMissing, Conflict, DomainError, InvalidRequest, NotFound, QuotaExceeded, ShuttingDown,
                     kernel_error)
from .events import EventLog
from .limits import Limits, hugepage_pool
from .ports import KernelPort
from .ranges import MAX_JSON_INT, Range, check_aligned_range
from .records import GmemRecord, ShmRecord, VMRecord, new_id
from .slot_table import MemslotTable
from .stats import Stats

__all__ = ["Registry", "GMEM_FLAG_BITS", "HUGEPAGE_SIZES"]

T = TypeVar("T")
GMEM_FLAG_BITS = {"mmap": GUEST_MEMFD_FLAG_MMAP, "init_shared": GUEST_MEMFD_FLAG_INIT_SHARED}
HUGEPAGE_SIZES = {"2M": 2 << 20, "1G": 1 << 30}


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

    def _refuse_if_closing(self) -> None:
        if self._closing:
            raise ShuttingDown("the daemon is shutting down: no more changes")

    # -- helpers ------------------------------------------------------------------
    def kernel_attributes_for(self, vm_type: str) -> bool:
        """KVM enforces private/shared on VMs of ``vm_type`` only when such a VM reports
        KVM_MEMORY_ATTRIBUTE_PRIVATE and has the ioctl built in."""
        caps = self.host.per_vm_type.get(vm_type)
        return caps is not None and bool(caps.memory_attributes & KVM_MEMORY_ATTRIBUTE_PRIVATE) and caps.memory_attributes_ioctl

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

    # -- VMs ----------------------------------------------------------------------
    def _check_vm_name_free(self, name: str | None) -> None:
        for other in self.vms.values():
            if name is not None and other.name == name:
                raise Conflict(f"a VM named {name!r} exists ({other.id}): VM names are unique", code="NAME_TAKEN",
                               id=other.id)

    async def create_vm(self, vm_type: str, name: str | None, *, dry_run: bool = False) -> VMRecord | None:
        """The new VM; ``None`` for a dry run that passed every rule (nothing was made)."""
        if vm_type not in self.host.vm_types:
            raise CapabilityMissing(f"VM type {vm_type!r} is not supported by this host",
                                    required=vm_type, supported=list(self.host.vm_types))
        self._refuse_if_closing()
        if len(self.vms) >= self.limits.max_vms:
            raise QuotaExceeded(f"the daemon already runs {len(self.vms)} VMs", code="VM_QUOTA", limit=self.limits.max_vms)
        self._check_vm_name_free(name)
        if dry_run:
            return None
        try:
            port = await self.blocking(self.kernel.create_vm, vm_type)
        except OSError as exc:
            raise kernel_error(exc, "create VM") from exc
        try:  # another create may have taken the name (or the last VM) while the kernel worked
            self._check_vm_name_free(name)
            if len(self.vms) >= self.limits.max_vms:
                raise QuotaExceeded(f"the daemon already runs {len(self.vms)} VMs", code="VM_QUOTA",
                                    limit=self.limits.max_vms)
        except DomainError:
            port.close()
            raise
        if self._closing:  # the stop began while the kernel made it: never announce it
            await self.blocking(port.close)
            self._refuse_if_closing()
        vm = VMRecord(new_id("vm"), vm_type, name, port, MemslotTable(self.max_slots), self.limits.max_pending_per_vm,
                      kernel_attributes=self.kernel_attributes_for(vm_type),
                      guest_memfd_flags=self.guest_memfd_flags_for(vm_type))
        self.vms[vm.id] = vm
        self.emit("vm.created", vm.id, type=vm_type, name=name, enforcement=vm.enforcement)
        return vm

    def vm_release(self, vm_id: str) -> dict[str, Any]:
        """What deleting the VM would release (a dry-run delete): every object and discard."""
        vm = self.vm(vm_id)
        return {
            "vm_id": vm.id, "memslots": [s.slot_id for s in vm.slots], "guest_memfds": list(vm.gmems),
            "shared_memory": list(vm.shms), "slot_bytes": vm.slots.total_bytes,
            "guest_memfd_bytes": sum(g.size for g in vm.gmems.values()),
            "shared_memory_bytes": sum(m.size for m in vm.shms.values()),
            "invalidations": [self.gmem_invalidation(vm, g, Range(0, g.size), "vm_delete") for g in vm.gmems.values()],
        }

    async def delete_vm(self, vm_id: str, *, teardown: bool = False) -> None:
        vm = self.vm(vm_id)
        async with vm.mutation(teardown=teardown):
            vm.deleted = True
            del self.vms[vm.id]
            invalidations = [self.gmem_invalidation(vm, gmem, Range(0, gmem.size), "vm_delete") for gmem in vm.gmems.values()]
            for info in invalidations:
                self.emit("memory.invalidate_start", vm.id, **info)
            await self.blocking(self._close_vm_objects, vm)
            for info in invalidations:
                self.emit("memory.invalidate_end", vm.id, **info)
            for slot in vm.slots:
                self.emit("memslot.deleted", vm.id, slot=slot.slot_id, reason="vm_delete")
            for gmem in vm.gmems.values():
                self.emit("guest_memfd.deleted", vm.id, id=gmem.id)
            for shm in vm.shms.values():
                self.emit("shared_memory.deleted", vm.id, id=shm.id)
            self.emit("vm.deleted", vm.id)

    @staticmethod
    def _close_vm_objects(vm: VMRecord) -> None:
        """Close the vCPU, the VM fd, every guest_memfd (they pin the VM) and memfd."""
        with contextlib.ExitStack() as stack:
            for shm in vm.shms.values():
                stack.callback(shm.port.close)
            for gmem in vm.gmems.values():
                stack.callback(gmem.port.close)
            stack.callback(vm.port.close)
            if vm.runner is not None:
                stack.callback(vm.runner.close)

    async def close_all(self) -> None:
        """Shutdown: refuse further mutations, delete every VM (events included), closing every fd.
        Loops until none is left: a VM whose create was past its last check is deleted too."""
        self.closing = True
        for _ in range(1000):  # bounded; each round waits for whatever holds a VM's lock
            if not self.vms:
                return
            for vm_id in list(self.vms):
                with contextlib.suppress(DomainError):
                    await self.delete_vm(vm_id, teardown=True)
            await asyncio.sleep(0.001)

    # -- guest_memfd --------------------------------------------------------------
    @staticmethod
    def _check_name_free(vm: VMRecord, name: str | None) -> None:
        if name is None:
            return
        objects: list[GmemRecord | ShmRecord] = [*vm.gmems.values(), *vm.shms.values()]
        for obj in objects:
            if obj.name == name:
                raise Conflict(f"VM {vm.id} already has an object named {name!r} ({obj.id})", code="NAME_TAKEN", id=obj.id)

    async def create_gmem(self, vm_id: str, size: int, flags: list[str], name: str | None = None, *,
                          dry_run: bool = False) -> GmemRecord | None:
        """The new guest_memfd; ``None`` for a dry run that passed every rule."""
        vm = self.vm(vm_id)
        check_aligned_range(0, size, self.page_size, what="guest_memfd size")
        bits = 0
        for flag in flags:
            bits |= GMEM_FLAG_BITS[flag]
        if bits & ~vm.guest_memfd_flags:  # GC1: the flags a VM of this type accepts
            supported = [n for n, b in GMEM_FLAG_BITS.items() if b & vm.guest_memfd_flags]
            raise CapabilityMissing(f"guest_memfd flags {sorted(flags)} are not all supported by {vm.type} VMs here",
                                    required=sorted(flags), supported=supported, vm_type=vm.type)
        if bits == GMEM_FLAG_BITS["init_shared"]:
            raise InvalidRequest("init_shared needs mmap (host faults are only served on mappable guest_memfds)",
                                 code="FLAGS_INCOMPATIBLE")
        async with vm.mutation():
            self._check_name_free(vm, name)
            self.budget.check_size(vm, size, "a guest_memfd")
            if dry_run:
                return None
            try:
                port = await self.blocking(vm.port.create_guest_memfd, size, bits)
            except OSError as exc:
                raise kernel_error(exc, "create guest_memfd") from exc
            gmem = GmemRecord(new_id("gmem"), size, tuple(n for n in GMEM_FLAG_BITS if n in flags), port, name)
            vm.gmems[gmem.id] = gmem
            self.emit("guest_memfd.created", vm.id, id=gmem.id, name=name, size=size, flags=list(gmem.flags))
            return gmem

    def gmem_invalidation(self, vm: VMRecord, gmem: GmemRecord, file_range: Range, reason: str) -> dict[str, Any]:
        """The file range and the GPA range of every slot bound to it (as the kernel maps them)."""
        gpa_ranges = []
        for slot_id, bound in gmem.bindings:
            piece = bound.intersection(file_range)
            slot = vm.slots.get(slot_id)
            if piece is not None and slot is not None:
                gpa = slot.guest_phys_addr + piece.start - bound.start
                gpa_ranges.append({"slot": slot_id, "guest_phys_addr": gpa, "size": piece.size})
        return {"reason": reason, "guest_memfd_id": gmem.id, "offset": file_range.start,
                "length": file_range.size, "gpa_ranges": gpa_ranges}

    def _file_range(self, gmem_size: int, offset: int, length: int) -> Range:
        r = check_aligned_range(offset, length, self.page_size, what="guest_memfd range")
        if r.end > gmem_size:
            raise InvalidRequest(f"range [{offset:#x}, {r.end:#x}) exceeds the guest_memfd size {gmem_size:#x}",
                                 code="RANGE_OUTSIDE_BACKING")
        return r

    async def punch_gmem(self, vm_id: str, gmem_id: str, offset: int, length: int, *,
                         dry_run: bool = False) -> dict[str, Any]:
        """The invalidated ranges (for a dry run: those it would invalidate)."""
        vm = self.vm(vm_id)
        async with vm.mutation():
            gmem = self.gmem(vm, gmem_id)
            r = self._file_range(gmem.size, offset, length)
            info = self.gmem_invalidation(vm, gmem, r, "punch_hole")
            if dry_run:
                return info
            self.emit("memory.invalidate_start", vm.id, **info)
            try:
                await self.blocking(gmem.port.punch_hole, r.start, r.size)
            except OSError as exc:
                raise kernel_error(exc, "punch hole") from exc
            finally:
                self.emit("memory.invalidate_end", vm.id, **info)
            self.budget.release(gmem, r)
            self.stats.punched_bytes += r.size
            return info

    async def allocate_gmem(self, vm_id: str, gmem_id: str, offset: int, length: int, *, dry_run: bool = False) -> None:
        vm = self.vm(vm_id)
        async with vm.mutation():
            gmem = self.gmem(vm, gmem_id)
            r = self._file_range(gmem.size, offset, length)
            self.budget.check(vm, self.budget.unpopulated(gmem, r), "allocate")
            if dry_run:
                return
            try:
                await self.blocking(gmem.port.allocate, r.start, r.size)
            except OSError as exc:
                raise kernel_error(exc, "allocate") from exc
            finally:  # a failed fallocate may have populated part of the range: count it
                self.budget.mark([(gmem, r)])
            self.emit("memory.allocated", vm.id, guest_memfd_id=gmem.id, offset=r.start, length=r.size)

    async def inject_memory_error(self, vm_id: str, gmem_id: str, offset: int) -> dict[str, Any]:
        """Test rig: poison one page of a mappable guest_memfd for real, then announce it."""
        vm = self.vm(vm_id)
        async with vm.mutation():
            gmem = self.gmem(vm, gmem_id)
            r = self._file_range(gmem.size, offset, self.page_size)
            if not gmem.port.mappable:
                raise Conflict(f"guest_memfd {gmem.id} has no host mapping (needs mmap and init_shared)",
                               code="GMEM_NOT_MAPPABLE")
            try:
                code, how = await self.blocking(gmem.port.inject_hwpoison, r.start)
            except OSError as exc:
                raise kernel_error(exc, "inject memory error") from exc
            if code in (_errno.EINVAL, _errno.EPERM, _errno.ENOSYS):
                raise CapabilityMissing(
                    f"the kernel refused madvise(MADV_HWPOISON) with {_errno.errorcode[code]}: memory-failure "
                    "injection needs CONFIG_MEMORY_FAILURE and CAP_SYS_ADMIN", errno=code,
                    errno_name=_errno.errorcode[code], ioctl="madvise(MADV_HWPOISON)")
            info = self.gmem_invalidation(vm, gmem, r, "memory_error")
            info.update(kernel_errno=code or None, kernel_errno_name=_errno.errorcode.get(code), injector=how,
                        action="page poisoned; guest access gets EHWPOISON; punch-hole recovers it")
            self.emit("memory.error", vm.id, **info)
            return info

    async def delete_gmem(self, vm_id: str, gmem_id: str, *, dry_run: bool = False) -> None:
        vm = self.vm(vm_id)
        async with vm.mutation():
            gmem = self.gmem(vm, gmem_id)
            if len(gmem.bindings):
                slots = sorted(s for s, _ in gmem.bindings)
                raise Conflict(f"guest_memfd {gmem.id} is bound to slots {slots[:16]}", code="GMEM_BOUND", slots=slots[:64])
            if dry_run:
                return
            info = self.gmem_invalidation(vm, gmem, Range(0, gmem.size), "guest_memfd_close")
            self.emit("memory.invalidate_start", vm.id, **info)
            del vm.gmems[gmem.id]
            await self.blocking(gmem.port.close)
            self.emit("memory.invalidate_end", vm.id, **info)
            self.emit("guest_memfd.deleted", vm.id, id=gmem.id)

    # -- shared memory --------------------------------------------------------------
    async def create_shm(self, vm_id: str, size: int, hugepages: str | None, name: str | None = None, *,
                         dry_run: bool = False) -> ShmRecord | None:
        """The new region; ``None`` for a dry run that passed every rule."""
        vm = self.vm(vm_id)
        page = HUGEPAGE_SIZES[hugepages] if hugepages else self.page_size
        check_aligned_range(0, size, page, what="shared memory size", limit=MAX_JSON_INT)
        async with vm.mutation():
            self._check_name_free(vm, name)
            self.budget.check_size(vm, size, "a shared memory")
            if hugepages:  # hugetlb pages are reserved when the daemon maps the memfd
                self.budget.check(vm, size, f"a {hugepages} hugetlb shared memory")
            if dry_run:
                return None
            shm_id = new_id("shm")
            try:
                port = await self.blocking(self.kernel.create_shared_memory, f"memslotd-{vm.id}-{shm_id}", size,
                                           HUGEPAGE_SIZES.get(hugepages or ""))
            except OSError as exc:
                if hugepages and exc.errno == _errno.ENOMEM:
                    raise self._hugepages_refused(hugepages, size, exc) from exc
                raise kernel_error(exc, "create shared memory") from exc
            shm = ShmRecord(shm_id, size, hugepages, page, port, name)
            if hugepages:
                self.budget.mark([(shm, Range(0, size))])
            vm.shms[shm.id] = shm
            self.emit("shared_memory.created", vm.id, id=shm.id, name=name, size=size, hugepages=hugepages)
            return shm

    @staticmethod
    def _hugepages_refused(hugepages: str, size: int, exc: OSError) -> DomainError:
        """ENOMEM from a hugetlb mapping: no pool reserved (configuration), or too few free pages."""
        page = HUGEPAGE_SIZES[hugepages]
        reserved, free = hugepage_pool(page)
        knob = "sysctl vm.nr_hugepages=N" if page == 2 << 20 else \
            f"echo N > /sys/kernel/mm/hugepages/hugepages-{page >> 10}kB/nr_hugepages"
        needed = -(-size // page)
        extra = {"hugepage_size": page, "hugepages_needed": needed, "hugepages_reserved": reserved,
                 "hugepages_free": free, "errno": exc.errno, "errno_name": "ENOMEM", "ioctl": "mmap(MAP_HUGETLB)"}
        if not reserved:
            return CapabilityMissing(f"no {hugepages} huge pages are reserved on this host: reserve a pool first "
                                     f"({knob})", code="HUGEPAGES_NOT_RESERVED", **extra)
        return QuotaExceeded(f"{needed} {hugepages} huge pages needed, {free} of the {reserved} reserved are free "
                             f"(grow the pool: {knob})", bytes_quota=True, code="HUGEPAGES_EXHAUSTED", **extra)

    async def delete_shm(self, vm_id: str, shm_id: str, *, dry_run: bool = False) -> None:
        vm = self.vm(vm_id)
        async with vm.mutation():
            shm = self.shm(vm, shm_id)
            if shm.users:
                raise Conflict(f"shared memory {shm.id} backs slots {sorted(shm.users)[:16]}", code="SHARED_MEMORY_IN_USE",
                               slots=sorted(shm.users)[:64])
            if dry_run:
                return
            del vm.shms[shm.id]
            await self.blocking(shm.port.close)
            self.emit("shared_memory.deleted", vm.id, id=shm.id)
