"""The native shim and the kernel-object layer against the real /dev/kvm: success and errno paths.

Struct layouts need no test here: the shim's _Static_asserts and cffi's layout checks fail the build.
"""

from __future__ import annotations

import errno
import fcntl
import os
import runpy
import shutil
from pathlib import Path

import pytest

from memslotd.kvm import KVMError, KVMSystem, SharedMemory
from memslotd.kvm._lib import SHIM_VERSION, checkout_version, lib
from memslotd.uapi import (
    GUEST_MEMFD_FLAG_INIT_SHARED,
    GUEST_MEMFD_FLAG_MMAP,
    KVM_MEM_GUEST_MEMFD,
    KVM_MEM_LOG_DIRTY_PAGES,
    KVM_MEM_MAX_NR_PAGES,
    Cap,
)
from tests.kernel_facts import kernel_facts

pytestmark = pytest.mark.usefixtures("no_fd_leak")
MiB = 1 << 20


@pytest.fixture
def system():
    with KVMSystem.open() as s:
        yield s


@pytest.fixture
def vm(system):
    with system.create_vm(0) as v:
        yield v


NATIVE = Path(__file__).resolve().parents[2] / "native"


def test_shim_version_is_derived_from_its_sources(tmp_path):
    """build_shim.py and the import check compute one formula; any edit of the shim changes
    the version, so a module built from other sources is refused at import."""
    assert runpy.run_path(str(NATIVE / "build_shim.py"))["SHIM_VERSION"] == SHIM_VERSION == checkout_version(NATIVE)
    shutil.copytree(NATIVE, tmp_path / "native")
    with open(tmp_path / "native" / "memslotd_shim.c", "a") as source:
        source.write("/* edited */\n")
    assert checkout_version(tmp_path / "native") != SHIM_VERSION
    assert checkout_version(tmp_path) is None  # an installed wheel has no sources to compare


def test_the_api_version_is_12_and_a_vm_offers_region2_guest_memfd_and_its_flags(system, vm):
    assert system.api_version() == 12
    assert vm.check_extension(Cap.NR_MEMSLOTS) == kernel_facts().max_memslots
    assert vm.check_extension(Cap.USER_MEMORY2) == 1
    assert vm.check_extension(Cap.GUEST_MEMFD) == 1
    assert vm.check_extension(Cap.GUEST_MEMFD_FLAGS) & (GUEST_MEMFD_FLAG_MMAP | GUEST_MEMFD_FLAG_INIT_SHARED)


def test_probe_agrees_with_an_independent_probe_for_every_vm_type(system):
    caps, facts = system.probe(), kernel_facts()
    assert (caps.max_memslots, caps.user_memory2, caps.guest_memfd) == (
        facts.max_memslots,
        facts.user_memory2,
        facts.guest_memfd,
    )
    assert caps.vm_types == facts.vm_types and "default" in caps.vm_types
    for name, expected in facts.per_vm_type.items():
        got = caps.per_vm_type[name]
        assert (got.memory_attributes, got.memory_attributes_ioctl, got.guest_memfd_flags) == (
            expected.memory_attributes,
            expected.attributes_ioctl,
            expected.guest_memfd_flags,
        ), name
    assert caps.guest_memfd_flags == facts.default.guest_memfd_flags
    assert caps.memory_failure is facts.memory_failure


def test_a_vm_makes_vcpus_after_its_system_fd_is_closed():
    """The VM was handed the kvm_run size and the supported CPUID at creation (kvm-ioctls'
    shape): it keeps no reference to /dev/kvm, and its vCPUs get the host's MAXPHYADDR."""
    system = KVMSystem.open()
    phys_bits = system.get_supported_cpuid().phys_bits
    with system.create_vm(0) as vm:
        system.close()
        with vm.create_vcpu(0) as vcpu:
            assert vcpu.phys_bits == phys_bits > 36


