"""A real ``KVM_EXIT_MEMORY_FAULT`` decoded from the kernel layer: a private GPA in a slot
without a private part (``kvm_mmu_faultin_pfn``: private fault, no guest_memfd)."""

from __future__ import annotations

import errno

import pytest

from memslotd.kvm import KVMSystem, SharedMemory
from memslotd.kvm.probe_guest import GuestRunner
from memslotd.uapi import VM_TYPES
from tests.kernel_facts import ATTRIBUTE_PRIVATE, kernel_facts, require_feature

pytestmark = [pytest.mark.lab, pytest.mark.kvm, pytest.mark.usefixtures("no_fd_leak")]

GPA, MiB = 1 << 32, 1 << 20
KVM_MEMORY_EXIT_FLAG_PRIVATE = 1 << 3


def test_private_gpa_without_guest_memfd_exits_with_memory_fault_flags_private():
    vm_type = kernel_facts().private_vm_type()
    require_feature(vm_type is not None, "no VM type with kernel-enforced private memory on this host")
    assert vm_type is not None
    with (
        KVMSystem.open() as system,
        system.create_vm(VM_TYPES[vm_type]) as vm,
        SharedMemory.create("t", 2 * MiB) as shm,
    ):
        vm.set_user_memory_region2(0, 0, GPA, 2 * MiB, shm.address)
        runner = GuestRunner(vm)
        try:
            runner.install(1)
            assert runner.read(GPA, 8).ok  # shared: served from userspace_addr
            vm.set_memory_attributes(GPA, 4096, ATTRIBUTE_PRIVATE)
            outcome = runner.read(GPA, 8)
            assert not outcome.ok and outcome.exit is not None
            assert (outcome.exit.reason, outcome.exit.errno) == ("memory_fault", errno.EFAULT)
            assert (outcome.exit.gpa, outcome.exit.size) == (GPA, 4096)
            assert outcome.exit.flags == KVM_MEMORY_EXIT_FLAG_PRIVATE  # the guest wanted the private side
            vm.set_memory_attributes(GPA, 4096, 0)
            assert runner.read(GPA, 8).ok  # back to shared: the same vCPU reads again
        finally:
            runner.close()
