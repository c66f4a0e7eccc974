"""The only importer of the cffi module: loads it and checks its version.

Untyped cffi objects never leave the ``memslotd.kvm`` package.
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path

from .errors import KVMError

try:
    from memslotd._native import ffi, lib
except ImportError as exc:  # pragma: no cover - only on a broken install
    raise ImportError(
        "memslotd._native is not built: run 'make install' (pip install -e .) to build the cffi shim"
    ) from exc

#: The built module's version: a checksum of its sources, derived by native/build_shim.py.
SHIM_VERSION: int = lib.MSD_SHIM_VERSION


#: where a source checkout keeps the C sources (absent in an installed wheel)
CHECKOUT_NATIVE = Path(__file__).resolve().parents[3] / "native"


def checkout_version(native: Path = CHECKOUT_NATIVE) -> int | None:
    """The version the checkout's native/ sources would build (build_shim.py's formula), or
    None in an installed wheel, which ships the module built from its own sources."""
    header, source = native / "memslotd_shim.h", native / "memslotd_shim.c"
    if not (header.is_file() and source.is_file()):
        return None
    return zlib.crc32(header.read_bytes() + source.read_bytes()) & 0x7FFF_FFFF


_expected = checkout_version()
if _expected is not None and _expected != SHIM_VERSION:  # pragma: no cover - only on a stale build
    raise ImportError(
        f"memslotd._native was built from other sources (version {SHIM_VERSION}, native/ gives {_expected}): "
        "rebuild it with 'make install'"
    )

__all__ = ["ffi", "lib", "check", "SHIM_VERSION", "checkout_version"]


def check(result: int, ioctl: str, **context: object) -> int:
    """Return ``result`` unless it is ``-errno``; then raise :class:`KVMError`."""
    if result < 0:
        code = -result
        raise KVMError(code, f"{ioctl}: {os.strerror(code)}", ioctl=ioctl, context=context)
    return result
