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

from .errors import CapabilityMissing, Conflict, DomainError, InvalidRequest, NotFound, QuotaExceeded, kernel_error
from .events import EventLog
from .limits import Limits
from .ports import KernelPort
from .ranges import MAX_JSON_INT, Range, check_aligned_range
from .records import GmemRecord, ShmRecord, VMRecord, new_id
from .slots import MemslotTable
from .stats import Stats

__all__ = ["Registry", "GMEM_FLAG_BITS", "HUGEPAGE_SIZES"]

T = TypeVar("T")
GMEM_FLAG_BITS = {"mmap": 1 << 0, "init_shared": 1 << 1}
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
        # KVM enforces private/shared only with KVM_MEMORY_ATTRIBUTE_PRIVATE and the ioctl built in.
        self.kernel_attributes = bool(self.host.memory_attributes & (1 << 3)) and self.host.memory_attributes_ioctl
        self.enforcement = "kernel" if self.kernel_attributes else "daemon"

    # -- helpers ------------------------------------------------------------------
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

    def _check_bytes_quota(self, vm: VMRecord, size: int) -> None:
        if vm.backing_bytes + size > self.limits.max_bytes_per_vm:
            raise QuotaExceeded(f"VM {vm.id} would hold more than {self.limits.max_bytes_per_vm} bytes",
                                bytes_quota=True, code="VM_MEMORY_QUOTA", limit=self.limits.max_bytes_per_vm)
        total = sum(v.backing_bytes for v in self.vms.values())
        if total + size > self.limits.max_bytes_total:
            raise QuotaExceeded(f"the daemon would hold more than {self.limits.max_bytes_total} bytes",
                                bytes_quota=True, code="DAEMON_MEMORY_QUOTA", limit=self.limits.max_bytes_total)

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
        vm = VMRecord(new_id("vm"), vm_type, name, port, MemslotTable(self.max_slots), self.limits.max_pending_per_vm)
        self.vms[vm.id] = vm
        self.emit("vm.created", vm.id, type=vm_type, name=name)
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

    async def delete_vm(self, vm_id: str) -> None:
        vm = self.vm(vm_id)
        async with vm.mutation():
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
        """Shutdown: delete every VM (events included), closing every fd."""
        for vm_id in list(self.vms):
            with contextlib.suppress(DomainError):
                await self.delete_vm(vm_id)

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
        if bits & ~self.host.guest_memfd_flags:
            supported = [n for n, b in GMEM_FLAG_BITS.items() if b & self.host.guest_memfd_flags]
            raise CapabilityMissing(f"guest_memfd flags {sorted(flags)} are not all supported here",
                                    required=sorted(flags), supported=supported)
        if bits == GMEM_FLAG_BITS["init_shared"]:
            raise InvalidRequest("init_shared needs mmap (host faults are only served on mappable guest_memfds)",
                                 code="FLAGS_INCOMPATIBLE")
        async with vm.mutation():
            self._check_name_free(vm, name)
            self._check_bytes_quota(vm, size)
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
            self.stats.punched_bytes += r.size
            return info

    async def allocate_gmem(self, vm_id: str, gmem_id: str, offset: int, length: int, *, dry_run: bool = False) -> None:
        vm = self.vm(vm_id)
        async with vm.mutation():
            gmem = self.gmem(vm, gmem_id)
            r = self._file_range(gmem.size, offset, length)
            if dry_run:
                return
            try:
                await self.blocking(gmem.port.allocate, r.start, r.size)
            except OSError as exc:
                raise kernel_error(exc, "allocate") from exc
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
            self._check_bytes_quota(vm, size)
            if dry_run:
                return None
            shm_id = new_id("shm")
            try:
                port = await self.blocking(self.kernel.create_shared_memory, f"memslotd-{vm.id}-{shm_id}", size,
                                           HUGEPAGE_SIZES.get(hugepages or ""))
            except OSError as exc:
                raise kernel_error(exc, "create shared memory") from exc
            shm = ShmRecord(shm_id, size, hugepages, page, port, name)
            vm.shms[shm.id] = shm
            self.emit("shared_memory.created", vm.id, id=shm.id, name=name, size=size, hugepages=hugepages)
            return shm

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
