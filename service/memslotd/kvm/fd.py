"""Ownership of one file descriptor or mapping: idempotent close, ``with``, state.

Subclasses call :meth:`_fd_or_raise` before every kernel call, so use after
close raises ``EBADF`` instead of hitting a recycled fd number.
"""

from __future__ import annotations

import enum
import warnings
from typing import Any

from ._lib import lib
from .errors import FdClosedError

__all__ = ["FdState", "OwnedFd"]


class FdState(enum.Enum):
    OPEN = "open"
    CLOSED = "closed"


class OwnedFd:
    """Owns exactly one fd; closing is explicit (``close()`` or ``with``)."""

    kind = "fd"

    def __init__(self, fd: int):
        self._fd = fd
        self.state = FdState.OPEN

    @property
    def fd(self) -> int:
        return self._fd_or_raise("fd")

    def _fd_or_raise(self, ioctl: str) -> int:
        if self.state is FdState.CLOSED:
            raise FdClosedError(self.kind, ioctl)
        return self._fd

    def _release(self) -> None:
        """Hook for subclasses that own a mapping besides the fd."""

    def close(self) -> None:
        if self.state is FdState.CLOSED:
            return
        self.state = FdState.CLOSED
        try:
            self._release()
        finally:
            lib.msd_close(self._fd)

    @property
    def closed(self) -> bool:
        return self.state is FdState.CLOSED

    def __enter__(self: Any) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "state", FdState.CLOSED) is FdState.OPEN:
            warnings.warn(f"unclosed {self.kind} fd {self._fd}", ResourceWarning, stacklevel=1)
