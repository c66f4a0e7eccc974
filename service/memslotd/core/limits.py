"""Quotas that protect the host (all configurable; see memslotd.settings).

The byte quotas count what the daemon has *committed* (populated) in its guest_memfds and
shared memory, as an upper bound it keeps itself: a sparse object costs nothing until
``allocate``, a probe access or a hugetlb reservation populates it, and a punch (or the
discard of a conversion) gives it back. By default they derive from the host at start:
the daemon total is ``MemTotal - reserve`` and a VM may use all of it
(:func:`derive_byte_quotas`). Whatever populates memory is checked first against both quotas
(507) and against what the host can give now, ``MemAvailable - reserve`` (503
``HOST_MEMORY_LOW``), before the kernel call: never the OOM killer.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

__all__ = ["Limits", "MemInfo", "read_meminfo", "derive_byte_quotas", "default_reserve", "hugepage_pool"]

GiB = 1 << 30


@dataclasses.dataclass(frozen=True, slots=True)
class MemInfo:
    """The two lines of ``/proc/meminfo`` the quotas need, in bytes."""

    total: int
    available: int


def read_meminfo(path: Path = Path("/proc/meminfo")) -> MemInfo:
    values: dict[str, int] = {}
    for line in path.read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("MemTotal", "MemAvailable"):
            values[key] = int(rest.split()[0]) * 1024  # the kernel prints kB (KiB)
    return MemInfo(values["MemTotal"], values.get("MemAvailable", values["MemTotal"]))


def default_reserve(mem_total: int) -> int:
    """What the daemon leaves to the host by default: a tenth of RAM, at least 1 GiB, never
    more than half of RAM (so a small host still gets a usable quota)."""
    return min(max(mem_total // 10, GiB), mem_total // 2)


def derive_byte_quotas(
    mem_total: int, reserve: int | None = None, per_vm: int | None = None, total: int | None = None
) -> tuple[int, int, int]:
    """(reserve, max_bytes_per_vm, max_bytes_total): configured values win, the rest derive
    from ``MemTotal``. The derived daemon total is ``MemTotal - reserve``; a VM may use all of it."""
    reserve = default_reserve(mem_total) if reserve is None else reserve
    total = max(mem_total - reserve, 0) if total is None else total
    per_vm = total if per_vm is None else per_vm
    return reserve, per_vm, total


@dataclasses.dataclass(frozen=True, slots=True)
class Limits:
    max_vms: int = 64
    max_slots_per_vm: int = 32764  # never above the kernel's KVM_CAP_NR_MEMSLOTS
    max_bytes_per_vm: int = 1 << 50
    max_bytes_total: int = 1 << 51
    memory_reserve_bytes: int = 0  # left to the host: populating is refused below MemAvailable - this
    max_pending_per_vm: int = 64
    max_probe_ops: int = 64
    max_probes_per_second: float = 50.0


def hugepage_pool(page_size: int, root: Path = Path("/sys/kernel/mm/hugepages")) -> tuple[int, int]:
    """(reserved, free) huge pages of ``page_size`` on this host; (0, 0) without the pool."""
    pool = root / f"hugepages-{page_size >> 10}kB"
    try:
        return int((pool / "nr_hugepages").read_text()), int((pool / "free_hugepages").read_text())
    except (OSError, ValueError):
        return 0, 0
