"""An independent probe of this machine's KVM, for tests to compare the daemon against.

Written against the kernel's uAPI with nothing but ``fcntl.ioctl`` and ``struct``: it
shares no code with ``memslotd.kvm`` or the C shim, so a test that checks the daemon's
capabilities against it cannot pass by agreeing with itself. Facts, never pinned values:
the same tests pass on the PVM development hosts and inside the lab kernel.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import functools
import os
import struct

KVMIO = 0xAE
_IOC_WRITE = 1


def _io(nr: int) -> int:
    return KVMIO << 8 | nr


def _iow(nr: int, size: int) -> int:
    return _IOC_WRITE << 30 | size << 16 | KVMIO << 8 | nr


KVM_CREATE_VM = _io(0x01)
KVM_CHECK_EXTENSION = _io(0x03)
KVM_SET_MEMORY_ATTRIBUTES = _iow(0xD2, 32)
CAP_NR_MEMSLOTS, CAP_USER_MEMORY2, CAP_MEMORY_FAULT_INFO, CAP_MEMORY_ATTRIBUTES = 10, 231, 232, 233
CAP_GUEST_MEMFD, CAP_VM_TYPES, CAP_GUEST_MEMFD_FLAGS = 234, 235, 244
ATTRIBUTE_PRIVATE = 1 << 3
VM_TYPE_NUMBERS = {"default": 0, "sw_protected": 1, "sev": 2, "sev_es": 3, "snp": 4, "tdx": 5}
GMEM_FLAG_NAMES = {1 << 0: "mmap", 1 << 1: "init_shared"}
#: Linux's EHWPOISON ("Memory page has hardware error"); Python's errno module lacks it
EHWPOISON = getattr(errno, "EHWPOISON", 133)


@dataclasses.dataclass(frozen=True)
class VMTypeFacts:
    memory_attributes: int
    attributes_ioctl: bool
    guest_memfd_flags: int

    @property
    def private_memory(self) -> bool:
        """KVM routes guest faults by attribute on such VMs."""
        return bool(self.memory_attributes & ATTRIBUTE_PRIVATE) and self.attributes_ioctl

    @property
    def gmem_flag_names(self) -> list[str]:
        return [name for bit, name in GMEM_FLAG_NAMES.items() if self.guest_memfd_flags & bit]


@dataclasses.dataclass(frozen=True)
class KernelFacts:
    vm_types: tuple[str, ...]
    per_vm_type: dict[str, VMTypeFacts]
    max_memslots: int
    user_memory2: bool
    guest_memfd: bool
    memory_fault_info: bool
    memory_failure: bool

    @property
    def default(self) -> VMTypeFacts:
        return self.per_vm_type["default"]

    def private_vm_type(self) -> str | None:
        """A VM type with kernel-enforced private memory, if this host offers one."""
        return next((name for name, facts in self.per_vm_type.items() if facts.private_memory), None)


def _vm_type_facts(vm: int) -> VMTypeFacts:
    try:
        fcntl.ioctl(vm, KVM_SET_MEMORY_ATTRIBUTES, struct.pack("=4Q", 0, os.sysconf("SC_PAGE_SIZE"), 0, 0))
        ioctl = True
    except OSError as exc:
        ioctl = exc.errno != errno.ENOTTY
    return VMTypeFacts(
        fcntl.ioctl(vm, KVM_CHECK_EXTENSION, CAP_MEMORY_ATTRIBUTES),
        ioctl,
        fcntl.ioctl(vm, KVM_CHECK_EXTENSION, CAP_GUEST_MEMFD_FLAGS),
    )


@functools.cache
def kernel_facts() -> KernelFacts:
    kvm = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    try:
        mask = fcntl.ioctl(kvm, KVM_CHECK_EXTENSION, CAP_VM_TYPES) or 1
        per_type: dict[str, VMTypeFacts] = {}
        for name, number in VM_TYPE_NUMBERS.items():
            if not mask & (1 << number):
                continue
            try:
                vm = fcntl.ioctl(kvm, KVM_CREATE_VM, number)
            except OSError:
                continue
            try:
                per_type[name] = _vm_type_facts(vm)
                if name == "default":
                    cap = functools.partial(fcntl.ioctl, vm, KVM_CHECK_EXTENSION)
                    generic = (
                        cap(CAP_NR_MEMSLOTS),
                        cap(CAP_USER_MEMORY2) > 0,
                        cap(CAP_GUEST_MEMFD) > 0,
                        cap(CAP_MEMORY_FAULT_INFO) > 0,
                    )
            finally:
                os.close(vm)
        return KernelFacts(
            tuple(per_type), per_type, *generic, memory_failure=os.path.exists("/proc/sys/vm/memory_failure_recovery")
        )
    finally:
        os.close(kvm)


def in_lab() -> bool:
    """True inside the KVM lab (lab/run sets MEMSLOTD_LAB=1), where every lab feature must exist."""
    return os.environ.get("MEMSLOTD_LAB") == "1"


def require_feature(present: object, reason: str) -> None:
    """Go on when the feature is ``present``; else skip with ``reason`` on an ordinary host and
    fail inside the lab (there the feature is the point of the test)."""
    import pytest

    if present:
        return
    if in_lab():
        pytest.fail(f"the lab must offer this, but: {reason}", pytrace=False)
    pytest.skip(reason)
