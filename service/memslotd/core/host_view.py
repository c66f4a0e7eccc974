"""The host view: what the host reads and writes in a backing object, next to the probe's guest view.

A test rig compares the two at every step: the shared memory behind ``userspace_addr``
and the shared pages of an mmap-able guest_memfd can be read and written through the
daemon's own mapping (the SIGBUS guard turns a refused fault into EFAULT). Pages the
attribute map holds private are refused before any access: the kernel refuses them too
(a private guest_memfd page is never host-faultable; a guest_memfd without ``mmap`` has
no host mapping at all, and ``read()`` on it fails).
"""

from __future__ import annotations

from typing import Any

from .attributes import PRIVATE
from .errors import Conflict, InvalidRequest, kernel_error
from .probe import MAX_PROBE_BYTES
from .ranges import Range
from .records import GmemRecord, ShmRecord, VMRecord
from .registry import Registry

__all__ = ["HostViewService"]


class HostViewService:
    def __init__(self, registry: Registry):
        self.reg = registry

    def _object(self, vm: VMRecord, kind: str, object_id: str) -> GmemRecord | ShmRecord:
        return self.reg.gmem(vm, object_id) if kind == "guest_memfd" else self.reg.shm(vm, object_id)

    @staticmethod
    def _check_range(obj: GmemRecord | ShmRecord, offset: int, length: int) -> Range:
        if not 0 < length <= MAX_PROBE_BYTES:
            raise InvalidRequest(f"length must be 1..{MAX_PROBE_BYTES}", code="HOST_VIEW_OUT_OF_BOUNDS")
        if offset < 0 or offset + length > obj.size:
            raise InvalidRequest(
                f"[{offset:#x}, {offset + length:#x}) is outside {obj.id} (size {obj.size:#x})",
                code="RANGE_OUTSIDE_BACKING",
            )
        return Range(offset, offset + length)

    @staticmethod
    def backs(vm: VMRecord, obj: GmemRecord | ShmRecord, r: Range) -> list[dict[str, Any]]:
        """The guest-physical pieces these bytes back, with the attribute state of each run."""
        if isinstance(obj, GmemRecord):
            bound = [(slot_id, b.start) for slot_id, b in obj.bindings]
        else:
            bound = [
                (slot_id, slot.shared.offset)
                for slot_id in sorted(obj.users)
                if (slot := vm.slots.get(slot_id)) is not None and slot.shared is not None
            ]
        pieces: list[dict[str, Any]] = []
        for slot_id, part_offset in bound:
            slot = vm.slots.get(slot_id)
            if slot is None:
                continue
            clip = Range(part_offset, part_offset + slot.memory_size).intersection(r)
            if clip is None:
                continue
            gpa = Range(slot.guest_phys_addr + clip.start - part_offset, slot.guest_phys_addr + clip.end - part_offset)
            for run, state in vm.attributes.runs(gpa):
                pieces.append({"slot": slot_id, "guest_phys_addr": run.start, "size": run.size, "state": state})
        return pieces

    def _plan(
        self, vm: VMRecord, kind: str, object_id: str, offset: int, length: int
    ) -> tuple[GmemRecord | ShmRecord, Range, list[dict[str, Any]]]:
        obj = self._object(vm, kind, object_id)
        r = self._check_range(obj, offset, length)
        if isinstance(obj, GmemRecord) and "mmap" not in obj.flags:
            raise Conflict(
                f"guest_memfd {obj.id} was created without mmap: the host cannot map it "
                "(the kernel answers mmap with ENODEV and read() with an error)",
                code="GMEM_NOT_MAPPABLE",
            )
        backs = self.backs(vm, obj, r)
        private = [p for p in backs if p["state"] == PRIVATE]
        if isinstance(obj, GmemRecord) and private:
            raise Conflict(
                f"{obj.id} [{offset:#x}, {r.end:#x}) backs private guest memory: the host may not access it",
                code="HOST_ACCESS_PRIVATE",
                private=private[:64],
            )
        # a shared-mapping access populates the pages it touches, reads included (shmem and
        # guest_memfd map no zero page): counted against the byte quotas before the copy
        self.reg.budget.check(vm, self.reg.budget.unpopulated(obj, self._pages(r)), "the host access")
        return obj, r, backs

    def _pages(self, r: Range) -> Range:
        page = self.reg.page_size
        return Range(r.start - r.start % page, -(-r.end // page) * page)

    async def read(self, vm_id: str, kind: str, object_id: str, offset: int, length: int) -> dict[str, Any]:
        vm = self.reg.vm(vm_id)
        async with vm.mutation():  # no conversion punches the range while we copy
            obj, r, backs = self._plan(vm, kind, object_id, offset, length)
            try:
                data = await self.reg.blocking(self._copy_out, obj, r)
            except OSError as exc:
                raise self._refused(exc, obj) from exc
            finally:
                self.reg.budget.mark([(obj, self._pages(r))])
            return {"offset": r.start, "length": r.size, "data_hex": data.hex(), "backs": backs}

    async def write(self, vm_id: str, kind: str, object_id: str, offset: int, data: bytes) -> dict[str, Any]:
        vm = self.reg.vm(vm_id)
        async with vm.mutation():
            obj, r, backs = self._plan(vm, kind, object_id, offset, len(data))
            try:
                await self.reg.blocking(self._copy_in, obj, r, data)
            except OSError as exc:
                raise self._refused(exc, obj) from exc
            finally:
                self.reg.budget.mark([(obj, self._pages(r))])
            self.reg.emit(
                "memory.host_write", vm.id, **{f"{kind}_id": obj.id}, offset=r.start, length=r.size, gpa_ranges=backs
            )
            return {"offset": r.start, "length": r.size, "backs": backs}

    @staticmethod
    def _mapping(obj: GmemRecord | ShmRecord) -> Any:
        return obj.port.map() if isinstance(obj, GmemRecord) else obj.port.mapping

    def _copy_out(self, obj: GmemRecord | ShmRecord, r: Range) -> bytes:
        return bytes(self._mapping(obj).read(r.start, r.size))

    def _copy_in(self, obj: GmemRecord | ShmRecord, r: Range, data: bytes) -> None:
        self._mapping(obj).write(r.start, data)

    @staticmethod
    def _refused(exc: OSError, obj: GmemRecord | ShmRecord) -> Exception:
        cause = kernel_error(exc, f"host access to {obj.id}")
        return Conflict(
            f"the kernel refused the host access: {cause.detail} (a guest_memfd without init_shared "
            "serves no host faults)",
            code="HOST_ACCESS_REFUSED",
            **cause.extra,
        )
