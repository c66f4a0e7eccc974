"""Quotas that protect the host (all configurable; see memslotd.settings)."""

from __future__ import annotations

import dataclasses

__all__ = ["Limits"]


@dataclasses.dataclass(frozen=True, slots=True)
class Limits:
    max_vms: int = 64
    max_slots_per_vm: int = 32764  # never above the kernel's KVM_CAP_NR_MEMSLOTS
    max_bytes_per_vm: int = 1 << 50
    max_bytes_total: int = 1 << 51
    max_pending_per_vm: int = 64
    max_probe_ops: int = 64
    max_probes_per_second: float = 50.0
