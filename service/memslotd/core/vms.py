"""VM use cases: create, list, get, delete (``api/routes/vms.py``), and the shutdown teardown."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from .errors import CapabilityMissing, Conflict, DomainError, QuotaExceeded, kernel_error
from .ranges import Range
from .read_models import VMView, vm_view
from .records import VMRecord, new_id
from .registry import Registry
from .slot_table import MemslotTable

__all__ = ["VMService"]


class VMService:
    def __init__(self, registry: Registry):
        self.reg = registry

    def _check_name_free(self, name: str | None) -> None:
        for other in self.reg.vms.values():
            if name is not None and other.name == name:
                raise Conflict(
                    f"a VM named {name!r} exists ({other.id}): VM names are unique", code="NAME_TAKEN", id=other.id
                )

    def _check_quota(self) -> None:
        vms, limit = self.reg.vms, self.reg.limits.max_vms
        if len(vms) >= limit:
            raise QuotaExceeded(f"the daemon already runs {len(vms)} VMs", code="VM_QUOTA", limit=limit)

    async def create(self, vm_type: str, name: str | None, *, dry_run: bool = False) -> VMView:
        """The new VM; for a dry run that passed every rule, the VM it would make (no id)."""
        reg = self.reg
        if vm_type not in reg.host.vm_types:
            raise CapabilityMissing(
                f"VM type {vm_type!r} is not supported by this host",
                required=vm_type,
                supported=list(reg.host.vm_types),
            )
        reg.refuse_if_closing()
        self._check_quota()
        self._check_name_free(name)
        if dry_run:
            return VMView(None, vm_type, name, None, reg.enforcement, 0, reg.max_slots, 0, 0, 0, 0, 0, 0)
        try:
            port = await reg.blocking(reg.kernel.create_vm, vm_type)
        except OSError as exc:
            raise kernel_error(exc, "create VM") from exc
        try:  # another create may have taken the name (or the last VM) while the kernel worked
            self._check_name_free(name)
            self._check_quota()
        except DomainError:
            port.close()
            raise
        if reg.closing:  # the stop began while the kernel made it: never announce it
            await reg.blocking(port.close)
            reg.refuse_if_closing()
        vm = VMRecord(
            new_id("vm"),
            vm_type,
            name,
            port,
            MemslotTable(reg.max_slots),
            reg.limits.max_pending_per_vm,
            kernel_attributes=reg.kernel_attributes_for(vm_type),
            guest_memfd_flags=reg.guest_memfd_flags_for(vm_type),
        )
        reg.vms[vm.id] = vm
        reg.emit("vm.created", vm.id, type=vm_type, name=name, enforcement=vm.enforcement)
        return vm_view(vm)

    def list(self) -> list[VMView]:
        return [vm_view(vm) for vm in self.reg.vms.values()]

    def get(self, vm_id: str) -> VMView:
        return vm_view(self.reg.vm(vm_id))

    def count(self) -> int:
        return len(self.reg.vms)

    def release(self, vm_id: str) -> dict[str, Any]:
        """What deleting the VM would release (a dry-run delete): every object and discard."""
        reg = self.reg
        vm = reg.vm(vm_id)
        return {
            "vm_id": vm.id,
            "memslots": [s.slot_id for s in vm.slots],
            "guest_memfds": list(vm.gmems),
            "shared_memory": list(vm.shms),
            "slot_bytes": vm.slots.total_bytes,
            "guest_memfd_bytes": sum(g.size for g in vm.gmems.values()),
            "shared_memory_bytes": sum(m.size for m in vm.shms.values()),
            "invalidations": [reg.gmem_invalidation(vm, g, Range(0, g.size), "vm_delete") for g in vm.gmems.values()],
        }

    async def delete(self, vm_id: str, *, teardown: bool = False) -> None:
        reg = self.reg
        vm = reg.vm(vm_id)
        async with vm.mutation(teardown=teardown):
            vm.deleted = True
            del reg.vms[vm.id]
            invalidations = [
                reg.gmem_invalidation(vm, gmem, Range(0, gmem.size), "vm_delete") for gmem in vm.gmems.values()
            ]
            for info in invalidations:
                reg.emit("memory.invalidate_start", vm.id, **info)
            await reg.blocking(self._close_vm_objects, vm)
            for info in invalidations:
                reg.emit("memory.invalidate_end", vm.id, **info)
            for slot in vm.slots:
                reg.emit("memslot.deleted", vm.id, slot=slot.slot_id, reason="vm_delete")
            for gmem in vm.gmems.values():
                reg.emit("guest_memfd.deleted", vm.id, id=gmem.id)
            for shm in vm.shms.values():
                reg.emit("shared_memory.deleted", vm.id, id=shm.id)
            reg.emit("vm.deleted", vm.id)

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
        self.reg.closing = True
        for _ in range(1000):  # bounded; each round waits for whatever holds a VM's lock
            if not self.reg.vms:
                return
            for vm_id in list(self.reg.vms):
                with contextlib.suppress(DomainError):
                    await self.delete(vm_id, teardown=True)
            await asyncio.sleep(0.001)