def test_kvm_run_is_refused_when_its_timer_cannot_be_armed(vm):
    """msd_vcpu_run checks timer_settime: an invalid timeout (negative nanoseconds) is EINVAL
    before KVM_RUN, never an unbounded KVM_RUN."""
    with vm.create_vcpu(0) as vcpu:
        with pytest.raises(KVMError) as e:
            vcpu.run(-1)
        assert e.value.errno == errno.EINVAL and e.value.ioctl == "KVM_RUN"


def test_every_fd_is_close_on_exec(system, vm):
    with vm.create_guest_memfd(MiB, 0) as gmem, SharedMemory.create("t", MiB) as shm:
        for fd in (system.fd, vm.fd, gmem.fd, shm.fd):
            assert fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC, fd


def test_gc2_a_guest_memfd_of_a_size_off_a_page_boundary_is_einval(vm):
    with pytest.raises(KVMError) as e:
        vm.create_guest_memfd(MiB + 1, 0)
    assert e.value.errno == errno.EINVAL and e.value.ioctl == "KVM_CREATE_GUEST_MEMFD"


def test_gc1_a_guest_memfd_with_an_unknown_flag_is_einval(vm):
    with pytest.raises(KVMError) as e:
        vm.create_guest_memfd(MiB, 1 << 5)
    assert e.value.errno == errno.EINVAL and e.value.ioctl == "KVM_CREATE_GUEST_MEMFD"


def test_fallocate_of_a_guest_memfd_needs_keep_size_alignment_and_a_range_inside_it(vm):
    with vm.create_guest_memfd(MiB, 0) as gmem:
        gmem.allocate(0, MiB)
        gmem.punch_hole(0, MiB)
        gmem.punch_hole(MiB, MiB)  # beyond EOF: a no-op for the kernel
        with pytest.raises(KVMError) as e:
            gmem.allocate(0, 2 * MiB)  # allocation beyond EOF
        assert e.value.errno == errno.EINVAL
        with pytest.raises(KVMError) as e:
            gmem.punch_hole(1, 4096)
        assert e.value.errno == errno.EINVAL
        assert lib.msd_fallocate(gmem.fd, 0, 0, 4096) == -errno.EOPNOTSUPP


@pytest.fixture
def bound(vm):
    """Slot 0 at 4 GiB: 2 MiB of a 4 MiB guest_memfd at offset 0, with a shared memfd."""
    with vm.create_guest_memfd(4 * MiB, 0) as gmem, SharedMemory.create("t", 4 * MiB) as shm:
        vm.set_user_memory_region2(0, KVM_MEM_GUEST_MEMFD, 1 << 32, 2 * MiB, shm.address, 0, gmem.fd)
        yield gmem, shm


def test_o1_a_slot_overlapping_another_slots_gpa_range_is_eexist(vm, bound):
    _, shm = bound
    with pytest.raises(KVMError) as e:
        vm.set_user_memory_region2(1, 0, (1 << 32) + MiB, 2 * MiB, shm.address)
    assert e.value.errno == errno.EEXIST


def test_b5_a_binding_overlapping_a_bound_guest_memfd_range_is_refused_with_the_kernels_errno(vm, bound):
    gmem, shm = bound
    with pytest.raises(KVMError) as e:
        vm.set_user_memory_region2(2, KVM_MEM_GUEST_MEMFD, 1 << 33, 2 * MiB, shm.address, MiB, gmem.fd)
    assert e.value.errno in b5_errnos()


def test_m3_log_dirty_pages_with_guest_memfd_is_einval(vm, bound):
    gmem, shm = bound
    with pytest.raises(KVMError) as e:
        vm.set_user_memory_region2(
            3, KVM_MEM_GUEST_MEMFD | KVM_MEM_LOG_DIRTY_PAGES, 1 << 34, 2 * MiB, shm.address, 2 * MiB, gmem.fd
        )
    assert e.value.errno == errno.EINVAL


def test_m2_a_slot_id_of_kvm_user_mem_slots_or_more_is_einval(vm, bound):
    _, shm = bound
    with pytest.raises(KVMError) as e:
        vm.set_user_memory_region2(32764, 0, 1 << 35, 2 * MiB, shm.address)
    assert e.value.errno == errno.EINVAL


