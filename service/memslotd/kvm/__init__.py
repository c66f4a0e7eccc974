"""Kernel objects: one class per fd kind, each owning exactly one fd or mapping.

The constants they take and the values they return (flags, capability numbers, VM types,
``HostCapabilities``) live in :mod:`memslotd.uapi`.
"""

from .errors import FdClosedError, KVMError
from .guest_memfd import GuestMemfd
from .mapping import Mapping
from .shared_memory import SharedMemory
from .system import KVMSystem
from .vcpu import VCPUExit, VCPUFd
from .vm import VMFd

__all__ = [
    "FdClosedError",
    "GuestMemfd",
    "KVMError",
    "KVMSystem",
    "Mapping",
    "SharedMemory",
    "VCPUExit",
    "VCPUFd",
    "VMFd",
]
