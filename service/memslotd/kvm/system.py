"""``/dev/kvm``: the system fd, capability probing, VM creation."""

from __future__ import annotations

import errno
import os
import platform

from ..uapi import VM_TYPES, Cap, HostCapabilities, VMTypeCapabilities
from ._lib import check, ffi, lib
from .errors import KVMError
from .fd import OwnedFd
from .probe_guest import guest_memfd_only_is_honoured
from .vcpu import SupportedCPUID
from .vm import VMFd

__all__ = ["KVMSystem"]


class KVMSystem(OwnedFd):
    """The ``/dev/kvm`` fd. Creates VMs; probes capabilities."""

    kind = "kvm"

    def __init__(self, fd: int):
        super().__init__(fd)
        self._vcpu_setup: tuple[int, SupportedCPUID] | None = None  # read at the first create_vm

    @classmethod
    def open(cls) -> KVMSystem:
        return cls(check(lib.msd_open_kvm(), "open(/dev/kvm)"))

    def api_version(self) -> int:
        return check(lib.msd_get_api_version(self._fd_or_raise("KVM_GET_API_VERSION")), "KVM_GET_API_VERSION")

    def check_extension(self, cap: int) -> int:
        fd = self._fd_or_raise("KVM_CHECK_EXTENSION")
        return check(lib.msd_check_extension(fd, cap), "KVM_CHECK_EXTENSION", cap=cap)

    def vcpu_mmap_size(self) -> int:
        fd = self._fd_or_raise("KVM_GET_VCPU_MMAP_SIZE")
        return check(lib.msd_get_vcpu_mmap_size(fd), "KVM_GET_VCPU_MMAP_SIZE")

    def get_supported_cpuid(self) -> SupportedCPUID:
        """``KVM_GET_SUPPORTED_CPUID``: what every vCPU is given with ``KVM_SET_CPUID2``."""
        fd = self._fd_or_raise("KVM_GET_SUPPORTED_CPUID")
        entries = ffi.new("struct msd_cpuid *")
        phys_bits = check(lib.msd_get_supported_cpuid(fd, entries), "KVM_GET_SUPPORTED_CPUID")
        return SupportedCPUID(entries, phys_bits)

    def create_vm(self, vm_type: int = 0) -> VMFd:
        """``KVM_CREATE_VM``; the VM gets what its vCPUs need from here, read once."""
        fd = self._fd_or_raise("KVM_CREATE_VM")
        if self._vcpu_setup is None:
            self._vcpu_setup = (self.vcpu_mmap_size(), self.get_supported_cpuid())
        new = check(lib.msd_create_vm(fd, vm_type), "KVM_CREATE_VM", type=vm_type)
        return VMFd(new, vm_type, *self._vcpu_setup)

    def probe(self) -> HostCapabilities:
        """Ask a throw-away VM of every offered type (per-VM answers are the ones that count)."""
        types_mask = self.check_extension(Cap.VM_TYPES) or 1
        offered = tuple(n for n, v in VM_TYPES.items() if types_mask & (1 << v))
        per_type: dict[str, VMTypeCapabilities] = {}
        for name in offered:
            try:
                with self.create_vm(VM_TYPES[name]) as vm:
                    per_type[name] = _probe_vm_type(vm)
            except KVMError:
                continue  # offered in the mask but not creatable here (e.g. SEV without firmware)
        with self.create_vm(0) as probe_vm:
            honoured = guest_memfd_only_is_honoured(probe_vm)
        with self.create_vm(0) as vm:
            default = per_type.get("default") or _probe_vm_type(vm)
            return HostCapabilities(
                api_version=self.api_version(),
                kernel_release=platform.release(),
                arch=platform.machine(),
                page_size=os.sysconf("SC_PAGE_SIZE"),
                vm_types=tuple(n for n in offered if n in per_type),
                max_memslots=vm.check_extension(Cap.NR_MEMSLOTS),
                user_memory2=vm.check_extension(Cap.USER_MEMORY2) > 0,
                guest_memfd=vm.check_extension(Cap.GUEST_MEMFD) > 0,
                guest_memfd_flags=default.guest_memfd_flags,
                memory_attributes=default.memory_attributes,
                memory_attributes_ioctl=default.memory_attributes_ioctl,
                memory_fault_info=vm.check_extension(Cap.MEMORY_FAULT_INFO) > 0,
                pre_fault_memory=vm.check_extension(Cap.PRE_FAULT_MEMORY) > 0,
                memory_failure=os.path.exists("/proc/sys/vm/memory_failure_recovery"),
                per_vm_type=per_type,
                guest_memfd_only_honoured=honoured,
                guest_phys_bits=self.get_supported_cpuid().phys_bits,
            )


def _probe_vm_type(vm: VMFd) -> VMTypeCapabilities:
    try:
        # attributes=0 on one page is a no-op where the ioctl exists (SA6)
        vm.set_memory_attributes(0, os.sysconf("SC_PAGE_SIZE"), 0)
        attrs_ioctl = True
    except KVMError as exc:
        attrs_ioctl = exc.errno != errno.ENOTTY  # compiled out (G3)
    return VMTypeCapabilities(
        memory_attributes=vm.check_extension(Cap.MEMORY_ATTRIBUTES),
        memory_attributes_ioctl=attrs_ioctl,
        guest_memfd_flags=vm.check_extension(Cap.GUEST_MEMFD_FLAGS),
    )
