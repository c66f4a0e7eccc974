"""``InMemoryKernelDouble``: a stand-in for the kernel layer, so the core's use cases run
without /dev/kvm (tests/core). It is a double, not a model of KVM: it checks no kernel rule
(the core checks them all before any call), keeps bytes in memory, and records what the core
asked of it. The same use cases are proven against the real kernel: tests/core runs each of
them on the real adapter too where /dev/kvm exists, and tests/api drives them over HTTP.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from memslotd.uapi import (
    GUEST_MEMFD_FLAG_INIT_SHARED,
    GUEST_MEMFD_FLAG_MMAP,
    HostCapabilities,
    RegionArgs,
    VMTypeCapabilities,
)

__all__ = ["InMemoryKernelDouble"]

_FLAGS = GUEST_MEMFD_FLAG_MMAP | GUEST_MEMFD_FLAG_INIT_SHARED
_numbers = itertools.count(1000)
_addresses = itertools.count(0x7F00_0000_0000, 1 << 32)

#: a host like the development machines: default VMs only, mmap-able guest_memfds, no attributes
DOUBLE_HOST = HostCapabilities(
    api_version=12,
    kernel_release="in-memory double",
    arch="x86_64",
    page_size=4096,
    vm_types=("default",),
    max_memslots=32764,
    user_memory2=True,
    guest_memfd=True,
    guest_memfd_flags=_FLAGS,
    memory_attributes=0,
    memory_attributes_ioctl=False,
    memory_fault_info=False,
    pre_fault_memory=False,
    memory_failure=False,
    per_vm_type={
        "default": VMTypeCapabilities(memory_attributes=0, memory_attributes_ioctl=False, guest_memfd_flags=_FLAGS)
    },
)


class MappingDouble:
    def __init__(self, size: int):
        self.address = next(_addresses)
        self._bytes = bytearray(size)

    def read(self, offset: int, length: int) -> bytes:
        return bytes(self._bytes[offset : offset + length])

    def write(self, offset: int, data: bytes) -> None:
        self._bytes[offset : offset + len(data)] = data

    def zero(self, offset: int, length: int) -> None:
        self._bytes[offset : offset + length] = bytes(length)


class _FileDouble:
    def __init__(self, size: int):
        self.size = size
        self.closed = False
        self._mapping = MappingDouble(size)

    def punch_hole(self, offset: int, length: int) -> None:
        self._mapping.zero(offset, length)

    def close(self) -> None:
        self.closed = True


class GuestMemfdDouble(_FileDouble):
    def __init__(self, size: int, flags: int):
        super().__init__(size)
        self.flags = flags
        self.fd = next(_numbers)

    @property
    def mappable(self) -> bool:
        return self.flags & _FLAGS == _FLAGS

    def map(self) -> MappingDouble:
        return self._mapping

    def allocate(self, offset: int, length: int) -> None:
        pass

    def inject_hwpoison(self, offset: int) -> tuple[int, str]:
        raise OSError(95, "the in-memory double cannot poison memory")


class SharedMemoryDouble(_FileDouble):
    @property
    def address(self) -> int:
        return self._mapping.address

    @property
    def mapping(self) -> MappingDouble:
        return self._mapping


class VMDouble:
    """Records the memslots the core installed: ``regions[slot] = (flags, gpa, size, uaddr, offset, fd)``."""

    def __init__(self, vm_type: str):
        self.type = vm_type
        self.regions: dict[int, tuple[int, int, int, int, int, int]] = {}
        self.closed = False

    def create_guest_memfd(self, size: int, flags: int) -> GuestMemfdDouble:
        return GuestMemfdDouble(size, flags)

    def set_user_memory_region2(
        self,
        slot: int,
        flags: int,
        guest_phys_addr: int,
        memory_size: int,
        userspace_addr: int,
        guest_memfd_offset: int = 0,
        guest_memfd: int = 0,
    ) -> None:
        if memory_size == 0:
            self.regions.pop(slot, None)
        else:
            self.regions[slot] = (flags, guest_phys_addr, memory_size, userspace_addr, guest_memfd_offset, guest_memfd)

    def delete_user_memory_region(self, slot: int) -> None:
        self.regions.pop(slot, None)

    def set_user_memory_regions(self, regions: Sequence[RegionArgs]) -> tuple[int, int]:
        for region in regions:
            self.set_user_memory_region2(*region)
        return len(regions), 0

    def set_memory_attributes(self, address: int, size: int, attributes: int) -> None:
        raise OSError(25, "ENOTTY: no KVM_SET_MEMORY_ATTRIBUTES on this host")

    def get_dirty_log(self, slot: int, pages: int) -> bytes:
        return bytes((pages + 63) // 64 * 8)  # nothing written: no guest runs here

    def close(self) -> None:
        self.closed = True


class InMemoryKernelDouble:
    """Implements ``memslotd.core.ports.KernelPort`` in memory (see the module docstring)."""

    def __init__(self, host: HostCapabilities = DOUBLE_HOST):
        self.host = host
        self.vms: list[VMDouble] = []
        self.shared_memory: list[SharedMemoryDouble] = []

    def create_vm(self, vm_type: str) -> VMDouble:
        vm = VMDouble(vm_type)
        self.vms.append(vm)
        return vm

    def create_shared_memory(self, name: str, size: int, hugepage_size: int | None) -> SharedMemoryDouble:
        shm = SharedMemoryDouble(size)
        self.shared_memory.append(shm)
        return shm

    def create_guest_runner(self, vm: object) -> object:
        raise NotImplementedError("the probe needs a real vCPU: tests/core runs it on /dev/kvm only")
