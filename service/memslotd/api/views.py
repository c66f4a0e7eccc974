"""Domain values -> wire models (responses)."""

from __future__ import annotations

from typing import Any

from ..core.backing import guest_backing
from ..core.memslots import slot_event
from ..core.records import GmemRecord, ShmRecord, VMRecord
from ..core.registry import GMEM_FLAG_BITS, HUGEPAGE_SIZES, Registry
from ..core.slot_table import Slot

__all__ = ["vm_read", "vm_plan", "gmem_plan", "shm_plan", "gmem_read", "shm_read", "slot_read"]


def vm_read(vm: VMRecord, enforcement: str) -> dict[str, Any]:
    used = len(vm.slots)
    return {
        "id": vm.id, "type": vm.type, "name": vm.name, "created_at": vm.created_at,
        "memslots": {"used": used, "free": vm.slots.max_slots - used, "max": vm.slots.max_slots},
        "guest_memfds": len(vm.gmems), "shared_memory_regions": len(vm.shms),
        "guest_memfd_bytes": sum(g.size for g in vm.gmems.values()),
        "shared_memory_bytes": sum(m.size for m in vm.shms.values()),
        "slot_bytes": vm.slots.total_bytes, "private_bytes": vm.attributes.private_bytes,
        "conversion_enforcement": enforcement,
    }


def vm_plan(reg: Registry, vm_type: str, name: str | None) -> dict[str, Any]:
    """The VM a dry-run create would make (VMPlan): empty, with the whole slot budget."""
    return {"type": vm_type, "name": name, "memslots": {"used": 0, "free": reg.max_slots, "max": reg.max_slots},
            "guest_memfds": 0, "shared_memory_regions": 0, "guest_memfd_bytes": 0, "shared_memory_bytes": 0,
            "slot_bytes": 0, "private_bytes": 0, "conversion_enforcement": reg.enforcement}


def gmem_plan(name: str | None, size: int, flags: list[str]) -> dict[str, Any]:
    return {"name": name, "size": size, "flags": [f for f in GMEM_FLAG_BITS if f in flags], "bindings": []}


def shm_plan(reg: Registry, name: str | None, size: int, hugepages: str | None) -> dict[str, Any]:
    page = HUGEPAGE_SIZES[hugepages] if hugepages else reg.page_size
    return {"name": name, "size": size, "hugepages": hugepages, "page_size": page, "used_by_slots": []}


def gmem_read(vm: VMRecord, gmem: GmemRecord) -> dict[str, Any]:
    bindings = []
    for slot_id, r in gmem.bindings:
        slot = vm.slots.get(slot_id)
        bindings.append({"slot": slot_id, "offset": r.start, "size": r.size,
                         "guest_phys_addr": slot.guest_phys_addr if slot else 0})
    return {"id": gmem.id, "name": gmem.name, "size": gmem.size, "flags": list(gmem.flags), "created_at": gmem.created_at,
            "bindings": bindings}


def shm_read(shm: ShmRecord) -> dict[str, Any]:
    return {"id": shm.id, "name": shm.name, "size": shm.size, "hugepages": shm.hugepages, "page_size": shm.page_size,
            "created_at": shm.created_at, "used_by_slots": sorted(shm.users)}


def slot_read(vm: VMRecord, slot: Slot, gmem_only_honoured: bool | None) -> dict[str, Any]:
    """The slot as events show it, plus what only a read carries."""
    return {
        **slot_event(slot), "address_space": 0,
        "guest_backing": guest_backing(vm, slot, gmem_only_honoured),
        "userspace_addr_source": slot.userspace_addr_source, "immutable": slot.immutable,
        "created_at": slot.created_at, "generation": slot.generation,
    }


