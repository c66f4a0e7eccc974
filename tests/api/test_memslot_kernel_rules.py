"""Kernel rules of KVM_SET_USER_MEMORY_REGION2 that the daemon refuses before the ioctl
(ids as in docs/kernel-rules.md); the other rules' proofs are in test_memslots.py."""

from __future__ import annotations

from .conftest import GiB, MiB, VMHelper


def test_m6_a_shared_offset_off_a_page_boundary_is_refused(vm):
    """userspace_addr = the daemon's page-aligned mapping + offset: only the offset can break M6."""
    r = vm.put_slot(0, 4 * GiB, 2 * MiB, shm=vm.shm(), shm_offset=100)
    assert r.status_code == 422 and r.json()["code"] == "RANGE_NOT_ALIGNED"


def test_m8_an_address_space_other_than_0_is_refused(vm):
    r = vm.put_slot(0, 4 * GiB, 2 * MiB, shm=vm.shm(), address_space=1)
    assert r.status_code == 422 and r.json()["code"] == "ADDRESS_SPACE_UNSUPPORTED"


def test_m10_a_slot_of_more_than_kvm_mem_max_nr_pages_is_refused(vm):
    r = vm.put_slot(0, 0, (1 << 31) * 4096, shm=vm.shm())
    assert r.status_code == 422 and r.json()["code"] == "SLOT_TOO_LARGE"
    assert vm.put_slot(0, 0, 4 * MiB, shm=vm.shm()).status_code == 201  # nothing was left behind


def test_b3_a_guest_memfd_of_another_vm_is_not_found(client, vm):
    other = VMHelper(client, client.post("/v1/vms", json={}).json()["id"])
    r = vm.put_slot(0, 4 * GiB, 2 * MiB, gmem=other.gmem())
    assert r.status_code == 404 and r.json()["code"] == "GUEST_MEMFD_NOT_FOUND"
