"""A VM fd: memslots, guest_memfds, memory attributes, vCPUs."""

from __future__ import annotations

from collections.abc import Sequence

from ..uapi import RegionArgs
from ._lib import check, ffi, lib
from .fd import OwnedFd
from .guest_memfd import GuestMemfd
from .vcpu import SupportedCPUID, VCPUFd

__all__ = ["VMFd"]


class VMFd(OwnedFd):
    """``KVM_CREATE_VM``'s fd. Every ioctl must come from the creating process.

    Made only by :meth:`KVMSystem.create_vm`, which hands over what the VM's vCPUs need (the
    ``kvm_run`` mmap size and the supported CPUID, read once from ``/dev/kvm``): the VM keeps
    no reference to the system fd, which may be closed first.
    """

    kind = "vm"

    def __init__(self, fd: int, vm_type: int, vcpu_mmap_size: int, cpuid: SupportedCPUID):
        super().__init__(fd)
        self.vm_type = vm_type
        self._vcpu_mmap_size = vcpu_mmap_size
        self._cpuid = cpuid

    def check_extension(self, cap: int) -> int:
        fd = self._fd_or_raise("KVM_CHECK_EXTENSION")
        return check(lib.msd_check_extension(fd, cap), "KVM_CHECK_EXTENSION", cap=cap)

    def create_guest_memfd(self, size: int, flags: int = 0) -> GuestMemfd:
        """``KVM_CREATE_GUEST_MEMFD``; the shim sets FD_CLOEXEC (the kernel does not)."""
        fd = self._fd_or_raise("KVM_CREATE_GUEST_MEMFD")
        new = check(lib.msd_create_guest_memfd(fd, size, flags), "KVM_CREATE_GUEST_MEMFD", size=size, flags=flags)
        return GuestMemfd(new, size, flags)

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
        """``KVM_SET_USER_MEMORY_REGION2``; ``memory_size == 0`` deletes the slot."""
        fd = self._fd_or_raise("KVM_SET_USER_MEMORY_REGION2")
        check(
            lib.msd_set_user_memory_region2(
                fd, slot, flags, guest_phys_addr, memory_size, userspace_addr, guest_memfd_offset, guest_memfd
            ),
            "KVM_SET_USER_MEMORY_REGION2",
            slot=slot,
            guest_phys_addr=guest_phys_addr,
            memory_size=memory_size,
        )

    def delete_user_memory_region(self, slot: int) -> None:
        self.set_user_memory_region2(slot, 0, 0, 0, 0)

    def set_user_memory_regions(self, regions: Sequence[RegionArgs]) -> tuple[int, int]:
        """Many ``KVM_SET_USER_MEMORY_REGION2`` calls in one trip into C, in order, stopping at the
        first failure. Each region is ``set_user_memory_region2``'s arguments. Returns how many
        were applied and the errno of the one that failed (0 when all were); undoing the applied
        ones is the caller's business (it knows what they replaced)."""
        fd = self._fd_or_raise("KVM_SET_USER_MEMORY_REGION2")
        if not regions:
            return 0, 0
        structs = ffi.new("struct msd_userspace_memory_region2[]", regions)  # pads zeroed
        err = ffi.new("int *")
        applied = lib.msd_set_user_memory_regions(fd, structs, len(regions), err)
        return applied, -err[0]

    def set_memory_attributes(self, address: int, size: int, attributes: int) -> None:
        """``KVM_SET_MEMORY_ATTRIBUTES`` (ENOTTY where CONFIG_KVM_GENERIC_MEMORY_ATTRIBUTES is off)."""
        fd = self._fd_or_raise("KVM_SET_MEMORY_ATTRIBUTES")
        check(
            lib.msd_set_memory_attributes(fd, address, size, attributes),
            "KVM_SET_MEMORY_ATTRIBUTES",
            address=address,
            size=size,
        )

    def get_dirty_log(self, slot: int, pages: int) -> bytes:
        """``KVM_GET_DIRTY_LOG`` for a slot with ``KVM_MEM_LOG_DIRTY_PAGES``: one bit per page
        written since the last call (the call re-arms tracking)."""
        fd = self._fd_or_raise("KVM_GET_DIRTY_LOG")
        size = (pages + 63) // 64 * 8
        buf = ffi.new("uint8_t[]", size)
        check(lib.msd_get_dirty_log(fd, slot, buf), "KVM_GET_DIRTY_LOG", slot=slot)
        return bytes(ffi.buffer(buf, size))

    def create_vcpu(self, vcpu_id: int) -> VCPUFd:
        """``KVM_CREATE_VCPU``, its ``kvm_run`` mapped and the supported CPUID applied."""
        fd = self._fd_or_raise("KVM_CREATE_VCPU")
        new = check(lib.msd_create_vcpu(fd, vcpu_id), "KVM_CREATE_VCPU", id=vcpu_id)
        vcpu = VCPUFd(new, vcpu_id)
        try:
            vcpu.map_run(self._vcpu_mmap_size)
            vcpu.set_cpuid2(self._cpuid)
        except BaseException:
            vcpu.close()
            raise
        return vcpu
