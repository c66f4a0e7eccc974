"""The lab is what it claims to be: its kernel offers software-protected VMs with private memory.

Raw ioctls through the kvm layer, no daemon: if these fail inside the lab, every other lab test
is meaningless. On an ordinary host they skip with the reason (the feature is absent there).
"""

from __future__ import annotations

import os
import platform

import pytest

from memslotd.kvm import KVMSystem
from memslotd.uapi import KVM_MEMORY_ATTRIBUTE_PRIVATE as MEMORY_ATTRIBUTE_PRIVATE
from memslotd.uapi import VM_TYPES, Cap
from tests.conftest import in_lab

pytestmark = [pytest.mark.lab, pytest.mark.usefixtures("no_fd_leak")]
SW_PROTECTED = VM_TYPES["sw_protected"]


def test_sw_protected_vms_offer_private_memory_attributes(require_feature):
    with KVMSystem.open() as kvm:
        types = kvm.check_extension(Cap.VM_TYPES)
        require_feature(
            types & (1 << SW_PROTECTED), f"KVM offers no sw_protected VM type (KVM_CAP_VM_TYPES={types:#x})"
        )
        with kvm.create_vm(SW_PROTECTED) as vm:
            attributes = vm.check_extension(Cap.MEMORY_ATTRIBUTES)
            assert attributes & MEMORY_ATTRIBUTE_PRIVATE, f"KVM_CAP_MEMORY_ATTRIBUTES={attributes:#x}"
            assert vm.check_extension(Cap.GUEST_MEMFD) > 0
            assert vm.check_extension(Cap.USER_MEMORY2) > 0


def test_the_lab_runs_the_lab_kernel():
    if not in_lab():
        pytest.skip("only inside the lab (make lab-test)")
    expected = os.environ.get("MEMSLOTD_LAB_KERNEL_RELEASE")
    assert expected, "lab/run did not say which kernel it booted"
    assert platform.release() == expected
    assert os.path.exists("/proc/sys/vm/memory_failure_recovery"), "the lab kernel has CONFIG_MEMORY_FAILURE"
