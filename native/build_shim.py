"""cffi API-mode build of the native shim into ``memslotd._native``.

Run by setuptools (``cffi_modules`` in setup.py) during ``pip install``; the
header is the cdef, the C file is compiled as the module's source.

``MSD_SHIM_VERSION`` is derived here, never written by hand: the CRC-32 of the
header and the C source (31 bits). ``memslotd.kvm._lib`` computes the same from
the checkout's ``native/`` at import, so a module built from other sources is
refused instead of failing later at a missing or changed function.
"""

import zlib
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
HEADER, SOURCE = HERE / "memslotd_shim.h", HERE / "memslotd_shim.c"
SHIM_VERSION = zlib.crc32(HEADER.read_bytes() + SOURCE.read_bytes()) & 0x7FFF_FFFF

ffibuilder = FFI()
ffibuilder.cdef(HEADER.read_text())
ffibuilder.set_source(
    "memslotd._native",
    f"#define MSD_SHIM_VERSION {SHIM_VERSION}\n" + SOURCE.read_text(),
    extra_compile_args=["-O2", "-Wall", "-Wextra", "-Werror", "-Wno-unused-parameter"],
    libraries=["rt", "pthread"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
