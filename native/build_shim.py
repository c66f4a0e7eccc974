"""cffi API-mode build of the native shim into ``memslotd._native``.

Run by setuptools (``cffi_modules`` in setup.py) during ``pip install``; the
header is the cdef, the C file is compiled as the module's source.
"""

from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent

ffibuilder = FFI()
ffibuilder.cdef((HERE / "memslotd_shim.h").read_text())
ffibuilder.set_source(
    "memslotd._native",
    (HERE / "memslotd_shim.c").read_text(),
    extra_compile_args=["-O2", "-Wall", "-Wextra", "-Werror", "-Wno-unused-parameter"],
    libraries=["rt", "pthread"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
