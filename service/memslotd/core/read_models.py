"""Read models: what the core answers to queries, as values (the API maps them to the wire).

The API never walks the core's records or tables: every read is a query method of a service
that returns one of these. ``id`` and ``created_at`` are ``None`` in the answer of a dry-run
create (the object that would be made).
"""

from __future__ import annotations

from .records import GmemRecord, ShmRecord, VMRecord
from .slot_table import Slot
from .value_type import value_type

__all__ = [
    "VMView",
    "GuestMemfdView",
    "GmemBindingView",
    "SharedMemoryView",
    "SlotView",
    "SlotPage",
    "AttributeRun",
    "AttributePage",
    "DirtyLog",
    "ProbeReport",
    "HostUsage",
    "vm_view",
    "gmem_view",
    "shm_view",
]


@value_type
class VMView:
    id: str | None
    type: str
    name: str | None
    created_at: float | None
    enforcement: str  # "kernel" or "daemon": who enforces private/shared for this VM
    memslots_used: int
    memslots_max: int  # the slot budget: KVM_CAP_NR_MEMSLOTS
    guest_memfds: int
    shared_memory_regions: int
    slot_bytes: int  # what the slots map, of which private_bytes are private now
    private_bytes: int
    guest_memfd_bytes: int  # the sizes of its objects (committed memory is the budget's)
    shared_memory_bytes: int


@value_type
class GmemBindingView:
    slot: int
    offset: int
    size: int
    guest_phys_addr: int


@value_type
class GuestMemfdView:
    id: str | None
    name: str | None
    size: int
    flags: tuple[str, ...]
    created_at: float | None
    bindings: tuple[GmemBindingView, ...]


@value_type
class SharedMemoryView:
    id: str | None
    name: str | None
    size: int
    hugepages: str | None
    page_size: int
    created_at: float | None
    used_by_slots: tuple[int, ...]


@value_type
class SlotView:
    """A slot and which backing a guest access to it really reaches (``core.backing``)."""

    slot: Slot
    guest_backing: str


@value_type
class SlotPage:
    items: tuple[SlotView, ...]
    next_gpa: int | None  # the cursor of the next page: the last item's GPA, None on the last page
    total: int


@value_type
class AttributeRun:
    guest_phys_addr: int
    size: int
    state: str


@value_type
class AttributePage:
    ranges: tuple[AttributeRun, ...]
    enforcement: str
    next_gpa: int | None


@value_type
class DirtyLog:
    slot: int
    page_size: int
    pages: int
    bitmap: bytes  # KVM's, bit i = page i
    ranges: tuple[tuple[int, int], ...] | None  # run-length (gpa, size), when asked for


@value_type
class ProbeReport:
    results: list[dict[str, object]]
    enforcement: str


@value_type
class HostUsage:
    committed_bytes: int
    mem_total: int
    mem_available: int


def vm_view(vm: VMRecord) -> VMView:
    return VMView(
        vm.id,
        vm.type,
        vm.name,
        vm.created_at,
        vm.enforcement,
        len(vm.slots),
        vm.slots.max_slots,
        len(vm.gmems),
        len(vm.shms),
        vm.slots.total_bytes,
        vm.attributes.private_bytes,
        sum(g.size for g in vm.gmems.values()),
        sum(m.size for m in vm.shms.values()),
    )


def gmem_view(vm: VMRecord, gmem: GmemRecord) -> GuestMemfdView:
    bindings = []
    for slot_id, r in gmem.bindings:
        slot = vm.slots.get(slot_id)
        bindings.append(GmemBindingView(slot_id, r.start, r.size, slot.guest_phys_addr if slot else 0))
    return GuestMemfdView(gmem.id, gmem.name, gmem.size, gmem.flags, gmem.created_at, tuple(bindings))


def shm_view(shm: ShmRecord) -> SharedMemoryView:
    return SharedMemoryView(
        shm.id, shm.name, shm.size, shm.hugepages, shm.page_size, shm.created_at, tuple(sorted(shm.users))
    )
