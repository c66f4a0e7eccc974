"""Kernel objects: one class per fd kind, each owning exactly one fd or mapping."""

from .errors import FdClosedError, KVMError
from .mapping import Mapping
from .memory import GMEM_FLAG_INIT_SHARED, GMEM_FLAG_MMAP, GuestMemfd, SharedMemory
from .system import VM_TYPES, Cap, HostCapabilities, KVMSystem, VMTypeCapabilities
from .vcpu import VCPUExit, VCPUFd
from .vm import MEM_GUEST_MEMFD, MEM_LOG_DIRTY_PAGES, MEM_READONLY, MEMORY_ATTRIBUTE_PRIVATE, VMFd

__all__ = [
    "Cap", "FdClosedError", "GMEM_FLAG_INIT_SHARED", "GMEM_FLAG_MMAP", "GuestMemfd", "HostCapabilities",
    "KVMError", "KVMSystem", "MEM_GUEST_MEMFD", "MEM_LOG_DIRTY_PAGES", "MEM_READONLY",
    "MEMORY_ATTRIBUTE_PRIVATE", "Mapping", "SharedMemory", "VCPUExit", "VCPUFd", "VMFd", "VMTypeCapabilities", "VM_TYPES",
]
