"""The numbers memslotd shares with the kernel: KVM uAPI constants, limits and value types.

A leaf: stdlib only, nothing of memslotd is imported here, and every layer may import it.
``memslotd.kvm`` (which makes the calls) and ``memslotd.core`` (which checks every rule
first) both read their constants from this module, as rust-vmm's ``kvm-ioctls`` reads them
from ``kvm-bindings``. Values are those of ``include/uapi/linux/kvm.h`` and
``arch/x86/include/uapi/asm/kvm.h`` (Linux 6.18); docs/kernel-rules.md cites the checks.
"""

from __future__ import annotations

import dataclasses
import enum

__all__ = [
    "KVM_MEM_LOG_DIRTY_PAGES",
    "KVM_MEM_READONLY",
    "KVM_MEM_GUEST_MEMFD",
    "KVM_MEM_MAX_NR_PAGES",
    "GUEST_MEMFD_FLAG_MMAP",
    "GUEST_MEMFD_FLAG_INIT_SHARED",
    "KVM_MEMORY_ATTRIBUTE_PRIVATE",
    "KVM_MEMORY_EXIT_FLAG_PRIVATE",
    "Cap",
    "VM_TYPES",
    "ExitReason",
    "MMU_MAX_GPA",
    "PROBE_WINDOW_GPA",
    "PROBE_WINDOW_SIZE",
    "PROBE_MAX_OP_BYTES",
    "PROBE_MAX_GPA",
    "RegionArgs",
    "HostCapabilities",
    "VMTypeCapabilities",
]

# -- struct kvm_userspace_memory_region2.flags ---------------------------------------
KVM_MEM_LOG_DIRTY_PAGES = 1 << 0
KVM_MEM_READONLY = 1 << 1
KVM_MEM_GUEST_MEMFD = 1 << 2
#: Pages per user memslot (include/linux/kvm_host.h; rule M10).
KVM_MEM_MAX_NR_PAGES = (1 << 31) - 1
#: End of guest-physical space under shadow paging: kvm_mmu_max_gfn() covers 52 bits (rule X1).
MMU_MAX_GPA = 1 << 52

# -- struct kvm_create_guest_memfd.flags ---------------------------------------------
GUEST_MEMFD_FLAG_MMAP = 1 << 0
GUEST_MEMFD_FLAG_INIT_SHARED = 1 << 1

# -- memory attributes and memory-fault exits ----------------------------------------
KVM_MEMORY_ATTRIBUTE_PRIVATE = 1 << 3
#: ``run->memory_fault.flags``: the guest wanted the page private.
KVM_MEMORY_EXIT_FLAG_PRIVATE = 1 << 3


class Cap(enum.IntEnum):
    """``KVM_CHECK_EXTENSION`` numbers used by memslotd (never beyond 244: 245+ differ between
    trees and out-of-tree series)."""

    NR_MEMSLOTS = 10
    USER_MEMORY2 = 231
    MEMORY_FAULT_INFO = 232
    MEMORY_ATTRIBUTES = 233
    GUEST_MEMFD = 234
    VM_TYPES = 235
    PRE_FAULT_MEMORY = 236
    GUEST_MEMFD_FLAGS = 244


#: x86 VM types, name -> ``KVM_CREATE_VM`` argument (``KVM_X86_DEFAULT_VM`` = 0 …
#: ``KVM_X86_TDX_VM`` = 5); bit n of ``KVM_CAP_VM_TYPES`` offers type n.
VM_TYPES = {"default": 0, "sw_protected": 1, "sev": 2, "sev_es": 3, "snp": 4, "tdx": 5}


class ExitReason(enum.IntEnum):
    """``run->exit_reason`` (``KVM_EXIT_*``) for the exits the probe can meet; the lower-case
    name is the exit's name in memslotd (``hlt``, ``mmio``, ``memory_fault``)."""

    UNKNOWN = 0
    EXCEPTION = 1
    IO = 2
    HYPERCALL = 3
    DEBUG = 4
    HLT = 5
    MMIO = 6
    SHUTDOWN = 8
    FAIL_ENTRY = 9
    INTERNAL_ERROR = 17
    MEMORY_FAULT = 39

    @classmethod
    def name_of(cls, code: int) -> str:
        """memslotd's name of exit ``code``: ``hlt``, ``mmio``, … or ``exit_<code>`` for others."""
        try:
            return cls(code).name.lower()
        except ValueError:
            return f"exit_{code}"


# -- the guest probe's window --------------------------------------------------------
#: The top 2 MiB below 4 GiB (the x86 firmware/flash hole, never RAM) hold the probe's code
#: and page tables; no user memslot may overlap it.
PROBE_WINDOW_GPA = 0xFFE0_0000
PROBE_WINDOW_SIZE = 2 << 20
#: Bytes one probe access moves (the window's data buffer).
PROBE_MAX_OP_BYTES = 64 << 10
#: GPAs the probe's four-level identity map reaches (this host's guest MAXPHYADDR: 48 bits).
PROBE_MAX_GPA = 1 << 48

#: ``KVM_SET_USER_MEMORY_REGION2``'s arguments, in the struct's order: slot, flags,
#: guest_phys_addr, memory_size, userspace_addr, guest_memfd_offset, guest_memfd.
#: ``memory_size`` 0 deletes the slot.
RegionArgs = tuple[int, int, int, int, int, int, int]


@dataclasses.dataclass(frozen=True, slots=True)
class VMTypeCapabilities:
    """What a VM of one type offers: the per-VM answers of ``KVM_CHECK_EXTENSION`` on a
    throw-away VM of that type, and whether ``KVM_SET_MEMORY_ATTRIBUTES`` exists for it."""

    memory_attributes: int
    memory_attributes_ioctl: bool
    guest_memfd_flags: int


@dataclasses.dataclass(frozen=True, slots=True)
class HostCapabilities:
    """What this host's KVM offers (``KVMSystem.probe``). The flat fields are a default VM's
    answers; ``per_vm_type`` holds every offered type's own (private memory is a property of
    the VM type)."""

    api_version: int
    kernel_release: str
    arch: str
    page_size: int
    vm_types: tuple[str, ...]
    max_memslots: int
    user_memory2: bool
    guest_memfd: bool
    guest_memfd_flags: int
    memory_attributes: int
    memory_attributes_ioctl: bool
    memory_fault_info: bool
    pre_fault_memory: bool
    memory_failure: bool  # CONFIG_MEMORY_FAILURE: hwpoison handling (and injection) exists
    per_vm_type: dict[str, VMTypeCapabilities] = dataclasses.field(default_factory=dict)
    #: guest faults in a slot whose guest_memfd has mmap are served from it (TDP) rather than
    #: from userspace_addr (shadow paging); None where it could not be asked
    guest_memfd_only_honoured: bool | None = None
    #: the guest's MAXPHYADDR as KVM_GET_SUPPORTED_CPUID gives it (what the probe's vCPU gets)
    guest_phys_bits: int = 48
