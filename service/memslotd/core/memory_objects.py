"""guest_memfds (the private part) and shared memory (the shared part) of a VM's memslots:
create, list, get, delete, allocate, punch, inject a memory error (``api/routes/memory_objects.py``)."""

from __future__ import annotations

import errno as _errno
from typing import Any

from ..uapi import GUEST_MEMFD_FLAG_INIT_SHARED, GUEST_MEMFD_FLAG_MMAP
from .errors import CapabilityMissing, Conflict, DomainError, InvalidRequest, QuotaExceeded, kernel_error
from .limits import hugepage_pool
from .ranges import MAX_JSON_INT, Range, check_aligned_range
from .read_models import GuestMemfdView, SharedMemoryView, gmem_view, shm_view
from .records import GmemRecord, ShmRecord, VMRecord, new_id
from .registry import Registry

__all__ = ["MemoryObjectService", "GMEM_FLAG_BITS", "HUGEPAGE_SIZES"]

#: guest_memfd flag names (in the order responses list them) and their KVM bits
GMEM_FLAG_BITS = {"mmap": GUEST_MEMFD_FLAG_MMAP, "init_shared": GUEST_MEMFD_FLAG_INIT_SHARED}
HUGEPAGE_SIZES = {"2M": 2 << 20, "1G": 1 << 30}


def _listed(items: list[Any], shown: int = 16) -> str:
    """``1, 2, 3`` for a problem's detail (the problem's own field carries the list)."""
    text = ", ".join(map(str, items[:shown]))
    return text + (f", … ({len(items)} in all)" if len(items) > shown else "")


