"""What the core needs from the kernel layer, as structural Protocols.

The core never imports ``memslotd.kvm``; the daemon hands it objects that fit
these shapes. Kernel failures arrive as ``OSError`` (errno, maybe ``ioctl``). The host's
facts are a value, not a port: ``memslotd.uapi.HostCapabilities``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from ..uapi import HostCapabilities, RegionArgs

__all__ = [
    "KernelPort",
    "VMPort",
    "GuestMemfdPort",
    "SharedMemoryPort",
    "MappingPort",
    "GuestRunnerPort",
    "ProbeOutcome",
]


class MappingPort(Protocol):
    address: int

    def read(self, offset: int, length: int) -> bytes: ...
    def write(self, offset: int, data: bytes) -> None: ...


class _Closable(Protocol):
    def close(self) -> None: ...


class GuestMemfdPort(_Closable, Protocol):
    @property
    def fd(self) -> int: ...
    @property
    def mappable(self) -> bool: ...
    def map(self) -> MappingPort: ...
    def punch_hole(self, offset: int, length: int) -> None: ...
    def allocate(self, offset: int, length: int) -> None: ...
    def inject_hwpoison(self, offset: int) -> tuple[int, str]: ...


class SharedMemoryPort(_Closable, Protocol):
    @property
    def address(self) -> int: ...
    @property
    def mapping(self) -> MappingPort | None: ...
    def punch_hole(self, offset: int, length: int) -> None: ...


class ProbeOutcome(Protocol):
    @property
    def ok(self) -> bool: ...
    @property
    def data(self) -> bytes | None: ...
    @property
    def exit(self) -> Any: ...


class GuestRunnerPort(_Closable, Protocol):
    def install(self, slot: int) -> None: ...
    def uninstall(self, slot: int) -> None: ...
    def read(self, gpa: int, length: int) -> ProbeOutcome: ...
    def write(self, gpa: int, data: bytes) -> ProbeOutcome: ...


class VMPort(_Closable, Protocol):
    def create_guest_memfd(self, size: int, flags: int) -> GuestMemfdPort: ...
    def set_user_memory_region2(
        self,
        slot: int,
        flags: int,
        guest_phys_addr: int,
        memory_size: int,
        userspace_addr: int,
        guest_memfd_offset: int = 0,
        guest_memfd: int = 0,
    ) -> None: ...
    def delete_user_memory_region(self, slot: int) -> None: ...
    def set_user_memory_regions(self, regions: Sequence[RegionArgs]) -> tuple[int, int]:
        """In order, stopping at the first failure: (how many applied, errno of the failed one or 0)."""
        ...

    def set_memory_attributes(self, address: int, size: int, attributes: int) -> None: ...
    def get_dirty_log(self, slot: int, pages: int) -> bytes: ...


class KernelPort(Protocol):
    """Factory for kernel objects (implemented by ``memslotd.kernel_adapter.KernelAdapter``)."""

    @property
    def host(self) -> HostCapabilities: ...

    def create_vm(self, vm_type: str) -> VMPort: ...
    def create_shared_memory(self, name: str, size: int, hugepage_size: int | None) -> SharedMemoryPort: ...
    def create_guest_runner(self, vm: VMPort) -> GuestRunnerPort: ...
