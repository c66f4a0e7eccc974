"""The part guest_memfd and shared memory share: an fd with fallocate and a host mapping."""

from __future__ import annotations

from ._lib import check, lib
from .fd import OwnedFd
from .mapping import Mapping

__all__ = ["FileBacked"]

FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02


class FileBacked(OwnedFd):
    """An fd that supports fallocate, with an optional daemon-owned host mapping."""

    def __init__(self, fd: int, size: int):
        super().__init__(fd)
        self.size = size
        self.mapping: Mapping | None = None

    def punch_hole(self, offset: int, length: int) -> None:
        """``fallocate(PUNCH_HOLE|KEEP_SIZE)``: the range reads as zeros afterwards."""
        self._fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, "fallocate(PUNCH_HOLE)", offset, length)

    def allocate(self, offset: int, length: int) -> None:
        """``fallocate(KEEP_SIZE)``: back the range with pages now."""
        self._fallocate(FALLOC_FL_KEEP_SIZE, "fallocate(KEEP_SIZE)", offset, length)

    def _fallocate(self, mode: int, call: str, offset: int, length: int) -> None:
        fd = self._fd_or_raise("fallocate")
        check(lib.msd_fallocate(fd, mode, offset, length), call, offset=offset, length=length)

    def map(self) -> Mapping:
        """Map the whole file ``MAP_SHARED`` (once); the object owns the mapping."""
        if self.mapping is None:
            self.mapping = Mapping(self._fd_or_raise("mmap"), self.size)
        return self.mapping

    def _release(self) -> None:
        if self.mapping is not None:
            self.mapping.close()
            self.mapping = None
