"""Which backing a guest access to a slot really reaches: the truth behind ``guest_backing``.

Clients decide where guest data lives from it (before a convert that discards a side), so
it is derived from what the kernel does, per combination:

* shared part only: the shared memory.
* a guest_memfd with ``mmap`` (the slot is ``KVM_MEMSLOT_GMEM_ONLY``): with TDP every guest
  fault is served from the guest_memfd, whatever ``userspace_addr`` is; under shadow paging
  (PVM) KVM walks ``userspace_addr`` instead: the shared part if there is one, the daemon's
  mmap of the guest_memfd for a guest_memfd-only slot, nothing (MMIO) without either.
  Which of the two the host does is asked of the kernel at start (``gmem_only_honoured``).
* a guest_memfd without ``mmap``: on a kernel-enforced VM the attribute selects the side per
  page (``per_attribute``); elsewhere no fault is ever private and the guest_memfd is inert.
"""

from __future__ import annotations

from .records import VMRecord
from .slot_table import Slot

__all__ = ["guest_backing"]


def guest_backing(vm: VMRecord, slot: Slot, gmem_only_honoured: bool | None) -> str:
    """``shared_memory``, ``guest_memfd``, ``per_attribute`` or ``none``."""
    shared = "shared_memory" if slot.shared is not None else "none"
    if slot.private is None:
        return shared
    gmem = vm.gmems.get(slot.private.object_id)
    if gmem is not None and "mmap" in gmem.flags:
        if gmem_only_honoured:
            return "guest_memfd"
        if slot.userspace_addr_source == "guest_memfd_mmap":
            return "guest_memfd"
        return shared
    return "per_attribute" if vm.kernel_attributes else shared