def test_m11_moving_a_guest_memfd_slot_is_einval(vm, bound):
    gmem, shm = bound
    with pytest.raises(KVMError) as e:
        vm.set_user_memory_region2(0, KVM_MEM_GUEST_MEMFD, 1 << 36, 2 * MiB, shm.address, 0, gmem.fd)
    assert e.value.errno == errno.EINVAL


def test_d1_deleting_a_slot_twice_is_einval_the_second_time(vm, bound):
    vm.delete_user_memory_region(0)
    with pytest.raises(KVMError) as e:
        vm.delete_user_memory_region(0)
    assert e.value.errno == errno.EINVAL


def b5_errnos() -> set[int]:
    """B5's errno moved with the kernel: 6.18's ``kvm_gmem_bind`` refuses an overlapping
    guest_memfd binding with EINVAL; by 7.3 the check sits in ``kvm_gmem_commit_memory_region``
    and answers EEXIST (both read in the kernels' virt/kvm/guest_memfd.c). Kernels in between
    are not pinned: either answer is accepted there."""
    release = tuple(int(p) for p in os.uname().release.split("-")[0].split(".")[:2])
    if release <= (6, 18):
        return {errno.EINVAL}
    if release >= (7, 3):
        return {errno.EEXIST}
    return {errno.EINVAL, errno.EEXIST}


def test_m10_a_slot_of_more_than_kvm_mem_max_nr_pages_is_einval(vm):
    """The size check comes before any allocation: no memory is needed to hear the refusal
    (access_ok only wants the range inside the user address space, not mapped)."""
    with pytest.raises(KVMError) as e:
        vm.set_user_memory_region2(0, 0, 0, (KVM_MEM_MAX_NR_PAGES + 1) * 4096, 1 << 44)
    assert e.value.errno == errno.EINVAL


def test_b4_a_binding_past_the_guest_memfd_end_is_einval(vm):
    with vm.create_guest_memfd(2 * MiB, 0) as gmem, SharedMemory.create("t", 2 * MiB) as shm:
        with pytest.raises(KVMError) as e:
            vm.set_user_memory_region2(0, KVM_MEM_GUEST_MEMFD, 1 << 32, 2 * MiB, shm.address, 4096, gmem.fd)
        assert e.value.errno == errno.EINVAL
        vm.set_user_memory_region2(0, KVM_MEM_GUEST_MEMFD, 1 << 32, 2 * MiB, shm.address, 0, gmem.fd)
        vm.delete_user_memory_region(0)


def test_region_batch_stops_at_the_first_kernel_refusal(vm):
    """msd_set_user_memory_regions: in order, stops at the first errno, reports how many the
    kernel took; the real kernel refuses op 2 (EEXIST: it overlaps op 0's range)."""
    with SharedMemory.create("t", 8 * MiB) as shm:
        regions = [
            (0, 0, 1 << 32, 2 * MiB, shm.address, 0, 0),
            (1, 0, (1 << 32) + 2 * MiB, 2 * MiB, shm.address, 0, 0),
            (2, 0, (1 << 32) + MiB, 2 * MiB, shm.address, 0, 0),
            (3, 0, 1 << 33, 2 * MiB, shm.address, 0, 0),
        ]
        assert vm.set_user_memory_regions(regions) == (2, errno.EEXIST)
        with pytest.raises(KVMError) as e:  # op 3 never ran: slot 3 is empty
            vm.delete_user_memory_region(3)
        assert e.value.errno == errno.EINVAL
        assert vm.set_user_memory_regions([(1, 0, 0, 0, 0, 0, 0), (0, 0, 0, 0, 0, 0, 0)]) == (2, 0)  # deletes
        assert vm.set_user_memory_regions([]) == (0, 0)


