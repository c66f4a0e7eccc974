"""The proof that a slot is real: a 64-bit guest on a real vCPU reads what the host wrote."""

from __future__ import annotations

import errno
import os

import pytest

from memslotd.kvm import KVMError, KVMSystem, SharedMemory
from memslotd.kvm.probe_guest import GuestRunner
from memslotd.uapi import GUEST_MEMFD_FLAG_INIT_SHARED, GUEST_MEMFD_FLAG_MMAP, KVM_MEM_GUEST_MEMFD, PROBE_WINDOW_GPA

pytestmark = pytest.mark.usefixtures("no_fd_leak")
MiB, GiB = 1 << 20, 1 << 30
PROBE_SLOT = 32763


@pytest.fixture
def vm():
    with KVMSystem.open() as system, system.create_vm(0) as vm:
        yield vm


@pytest.fixture
def runner(vm):
    r = GuestRunner(vm)
    r.install(PROBE_SLOT)
    yield r
    r.uninstall(PROBE_SLOT)
    r.close()


def test_guest_reads_guest_memfd_only_slot_and_sees_punch(vm, runner):
    with vm.create_guest_memfd(4 * MiB, GUEST_MEMFD_FLAG_MMAP | GUEST_MEMFD_FLAG_INIT_SHARED) as gmem:
        host = gmem.map()
        # shadow paging reads guest memory through userspace_addr: the gmem's own mapping
        vm.set_user_memory_region2(0, KVM_MEM_GUEST_MEMFD, 4 * GiB, 4 * MiB, host.address, 0, gmem.fd)
        host.write(0x1234, b"written-by-host")
        seen = runner.read(4 * GiB + 0x1234, 15)
        assert seen.ok and seen.data == b"written-by-host"

        assert runner.write(4 * GiB + 0x3000, b"written-by-guest").ok
        assert host.read(0x3000, 16) == b"written-by-guest"

        gmem.punch_hole(0, 4 * MiB)
        after = runner.read(4 * GiB + 0x1234, 15)
        assert after.ok and after.data == bytes(15)
        vm.delete_user_memory_region(0)


def test_guest_reads_shared_memory_slot(vm, runner):
    with SharedMemory.create("t", 2 * MiB) as shm:
        vm.set_user_memory_region2(1, 0, 1 * MiB * 16, 2 * MiB, shm.address)
        assert shm.mapping is not None
        shm.mapping.write(100, b"shared-side")
        seen = runner.read(16 * MiB + 100, 11)
        assert seen.ok and seen.data == b"shared-side"
        shm.punch_hole(0, 2 * MiB)
        assert runner.read(16 * MiB + 100, 11).data == bytes(11)
        vm.delete_user_memory_region(1)


def test_unmapped_gpa_is_an_mmio_exit_and_the_vcpu_recovers(vm, runner):
    with SharedMemory.create("t", 2 * MiB) as shm:
        vm.set_user_memory_region2(1, 0, 32 * MiB, 2 * MiB, shm.address)
        miss = runner.read(8 * GiB, 16)
        assert not miss.ok and miss.exit is not None
        assert miss.exit.reason == "mmio" and miss.exit.gpa == 8 * GiB and miss.exit.is_write is False
        wmiss = runner.write(8 * GiB, b"x" * 8)
        assert wmiss.exit is not None and wmiss.exit.reason == "mmio" and wmiss.exit.is_write
        assert shm.mapping is not None
        shm.mapping.write(0, b"still-works")
        assert runner.read(32 * MiB, 11).data == b"still-works"
        vm.delete_user_memory_region(1)


def test_deleted_slot_becomes_mmio(vm, runner):
    with SharedMemory.create("t", 2 * MiB) as shm:
        vm.set_user_memory_region2(1, 0, 32 * MiB, 2 * MiB, shm.address)
        assert runner.read(32 * MiB, 8).ok
        vm.delete_user_memory_region(1)
        gone = runner.read(32 * MiB, 8)
        assert gone.exit is not None and gone.exit.reason == "mmio"


def test_probe_refuses_its_own_window(runner):
    with pytest.raises(ValueError):
        runner.read(PROBE_WINDOW_GPA, 8)


class GuestRunnerFailingToMapTables(GuestRunner):
    """Failure injection: the page-table step of ``__init__`` fails after the window's memfd was
    made (writing to our own mapping cannot be made to fail on a real kernel)."""

    def _map_range(self, gpa: int, length: int) -> None:
        raise KVMError(errno.EFAULT, "injected: page tables", ioctl="none")


def test_a_runner_that_fails_half_made_closes_its_window(vm):
    before = set(os.listdir("/proc/self/fd"))
    with pytest.raises(KVMError, match="injected") as failed:
        GuestRunnerFailingToMapTables(vm)
    # the traceback still references the half-made runner: its memfd must be closed already
    assert failed.traceback and set(os.listdir("/proc/self/fd")) == before
