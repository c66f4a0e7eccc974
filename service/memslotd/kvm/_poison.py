"""Sacrificial injector: ``python -m memslotd.kvm._poison FD SIZE OFFSET``.

Maps the inherited guest_memfd, touches the page and poisons it with
``madvise(MADV_HWPOISON)``. It runs in its own process because the poisoned page
SIGBUSes whoever touches it (on 6.18 the injector itself, always). Prints the
errno (0 on success). Stdlib only: it must start fast and hold no KVM state.
"""

from __future__ import annotations

import mmap
import sys


def main() -> int:
    fd, size, offset = (int(a) for a in sys.argv[1:4])
    m = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    m[offset : offset + 1] = m[offset : offset + 1]  # fault the page in
    try:
        m.madvise(mmap.MADV_HWPOISON, offset, mmap.PAGESIZE)
    except OSError as exc:
        print(exc.errno, flush=True)
        return 0
    print(0, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
