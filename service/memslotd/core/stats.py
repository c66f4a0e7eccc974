"""Plain counters the core keeps for operators (exported by the API as Prometheus metrics)."""

from __future__ import annotations

import dataclasses

__all__ = ["Stats"]


@dataclasses.dataclass
class Stats:
    conversions: int = 0  # changed ranges
    converted_bytes: int = 0
    discarded_bytes: int = 0
    punched_bytes: int = 0
    probes: int = 0
    probe_ops: int = 0
