"""A host mapping of guest memory, read and written only through the SIGBUS guard."""

from __future__ import annotations

import mmap
import warnings

from ._lib import check, ffi, lib
from .errors import FdClosedError

__all__ = ["Mapping"]

PROT_RW = mmap.PROT_READ | mmap.PROT_WRITE


class Mapping:
    """``MAP_SHARED`` mapping of ``length`` bytes of ``fd`` at ``offset``.

    Owns the mapping (not the fd). Reads and writes go through
    ``msd_guarded_copy``: a page the kernel refuses to fault in (guest_memfd
    without INIT_SHARED, hwpoison) raises ``KVMError(EFAULT)`` instead of
    killing the process with SIGBUS.
    """

    def __init__(self, fd: int, length: int, offset: int = 0):
        out = ffi.new("void **")
        check(lib.msd_mmap(fd, length, PROT_RW, mmap.MAP_SHARED, offset, out), "mmap", length=length)
        self._base = ffi.cast("char *", out[0])
        self.address: int = int(ffi.cast("uintptr_t", self._base))
        self.length = length
        self._mapped = True

    def _check_range(self, offset: int, length: int) -> None:
        if not self._mapped:
            raise FdClosedError("mapping", "mmap")
        if offset < 0 or length < 0 or offset + length > self.length:
            raise ValueError(f"range [{offset}, {offset + length}) outside mapping of {self.length} bytes")

    def read(self, offset: int, length: int) -> bytes:
        self._check_range(offset, length)
        buf = ffi.new("char[]", max(length, 1))
        check(
            lib.msd_guarded_copy(buf, self._base + offset, length),
            "guarded_copy",
            offset=offset,
        )
        return bytes(ffi.buffer(buf, length))

    def write(self, offset: int, data: bytes) -> None:
        self._check_range(offset, len(data))
        check(
            lib.msd_guarded_copy(self._base + offset, ffi.from_buffer(data), len(data)),
            "guarded_copy",
            offset=offset,
        )

    def close(self) -> None:
        if self._mapped:
            self._mapped = False
            check(lib.msd_munmap(self._base, self.length), "munmap")

    @property
    def closed(self) -> bool:
        return not self._mapped

    def __del__(self) -> None:
        if getattr(self, "_mapped", False):
            warnings.warn(f"unclosed mapping at {self.address:#x}", ResourceWarning, stacklevel=1)
