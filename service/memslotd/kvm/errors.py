"""Errors of the kernel-object layer.

::

    OSError
     └── KVMError          an ioctl/syscall returned -errno (errno, ioctl, context)
          └── FdClosedError  the object was used after close() (errno EBADF)
"""

from __future__ import annotations

import errno as _errno
from typing import Any

__all__ = ["KVMError", "FdClosedError"]


class KVMError(OSError):
    """A kernel call failed. ``errno`` is the kernel's, unchanged."""

    def __init__(self, code: int, message: str, *, ioctl: str, context: dict[str, Any] | None = None):
        super().__init__(code, message)
        self.ioctl = ioctl
        self.context = dict(context or {})


class FdClosedError(KVMError):
    def __init__(self, what: str, ioctl: str):
        super().__init__(_errno.EBADF, f"{what} is closed", ioctl=ioctl)
