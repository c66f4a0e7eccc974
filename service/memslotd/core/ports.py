"""What the core needs from the kernel layer, as structural Protocols.

The core never imports ``memslotd.kvm``; the daemon hands it objects that fit
these shapes. Kernel failures arrive as ``OSError`` (errno, maybe ``ioctl``).
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["KernelPort", "VMPort", "GuestMemfdPort", "SharedMemoryPort", "MappingPort", "GuestRunnerPort",
           "ProbeOutcome", "HostInfo"]


class MappingPort(Protocol):
    address: int
    length: int

    def read(self, offset: int, length: int) -> bytes: ...
    def write(self, offset: int, data: bytes) -> None: ...


class _Closable(Protocol):
    def close(self) -> None: ...


class GuestMemfdPort(_Closable, Protocol):
    size: int
    flags: int

    @property
    def fd(self) -> int: ...
    @property
    def mappable(self) -> bool: ...
    def map(self) -> MappingPort: ...
    def punch_hole(self, offset: int, length: int) -> None: ...
    def allocate(self, offset: int, length: int) -> None: ...
    def inject_hwpoison(self, offset: int) -> tuple[int, str]: ...


class SharedMemoryPort(_Closable, Protocol):
    size: int

    @property
    def address(self) -> int: ...
    @property
    def mapping(self) -> MappingPort | None: ...
    def punch_hole(self, offset: int, length: int) -> None: ...


class ProbeOutcome(Protocol):
    ok: bool
    data: bytes | None
    exit: object | None


class GuestRunnerPort(_Closable, Protocol):
    def install(self, slot: int) -> None: ...
    def uninstall(self, slot: int) -> None: ...
    def read(self, gpa: int, length: int) -> ProbeOutcome: ...
    def write(self, gpa: int, data: bytes) -> ProbeOutcome: ...


class VMPort(_Closable, Protocol):
    def create_guest_memfd(self, size: int, flags: int) -> GuestMemfdPort: ...
    def set_user_memory_region2(self, slot: int, flags: int, guest_phys_addr: int, memory_size: int,
                                userspace_addr: int, guest_memfd_offset: int = 0, guest_memfd: int = 0) -> None: ...
    def delete_user_memory_region(self, slot: int) -> None: ...
    def set_memory_attributes(self, address: int, size: int, attributes: int) -> None: ...


class HostInfo(Protocol):
    page_size: int
    max_memslots: int
    vm_types: tuple[str, ...]
    guest_memfd_flags: int
    memory_attributes: int
    memory_attributes_ioctl: bool


class KernelPort(Protocol):
    """Factory for kernel objects (implemented by ``memslotd.daemon.KernelAdapter``)."""

    host: HostInfo

    def create_vm(self, vm_type: str) -> VMPort: ...
    def create_shared_memory(self, name: str, size: int, hugepage_size: int | None) -> SharedMemoryPort: ...
    def create_guest_runner(self, vm: VMPort) -> GuestRunnerPort: ...
