"""A vCPU fd and its ``kvm_run`` page."""

from __future__ import annotations

import dataclasses
import errno
import mmap
from typing import Any

from ..uapi import ExitReason
from ._lib import check, ffi, lib
from .fd import OwnedFd

__all__ = ["VCPUFd", "VCPUExit", "SupportedCPUID"]

EHWPOISON = getattr(errno, "EHWPOISON", 133)  # Linux's; Python's errno module lacks it


@dataclasses.dataclass(frozen=True, slots=True)
class SupportedCPUID:
    """``KVM_GET_SUPPORTED_CPUID``'s answer (:meth:`KVMSystem.get_supported_cpuid`), read once
    per ``/dev/kvm`` and applied to every vCPU with ``KVM_SET_CPUID2``."""

    entries: Any  # struct msd_cpuid * (cffi): never leaves memslotd.kvm
    phys_bits: int  # the guest's MAXPHYADDR (CPUID 0x80000008 EAX[7:0]; 36 when absent)


@dataclasses.dataclass(frozen=True, slots=True)
class VCPUExit:
    """Why ``KVM_RUN`` returned. ``errno`` is set when KVM_RUN failed (-1)."""

    reason: str
    errno: int = 0
    gpa: int | None = None
    size: int | None = None
    flags: int | None = None
    is_write: bool | None = None


class VCPUFd(OwnedFd):
    """``KVM_CREATE_VCPU``'s fd; owns the mmap of its ``kvm_run`` structure."""

    kind = "vcpu"

    def __init__(self, fd: int, vcpu_id: int):
        super().__init__(fd)
        self.vcpu_id = vcpu_id
        self._run = ffi.NULL  # the kvm_run page, read and written through the shim's accessors
        self._run_size = 0
        self._exit = ffi.new("struct msd_run_exit *")
        self.phys_bits = 36

    def map_run(self, size: int) -> None:
        fd = self._fd_or_raise("mmap(kvm_run)")
        out = ffi.new("void **")
        check(lib.msd_mmap(fd, size, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_SHARED, 0, out), "mmap(kvm_run)")
        self._run, self._run_size = out[0], size

    def _release(self) -> None:
        if self._run != ffi.NULL:
            lib.msd_munmap(self._run, self._run_size)
            self._run = ffi.NULL

    def set_cpuid2(self, cpuid: SupportedCPUID) -> None:
        """``KVM_SET_CPUID2``: give the guest the CPUID KVM supports (and its MAXPHYADDR)."""
        check(lib.msd_vcpu_set_cpuid2(self._fd_or_raise("KVM_SET_CPUID2"), cpuid.entries), "KVM_SET_CPUID2")
        self.phys_bits = cpuid.phys_bits

    def enter_long_mode(self, cr3: int) -> None:
        check(lib.msd_vcpu_enter_long_mode(self._fd_or_raise("KVM_SET_SREGS"), cr3), "KVM_SET_SREGS")

    def set_regs(self, rip: int, rsi: int = 0, rdi: int = 0, rcx: int = 0, rsp: int = 0) -> None:
        check(lib.msd_vcpu_set_regs(self._fd_or_raise("KVM_SET_REGS"), rip, rsi, rdi, rcx, rsp), "KVM_SET_REGS")

    def set_immediate_exit(self, value: bool) -> None:
        """``kvm_run.immediate_exit``: the next ``KVM_RUN`` returns EINTR at once."""
        self._fd_or_raise("kvm_run.immediate_exit")  # closed: the page is unmapped
        lib.msd_run_set_immediate_exit(self._run, value)

    def run(self, timeout_ms: int) -> VCPUExit:
        """``KVM_RUN`` bounded by ``timeout_ms`` (a timeout is the exit ``"timeout"``).

        A guest access KVM cannot resolve makes KVM_RUN fail with EFAULT or EHWPOISON: with
        ``exit_reason`` = KVM_EXIT_MEMORY_FAULT (cleared before each run, so a stale one is never
        read) it is the exit ``"memory_fault"`` with gpa/size/flags; without it, ``"fault"``
        (KVM reported no details, e.g. no VMA behind ``userspace_addr``)."""
        fd = self._fd_or_raise("KVM_RUN")
        lib.msd_run_clear_exit_reason(self._run)
        rc = lib.msd_vcpu_run(fd, timeout_ms)
        if rc == -errno.EINTR:  # our timer fired
            return VCPUExit("timeout", errno=errno.EINTR)
        out = self._exit
        lib.msd_read_run_exit(self._run, out)
        if rc < 0:
            if -rc in (errno.EFAULT, EHWPOISON):
                if out.reason == ExitReason.MEMORY_FAULT:
                    return VCPUExit("memory_fault", errno=-rc, flags=out.flags, gpa=out.gpa, size=out.size)
                return VCPUExit("fault", errno=-rc)
            check(rc, "KVM_RUN")
        name = ExitReason.name_of(out.reason)
        if out.reason == ExitReason.MMIO:
            return VCPUExit(name, gpa=out.gpa, size=out.size, is_write=bool(out.is_write))
        return VCPUExit(name)