def test_b1_a_guest_memfd_number_that_is_no_open_fd_is_ebadf(vm):
    with SharedMemory.create("t", 2 * MiB) as shm:
        with pytest.raises(KVMError) as e:
            vm.set_user_memory_region2(0, KVM_MEM_GUEST_MEMFD, 1 << 32, 2 * MiB, shm.address, 0, 1000)
        assert e.value.errno == errno.EBADF


def test_b2_an_fd_that_is_not_a_guest_memfd_is_einval(vm):
    with SharedMemory.create("t", 2 * MiB) as shm:
        with pytest.raises(KVMError) as e:
            vm.set_user_memory_region2(0, KVM_MEM_GUEST_MEMFD, 1 << 32, 2 * MiB, shm.address, 0, shm.fd)
        assert e.value.errno == errno.EINVAL


def test_b3_a_guest_memfd_of_another_vm_is_einval(system, vm):
    with (
        system.create_vm(0) as other,
        other.create_guest_memfd(2 * MiB, 0) as foreign,
        SharedMemory.create("t", 2 * MiB) as shm,
    ):
        with pytest.raises(KVMError) as e:
            vm.set_user_memory_region2(0, KVM_MEM_GUEST_MEMFD, 1 << 32, 2 * MiB, shm.address, 0, foreign.fd)
        assert e.value.errno == errno.EINVAL


def test_memory_attributes_ioctl_answers_as_the_kernel_is_built(vm):
    """G3: compiled out -> ENOTTY; built in -> attributes 0 is a no-op (SA6) and PRIVATE on a
    default VM (no private memory) is EINVAL (SA2)."""
    if not kernel_facts().default.attributes_ioctl:
        with pytest.raises(KVMError) as e:
            vm.set_memory_attributes(0, 4096, 0)
        assert e.value.errno == errno.ENOTTY
        return
    vm.set_memory_attributes(0, 4096, 0)
    if not kernel_facts().default.private_memory:
        with pytest.raises(KVMError) as e:
            vm.set_memory_attributes(0, 4096, 1 << 3)
        assert e.value.errno == errno.EINVAL


def test_guarded_access_turns_sigbus_into_efault(vm):
    """mmap of a guest_memfd without INIT_SHARED succeeds, but touching it SIGBUSes;
    the shim's guard must turn that into EFAULT instead of killing the interpreter."""
    with vm.create_guest_memfd(MiB, GUEST_MEMFD_FLAG_MMAP) as gmem:
        mapping = gmem.map()
        with pytest.raises(KVMError) as e:
            mapping.read(0, 8)
        assert e.value.errno == errno.EFAULT
        with pytest.raises(KVMError):
            mapping.write(0, b"x")


def test_a_mappable_guest_memfd_reads_back_what_was_written_and_zeros_after_a_punch(vm):
    with vm.create_guest_memfd(MiB, GUEST_MEMFD_FLAG_MMAP | GUEST_MEMFD_FLAG_INIT_SHARED) as gmem:
        m = gmem.map()
        m.write(4096, b"pattern")
        assert m.read(4096, 7) == b"pattern"
        gmem.punch_hole(4096, 4096)
        assert m.read(4096, 7) == bytes(7)


def test_mmap_without_mmap_flag_is_enodev(vm):
    with vm.create_guest_memfd(MiB, 0) as gmem:
        with pytest.raises(KVMError) as e:
            gmem.map()
        assert e.value.errno == errno.ENODEV


def test_shared_memory_is_mapped_at_creation_and_reads_zeros_after_a_punch():
    with SharedMemory.create("t", MiB) as shm:
        assert shm.mapping is not None
        shm.mapping.write(0, b"abc")
        shm.punch_hole(0, 4096)
        assert shm.mapping.read(0, 3) == bytes(3)


def test_g1_vm_ioctls_from_another_process_get_eio(vm):
    """Kernel gate G1: the reason memslotd never forks workers."""
    with SharedMemory.create("t", 2 * MiB) as shm:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            rc = lib.msd_set_user_memory_region2(vm.fd, 0, 0, 1 << 32, 2 * MiB, shm.address, 0, 0)
            os._exit(0 if rc == -errno.EIO else 1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
