"""Shared memory: a memfd the daemon maps, the ``userspace_addr`` part of a memslot."""

from __future__ import annotations

from ._lib import check, lib
from .file_backed import FileBacked

__all__ = ["SharedMemory"]

MFD_HUGETLB = 0x0004
MFD_HUGE_2MB = 21 << 26
MFD_HUGE_1GB = 30 << 26


class SharedMemory(FileBacked):
    """A memfd, mapped into the daemon: the ``userspace_addr`` side of memslots."""

    kind = "shared_memory"

    @classmethod
    def create(cls, name: str, size: int, hugepage_size: int | None = None) -> SharedMemory:
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