class MemoryObjectService:
    def __init__(self, registry: Registry):
        self.reg = registry

    # -- reads ------------------------------------------------------------------------
    def list_gmems(self, vm_id: str) -> list[GuestMemfdView]:
        vm = self.reg.vm(vm_id)
        return [gmem_view(vm, g) for g in vm.gmems.values()]

    def get_gmem(self, vm_id: str, gmem_id: str) -> GuestMemfdView:
        vm = self.reg.vm(vm_id)
        return gmem_view(vm, self.reg.gmem(vm, gmem_id))

    def list_shms(self, vm_id: str) -> list[SharedMemoryView]:
        return [shm_view(m) for m in self.reg.vm(vm_id).shms.values()]

    def get_shm(self, vm_id: str, shm_id: str) -> SharedMemoryView:
        return shm_view(self.reg.shm(self.reg.vm(vm_id), shm_id))

    # -- guest_memfd --------------------------------------------------------------
    @staticmethod
    def _check_name_free(vm: VMRecord, name: str | None) -> None:
        if name is None:
            return
        objects: list[GmemRecord | ShmRecord] = [*vm.gmems.values(), *vm.shms.values()]
        for obj in objects:
            if obj.name == name:
                raise Conflict(
                    f"VM {vm.id} already has an object named {name!r} ({obj.id})", code="NAME_TAKEN", id=obj.id
                )

    async def create_gmem(
        self, vm_id: str, size: int, flags: list[str], name: str | None = None, *, dry_run: bool = False
    ) -> GuestMemfdView:
        """The new guest_memfd; for a dry run that passed every rule, the one it would make (no id)."""
        vm = self.reg.vm(vm_id)
        check_aligned_range(0, size, self.reg.page_size, what="guest_memfd size")
        bits = 0
        for flag in flags:
            bits |= GMEM_FLAG_BITS[flag]
        if bits & ~vm.guest_memfd_flags:  # GC1: the flags a VM of this type accepts
            supported = [n for n, b in GMEM_FLAG_BITS.items() if b & vm.guest_memfd_flags]
            raise CapabilityMissing(
                f"guest_memfd flags {_listed(sorted(flags))} are not all supported by {vm.type} VMs here "
                f"(supported: {_listed(supported) or 'none'})",
                required=sorted(flags),
                supported=supported,
                vm_type=vm.type,
            )
        if bits == GMEM_FLAG_BITS["init_shared"]:
            raise InvalidRequest(
                "init_shared needs mmap (host faults are only served on mappable guest_memfds)",
                code="FLAGS_INCOMPATIBLE",
            )
        async with vm.mutation():
            self._check_name_free(vm, name)
            self.reg.budget.check_size(vm, size, "a guest_memfd")
            if dry_run:
                return GuestMemfdView(None, name, size, tuple(f for f in GMEM_FLAG_BITS if f in flags), None, ())
            try:
                port = await self.reg.blocking(vm.port.create_guest_memfd, size, bits)
            except OSError as exc:
                raise kernel_error(exc, "create guest_memfd") from exc
            gmem = GmemRecord(new_id("gmem"), size, tuple(n for n in GMEM_FLAG_BITS if n in flags), port, name)
            vm.gmems[gmem.id] = gmem
            self.reg.emit("guest_memfd.created", vm.id, id=gmem.id, name=name, size=size, flags=list(gmem.flags))
            return gmem_view(vm, gmem)

    def _file_range(self, gmem_size: int, offset: int, length: int) -> Range:
        r = check_aligned_range(offset, length, self.reg.page_size, what="guest_memfd range")
        if r.end > gmem_size:
            raise InvalidRequest(
                f"range [{offset:#x}, {r.end:#x}) exceeds the guest_memfd size {gmem_size:#x}",
                code="RANGE_OUTSIDE_BACKING",
            )
        return r

    async def punch_gmem(
        self, vm_id: str, gmem_id: str, offset: int, length: int, *, dry_run: bool = False
    ) -> dict[str, Any]:
        """The invalidated ranges (for a dry run: those it would invalidate)."""
        vm = self.reg.vm(vm_id)
        async with vm.mutation():
            gmem = self.reg.gmem(vm, gmem_id)
            r = self._file_range(gmem.size, offset, length)
            info = self.reg.gmem_invalidation(vm, gmem, r, "punch_hole")
            if dry_run:
                return info
            self.reg.emit("memory.invalidate_start", vm.id, **info)
            try:
                await self.reg.blocking(gmem.port.punch_hole, r.start, r.size)
            except OSError as exc:
                raise kernel_error(exc, "punch hole") from exc
            finally:
                self.reg.emit("memory.invalidate_end", vm.id, **info)
            self.reg.budget.release(gmem, r)
            self.reg.stats.punched_bytes += r.size
            return info

    async def allocate_gmem(self, vm_id: str, gmem_id: str, offset: int, length: int, *, dry_run: bool = False) -> None:
        vm = self.reg.vm(vm_id)
        async with vm.mutation():
            gmem = self.reg.gmem(vm, gmem_id)
            r = self._file_range(gmem.size, offset, length)
            self.reg.budget.check(vm, self.reg.budget.unpopulated(gmem, r), "allocate")
            if dry_run:
                return
            try:
                await self.reg.blocking(gmem.port.allocate, r.start, r.size)
            except OSError as exc:
                raise kernel_error(exc, "allocate") from exc
            finally:  # a failed fallocate may have populated part of the range: count it
                self.reg.budget.mark([(gmem, r)])
            self.reg.emit("memory.allocated", vm.id, guest_memfd_id=gmem.id, offset=r.start, length=r.size)

    async def inject_memory_error(self, vm_id: str, gmem_id: str, offset: int) -> dict[str, Any]:
        """Test rig: poison one page of a mappable guest_memfd for real, then announce it."""
        vm = self.reg.vm(vm_id)
        async with vm.mutation():
            gmem = self.reg.gmem(vm, gmem_id)
            r = self._file_range(gmem.size, offset, self.reg.page_size)
            if not gmem.port.mappable:
                raise Conflict(
                    f"guest_memfd {gmem.id} has no host mapping (needs mmap and init_shared)", code="GMEM_NOT_MAPPABLE"
                )
            try:
                code, how = await self.reg.blocking(gmem.port.inject_hwpoison, r.start)
            except OSError as exc:
                raise kernel_error(exc, "inject memory error") from exc
            if code in (_errno.EINVAL, _errno.EPERM, _errno.ENOSYS):
                raise CapabilityMissing(
                    f"the kernel refused madvise(MADV_HWPOISON) with {_errno.errorcode[code]}: memory-failure "
                    "injection needs CONFIG_MEMORY_FAILURE and CAP_SYS_ADMIN",
                    errno=code,
                    errno_name=_errno.errorcode[code],
                    ioctl="madvise(MADV_HWPOISON)",
                )
            info = self.reg.gmem_invalidation(vm, gmem, r, "memory_error")
            info.update(
                kernel_errno=code or None,
                kernel_errno_name=_errno.errorcode.get(code),
                injector=how,
                action="page poisoned; guest access gets EHWPOISON; punch-hole recovers it",
            )
            self.reg.emit("memory.error", vm.id, **info)
            return info

    async def delete_gmem(self, vm_id: str, gmem_id: str, *, dry_run: bool = False) -> None:
        vm = self.reg.vm(vm_id)
        async with vm.mutation():
            gmem = self.reg.gmem(vm, gmem_id)
            if len(gmem.bindings):
                slots = sorted(s for s, _ in gmem.bindings)
                raise Conflict(
                    f"guest_memfd {gmem.id} is bound to slots {_listed(slots)}", code="GMEM_BOUND", slots=slots[:64]
                )
            if dry_run:
                return
            info = self.reg.gmem_invalidation(vm, gmem, Range(0, gmem.size), "guest_memfd_close")
            self.reg.emit("memory.invalidate_start", vm.id, **info)
            del vm.gmems[gmem.id]
            await self.reg.blocking(gmem.port.close)
            self.reg.emit("memory.invalidate_end", vm.id, **info)
            self.reg.emit("guest_memfd.deleted", vm.id, id=gmem.id)

    # -- shared memory --------------------------------------------------------------
    async def create_shm(
        self, vm_id: str, size: int, hugepages: str | None, name: str | None = None, *, dry_run: bool = False
    ) -> SharedMemoryView:
        """The new region; for a dry run that passed every rule, the one it would make (no id)."""
        vm = self.reg.vm(vm_id)
        page = HUGEPAGE_SIZES[hugepages] if hugepages else self.reg.page_size
        check_aligned_range(0, size, page, what="shared memory size", limit=MAX_JSON_INT)
        async with vm.mutation():
            self._check_name_free(vm, name)
            self.reg.budget.check_size(vm, size, "a shared memory")
            if hugepages:  # hugetlb pages are reserved when the daemon maps the memfd
                self.reg.budget.check(vm, size, f"a {hugepages} hugetlb shared memory")
            if dry_run:
                return SharedMemoryView(None, name, size, hugepages, page, None, ())
            shm_id = new_id("shm")
            try:
                port = await self.reg.blocking(
                    self.reg.kernel.create_shared_memory,
                    f"memslotd-{vm.id}-{shm_id}",
                    size,
                    HUGEPAGE_SIZES.get(hugepages or ""),
                )
            except OSError as exc:
                if hugepages and exc.errno == _errno.ENOMEM:
                    raise self._hugepages_refused(hugepages, size, exc) from exc
                raise kernel_error(exc, "create shared memory") from exc
            shm = ShmRecord(shm_id, size, hugepages, page, port, name)
            if hugepages:
                self.reg.budget.mark([(shm, Range(0, size))])
            vm.shms[shm.id] = shm
            self.reg.emit("shared_memory.created", vm.id, id=shm.id, name=name, size=size, hugepages=hugepages)
            return shm_view(shm)

    @staticmethod
    def _hugepages_refused(hugepages: str, size: int, exc: OSError) -> DomainError:
        """ENOMEM from a hugetlb mapping: no pool reserved (configuration), or too few free pages."""
        page = HUGEPAGE_SIZES[hugepages]
        reserved, free = hugepage_pool(page)
        knob = (
            "sysctl vm.nr_hugepages=N"
            if page == 2 << 20
            else f"echo N > /sys/kernel/mm/hugepages/hugepages-{page >> 10}kB/nr_hugepages"
        )
        needed = -(-size // page)
        extra = {
            "hugepage_size": page,
            "hugepages_needed": needed,
            "hugepages_reserved": reserved,
            "hugepages_free": free,
            "errno": exc.errno,
            "errno_name": "ENOMEM",
            "ioctl": "mmap(MAP_HUGETLB)",
        }
        if not reserved:
            return CapabilityMissing(
                f"no {hugepages} huge pages are reserved on this host: reserve a pool first ({knob})",
                code="HUGEPAGES_NOT_RESERVED",
                **extra,
            )
        return QuotaExceeded(
            f"{needed} {hugepages} huge pages needed, {free} of the {reserved} reserved are free "
            f"(grow the pool: {knob})",
            bytes_quota=True,
            code="HUGEPAGES_EXHAUSTED",
            **extra,
        )

    async def delete_shm(self, vm_id: str, shm_id: str, *, dry_run: bool = False) -> None:
        vm = self.reg.vm(vm_id)
        async with vm.mutation():
            shm = self.reg.shm(vm, shm_id)
            if shm.users:
                raise Conflict(
                    f"shared memory {shm.id} backs slots {_listed(sorted(shm.users))}",
                    code="SHARED_MEMORY_IN_USE",
                    slots=sorted(shm.users)[:64],
                )
            if dry_run:
                return
            del vm.shms[shm.id]
            await self.reg.blocking(shm.port.close)
            self.reg.emit("shared_memory.deleted", vm.id, id=shm.id)
