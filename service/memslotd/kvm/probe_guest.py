"""A tiny 64-bit guest that reads and writes guest-physical memory on a real vCPU.

The guest is three bytes, ``rep movsb; hlt``: each access is one ``KVM_RUN``
with RSI/RDI/RCX set by the host. It runs in long mode entered directly with
``KVM_SET_SREGS`` and identity page tables (2 MiB pages) kept in a reserved
window of guest-physical memory that the runner backs with its own memfd and
installs as a memslot only while probing.

Page tables are append-only: an entry, once written, never changes. Under PVM's
shadow paging a not-present -> present transition needs no invalidation, while
rewriting a present entry from the host would leave stale shadow pages. When the
pool is full, the tables are rebuilt from scratch with the window's memslot removed
(deleting a memslot zaps every shadow page built from it) and a fresh vCPU.

Window layout (offsets from :data:`WINDOW_GPA`)::

    0x00000  code            0x01000  PML4
    0x40000  data buffer (up to MAX_OP_BYTES)
    0x80000 .. 0x200000  page-table pool (PDPTs and PDs, 384 pages)
"""

from __future__ import annotations

import dataclasses

from ..uapi import GUEST_MEMFD_FLAG_INIT_SHARED, GUEST_MEMFD_FLAG_MMAP, KVM_MEM_GUEST_MEMFD, Cap
from ..uapi import PROBE_MAX_GPA as MAX_GPA
from ..uapi import PROBE_MAX_OP_BYTES as MAX_OP_BYTES
from ..uapi import PROBE_WINDOW_GPA as WINDOW_GPA
from ..uapi import PROBE_WINDOW_SIZE as WINDOW_SIZE
from .errors import FdClosedError
from .shared_memory import SharedMemory
from .vcpu import VCPUExit, VCPUFd
from .vm import VMFd

__all__ = [
    "GuestRunner",
    "ProbeAccess",
    "WINDOW_GPA",
    "WINDOW_SIZE",
    "MAX_OP_BYTES",
    "GuestTablesExhausted",
    "guest_memfd_only_is_honoured",
]

_CODE, _PML4, _BUFFER, _POOL = 0x0, 0x1000, 0x40000, 0x80000
_GUEST_CODE = bytes([0xF3, 0xA4, 0xF4])  # rep movsb; hlt
_TABLE_FLAGS = 0x3  # present | writable
_LARGE_PAGE_FLAGS = 0x83  # present | writable | PS (2 MiB)
_PAGE = 4096


def _canonical(gpa: int) -> int:
    """The virtual address the identity map gives ``gpa``: bits 63..48 copy bit 47, so
    physical addresses in [2^47, 2^48) are reached through the canonical upper half."""
    return gpa | 0xFFFF_0000_0000_0000 if gpa & (1 << 47) else gpa


class GuestTablesExhausted(Exception):
    """The page-table pool cannot map more distinct GiB regions (handled by a rebuild)."""


@dataclasses.dataclass(frozen=True, slots=True)
class ProbeAccess:
    """Outcome of one guest access: ``data`` for a completed read, or the exit taken."""

    ok: bool
    data: bytes | None = None
    exit: VCPUExit | None = None


