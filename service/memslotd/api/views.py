"""The core's read models -> wire models (response bodies, as dicts in the schemas' shape)."""

from __future__ import annotations

from typing import Any

from ..core import GuestMemfdView, SharedMemoryView, SlotView, VMView

__all__ = ["vm_read", "vm_plan", "gmem_read", "gmem_plan", "shm_read", "shm_plan", "slot_read"]


def vm_plan(vm: VMView) -> dict[str, Any]:
    """The VM without what only creation makes (VMPlan: a dry-run create's answer)."""
    return {
        "type": vm.type,
        "name": vm.name,
        "memslots": {"used": vm.memslots_used, "free": vm.memslots_max - vm.memslots_used, "max": vm.memslots_max},
        "guest_memfds": vm.guest_memfds,
        "shared_memory_regions": vm.shared_memory_regions,
        "guest_memfd_bytes": vm.guest_memfd_bytes,
        "shared_memory_bytes": vm.shared_memory_bytes,
        "slot_bytes": vm.slot_bytes,
        "private_bytes": vm.private_bytes,
        "conversion_enforcement": vm.enforcement,
    }


def vm_read(vm: VMView) -> dict[str, Any]:
    return {"id": vm.id, **vm_plan(vm), "created_at": vm.created_at}


def gmem_plan(gmem: GuestMemfdView) -> dict[str, Any]:
    return {
        "name": gmem.name,
        "size": gmem.size,
        "flags": list(gmem.flags),
        "bindings": [
            {"slot": b.slot, "offset": b.offset, "size": b.size, "guest_phys_addr": b.guest_phys_addr}
            for b in gmem.bindings
        ],
    }


def gmem_read(gmem: GuestMemfdView) -> dict[str, Any]:
    return {"id": gmem.id, **gmem_plan(gmem), "created_at": gmem.created_at}


def shm_plan(shm: SharedMemoryView) -> dict[str, Any]:
    return {
        "name": shm.name,
        "size": shm.size,
        "hugepages": shm.hugepages,
        "page_size": shm.page_size,
        "used_by_slots": list(shm.used_by_slots),
    }


def shm_read(shm: SharedMemoryView) -> dict[str, Any]:
    return {"id": shm.id, **shm_plan(shm), "created_at": shm.created_at}


def slot_read(view: SlotView) -> dict[str, Any]:
    slot = view.slot
    return {
        "slot": slot.slot_id,
        "guest_phys_addr": slot.guest_phys_addr,
        "memory_size": slot.memory_size,
        "flags": list(slot.flags),
        "shared": {"shared_memory_id": slot.shared.object_id, "offset": slot.shared.offset} if slot.shared else None,
        "private": {"guest_memfd_id": slot.private.object_id, "offset": slot.private.offset} if slot.private else None,
        "address_space": 0,
        "guest_backing": view.guest_backing,
        "userspace_addr_source": slot.userspace_addr_source,
        "immutable": slot.immutable,
        "created_at": slot.created_at,
        "generation": slot.generation,
    }
