"""guest_memfd (``KVM_CREATE_GUEST_MEMFD``): the private part of a memslot."""

from __future__ import annotations

import errno
import signal
import subprocess
import sys

from ..uapi import GUEST_MEMFD_FLAG_INIT_SHARED, GUEST_MEMFD_FLAG_MMAP
from .errors import KVMError
from .file_backed import FileBacked

__all__ = ["GuestMemfd"]


class GuestMemfd(FileBacked):
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
        proc = subprocess.run(
            [sys.executable, "-m", "memslotd.kvm._poison", str(fd), str(self.size), str(offset)],
            pass_fds=[fd],
            capture_output=True,
            text=True,
            timeout=30,
        )
        if proc.returncode == -signal.SIGBUS:
            return errno.EBUSY, "sigbus"
        if proc.returncode != 0 or not proc.stdout.strip().isdigit():
            raise KVMError(
                errno.EIO, f"poison helper failed: {proc.stderr.strip()[-200:]}", ioctl="madvise(MADV_HWPOISON)"
            )
        return int(proc.stdout.strip()), "madvise"