class GuestRunner:
    """Owns a vCPU of ``vm`` and the memfd behind the probe window."""

    def __init__(self, vm: VMFd, *, timeout_ms: int = 1000):
        self._vm = vm
        self._timeout_ms = timeout_ms
        self._window = SharedMemory.create("memslotd-probe", WINDOW_SIZE)
        self._next_table = _POOL
        self._tables: dict[tuple[int, ...], int] = {}  # (level, index path) -> table offset
        self._next_vcpu_id = 0
        self._vcpu: VCPUFd | None = None
        self._installed: int | None = None  # the window's slot id while a probe runs
        try:
            self._mem = self._window.map()
            self._mem.write(_CODE, _GUEST_CODE)
            self._map_range(WINDOW_GPA, WINDOW_SIZE)
        except BaseException:
            self._window.close()  # a half-made runner leaves no memfd behind
            raise

    # -- memslot of the window ----------------------------------------------------
    def install(self, slot: int) -> None:
        self._vm.set_user_memory_region2(slot, 0, WINDOW_GPA, WINDOW_SIZE, self._window.address)
        self._installed = slot

    def uninstall(self, slot: int) -> None:
        if self._window.closed:  # closed: the slot is no longer the window's to delete
            raise FdClosedError("probe window", "KVM_SET_USER_MEMORY_REGION2")
        self._installed = None
        self._vm.delete_user_memory_region(slot)

    # -- page tables ----------------------------------------------------------------
    def _table(self, key: tuple[int, ...]) -> int:
        if key not in self._tables:
            if self._next_table >= WINDOW_SIZE:
                raise GuestTablesExhausted("probe page-table pool is full")
            self._tables[key] = self._next_table
            self._next_table += _PAGE
        return self._tables[key]

    def _set_entry_once(self, table: int, index: int, value: int) -> None:
        offset = table + index * 8
        if int.from_bytes(self._mem.read(offset, 8), "little") == 0:
            self._mem.write(offset, value.to_bytes(8, "little"))

    def _map(self, gpa: int, length: int) -> None:
        """Map an access's range; with the pool full, rebuild the tables and map it again."""
        try:
            self._map_range(gpa, length)
        except GuestTablesExhausted:
            self._rebuild_tables()
            self._map_range(gpa, length)  # one access spans at most two GiB regions

    def _rebuild_tables(self) -> None:
        slot = self._installed
        if slot is not None:
            self.uninstall(slot)  # zaps the shadow pages built from the old tables
        self._retire_vcpu()
        self._window.punch_hole(_PML4, _PAGE)
        self._window.punch_hole(_POOL, WINDOW_SIZE - _POOL)
        self._tables.clear()
        self._next_table = _POOL
        self._map_range(WINDOW_GPA, WINDOW_SIZE)
        if slot is not None:
            self.install(slot)

    def _map_range(self, gpa: int, length: int) -> None:
        start = gpa & ~((2 << 20) - 1)
        for page in range(start, gpa + length, 2 << 20):
            l4, l3, l2 = (page >> 39) & 511, (page >> 30) & 511, (page >> 21) & 511
            pdpt = self._table((l4,))
            pd = self._table((l4, l3))
            self._set_entry_once(_PML4, l4, (WINDOW_GPA + pdpt) | _TABLE_FLAGS)
            self._set_entry_once(pdpt, l3, (WINDOW_GPA + pd) | _TABLE_FLAGS)
            self._set_entry_once(pd, l2, page | _LARGE_PAGE_FLAGS)

    # -- vCPU -------------------------------------------------------------------------
    def _ensure_vcpu(self) -> VCPUFd:
        if self._vcpu is None:
            self._vcpu = self._vm.create_vcpu(self._next_vcpu_id)
            self._next_vcpu_id += 1
        return self._vcpu

    def _retire_vcpu(self) -> None:
        """A vCPU left mid-instruction is replaced (KVM keeps it until VM teardown)."""
        if self._vcpu is not None:
            self._vcpu.close()
            self._vcpu = None

    def _copy(self, src: int, dst: int, length: int) -> VCPUExit:
        vcpu = self._ensure_vcpu()
        vcpu.enter_long_mode(WINDOW_GPA + _PML4)
        vcpu.set_regs(rip=WINDOW_GPA + _CODE, rsi=_canonical(src), rdi=_canonical(dst), rcx=length)
        result = vcpu.run(self._timeout_ms)
        if result.reason == "mmio":
            self._complete_pending_io(vcpu, budget=2 * length + 16)
        elif result.reason not in ("hlt", "memory_fault", "fault"):  # a fault leaves the vCPU re-runnable
            self._retire_vcpu()
        return result

    def _complete_pending_io(self, vcpu: VCPUFd, budget: int) -> None:
        """KVM finishes an MMIO exit only on the next KVM_RUN; immediate_exit makes
        that run return EINTR right after (api.rst, "immediate_exit")."""
        vcpu.set_immediate_exit(True)
        try:
            for _ in range(budget):
                if vcpu.run(self._timeout_ms).reason != "mmio":
                    return
        finally:
            if not vcpu.closed:
                vcpu.set_immediate_exit(False)
        self._retire_vcpu()

    def read(self, gpa: int, length: int) -> ProbeAccess:
        self._check(gpa, length)
        self._map(gpa, length)
        self._mem.write(_BUFFER, bytes(length))
        result = self._copy(gpa, WINDOW_GPA + _BUFFER, length)
        if result.reason != "hlt":
            return ProbeAccess(False, exit=result)
        return ProbeAccess(True, data=self._mem.read(_BUFFER, length))

    def write(self, gpa: int, data: bytes) -> ProbeAccess:
        self._check(gpa, len(data))
        self._map(gpa, len(data))
        self._mem.write(_BUFFER, data)
        result = self._copy(WINDOW_GPA + _BUFFER, gpa, len(data))
        return ProbeAccess(result.reason == "hlt", exit=None if result.reason == "hlt" else result)

    @staticmethod
    def _check(gpa: int, length: int) -> None:
        if not 0 < length <= MAX_OP_BYTES or gpa < 0 or gpa + length > MAX_GPA:
            raise ValueError(f"probe access [{gpa:#x}, +{length}) out of bounds")
        if gpa < WINDOW_GPA + WINDOW_SIZE and WINDOW_GPA < gpa + length:
            raise ValueError("probe access overlaps the probe window")

    def close(self) -> None:
        self._retire_vcpu()
        self._window.close()


def guest_memfd_only_is_honoured(vm: VMFd) -> bool | None:
    """Does this host serve guest faults in a slot whose guest_memfd has ``mmap`` from the
    guest_memfd (``KVM_MEMSLOT_GMEM_ONLY``), or from ``userspace_addr``?

    Mainline with TDP follows the guest_memfd; PVM's shadow paging walks ``userspace_addr``
    instead. Asked of the kernel, not assumed: one slot backed by both, two patterns, one
    guest read. ``None`` where a guest_memfd cannot be both mmap-ed and host-written here.
    """
    both = GUEST_MEMFD_FLAG_MMAP | GUEST_MEMFD_FLAG_INIT_SHARED
    if vm.check_extension(Cap.GUEST_MEMFD_FLAGS) & both != both:
        return None
    gpa, size = 1 << 32, 2 << 20
    with SharedMemory.create("memslotd-fault-path", size) as shm, vm.create_guest_memfd(size, both) as gmem:
        gmem.map().write(0, b"G" * 8)
        assert shm.mapping is not None
        shm.mapping.write(0, b"S" * 8)
        vm.set_user_memory_region2(0, KVM_MEM_GUEST_MEMFD, gpa, size, shm.address, 0, gmem.fd)
        runner = GuestRunner(vm)
        try:
            runner.install(1)
            seen = runner.read(gpa, 8)
            runner.uninstall(1)
        finally:
            runner.close()
            vm.delete_user_memory_region(0)
    return seen.data == b"G" * 8 if seen.ok else None
