"""Guest memory backends: guest_memfd (the private part) and memfd (the shared part)."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys

from ..uapi import GUEST_MEMFD_FLAG_INIT_SHARED, GUEST_MEMFD_FLAG_MMAP
from ._lib import check, ffi, lib
from .errors import KVMError
from .fd import OwnedFd
from .mapping import Mapping

__all__ = ["GuestMemfd", "SharedMemory"]

FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
MFD_HUGETLB = 0x0004
MFD_HUGE_2MB = 21 << 26
MFD_HUGE_1GB = 30 << 26


class _FileBacked(OwnedFd):
    """An fd that supports fallocate, with an optional daemon-owned host mapping."""

    def __init__(self, fd: int, size: int):
        super().__init__(fd)
        self.size = size
        self.mapping: Mapping | None = None

    def punch_hole(self, offset: int, length: int) -> None:
        """``fallocate(PUNCH_HOLE|KEEP_SIZE)``: the range reads as zeros afterwards."""
        fd = self._fd_or_raise("fallocate")
        check(
            lib.msd_fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length),
            "fallocate(PUNCH_HOLE)",
            offset=offset,
            length=length,
        )

    def allocate(self, offset: int, length: int) -> None:
        """``fallocate(KEEP_SIZE)``: back the range with pages now."""
        fd = self._fd_or_raise("fallocate")
        check(
            lib.msd_fallocate(fd, FALLOC_FL_KEEP_SIZE, offset, length),
            "fallocate(KEEP_SIZE)",
            offset=offset,
            length=length,
        )

    def map(self) -> Mapping:
        """Map the whole file ``MAP_SHARED`` (once); the object owns the mapping."""
        if self.mapping is None:
            self.mapping = Mapping(self._fd_or_raise("mmap"), self.size)
        return self.mapping

    def _release(self) -> None:
        if self.mapping is not None:
            self.mapping.close()
            self.mapping = None


class GuestMemfd(_FileBacked):
    """A guest_memfd (``KVM_CREATE_GUEST_MEMFD``), created by :meth:`VMFd.create_guest_memfd`."""

    kind = "guest_memfd"

    def __init__(self, fd: int, size: int, flags: int):
        super().__init__(fd, size)
        self.flags = flags

    @property
    def mappable(self) -> bool:
        """Host faults are served only with MMAP and INIT_SHARED (else SIGBUS)."""
        both = GUEST_MEMFD_FLAG_MMAP | GUEST_MEMFD_FLAG_INIT_SHARED
        return self.flags & both == both

    def inject_hwpoison(self, offset: int) -> tuple[int, str]:
        """Poison one page from a sacrificial child (``memslotd.kvm._poison``).

        Returns (errno, how): errno 0 = poisoned; ``how`` is "madvise" or "sigbus" when the
        child was killed by the poisoned page (6.18 reports EBUSY and SIGBUSes the injector).
        Raises :class:`KVMError` if the child could not run at all.
        """
        fd = self._fd_or_raise("madvise(MADV_HWPOISON)")
        proc = subprocess.run([sys.executable, "-m", "memslotd.kvm._poison", str(fd), str(self.size), str(offset)],
                              pass_fds=[fd], capture_output=True, text=True, timeout=30)
        if proc.returncode == -signal.SIGBUS:
            return errno.EBUSY, "sigbus"
        if proc.returncode != 0 or not proc.stdout.strip().isdigit():
            raise KVMError(errno.EIO, f"poison helper failed: {proc.stderr.strip()[-200:]}", ioctl="madvise(MADV_HWPOISON)")
        return int(proc.stdout.strip()), "madvise"


class SharedMemory(_FileBacked):
    """A memfd, mapped into the daemon: the ``userspace_addr`` side of memslots."""

    kind = "shared_memory"

    @classmethod
    def create(cls, name: str, size: int, hugepage_size: int | None = None) -> "SharedMemory":
        flags = 0
        if hugepage_size == 2 << 20:
            flags = MFD_HUGETLB | MFD_HUGE_2MB
        elif hugepage_size == 1 << 30:
            flags = MFD_HUGETLB | MFD_HUGE_1GB
        fd = check(lib.msd_memfd_create(name.encode()[:240], flags), "memfd_create", name=name)
        shm = cls(fd, size)
        try:
            check(lib.msd_ftruncate(fd, size), "ftruncate", size=size)
            shm.map()
        except BaseException:
            shm.close()
            raise
        return shm

    @property
    def address(self) -> int:
        self._fd_or_raise("mmap")  # closed: the mapping is gone
        assert self.mapping is not None
        return self.mapping.address

