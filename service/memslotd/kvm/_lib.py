"""The only importer of the cffi module: loads it and checks its version.

Untyped cffi objects never leave the ``memslotd.kvm`` package.
"""

from __future__ import annotations

import os

from .errors import KVMError

try:
    from memslotd._native import ffi, lib
except ImportError as exc:  # pragma: no cover - only on a broken install
    raise ImportError(
        "memslotd._native is not built: run 'make install' (pip install -e .) to build the cffi shim"
    ) from exc

SHIM_VERSION = 4
if lib.MSD_SHIM_VERSION != SHIM_VERSION:  # pragma: no cover - only on a stale build
    raise ImportError(
        f"memslotd._native is version {lib.MSD_SHIM_VERSION}, the package expects {SHIM_VERSION}: rebuild it"
    )

__all__ = ["ffi", "lib", "check"]


def check(result: int, ioctl: str, **context: object) -> int:
    """Return ``result`` unless it is ``-errno``; then raise :class:`KVMError`."""
    if result < 0:
        code = -result
        raise KVMError(code, f"{ioctl}: {os.strerror(code)}", ioctl=ioctl, context=context)
    return result
