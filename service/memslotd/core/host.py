"""The host: what its KVM offers, the quotas in force and what is committed, operator counters
(``api/routes/host.py`` and ``api/routes/metrics.py``)."""

from __future__ import annotations

from ..uapi import KVM_MEMORY_ATTRIBUTE_PRIVATE, HostCapabilities
from .limits import read_meminfo
from .memory_objects import GMEM_FLAG_BITS
from .read_models import HostUsage
from .registry import Registry
from .stats import Stats

__all__ = ["HostService"]


class HostService:
    def __init__(self, registry: Registry):
        self.reg = registry

    @property
    def capabilities(self) -> HostCapabilities:
        """Probed once at start on a throw-away VM of every type the host offers."""
        return self.reg.host

    @property
    def enforcement(self) -> str:
        """Who enforces private/shared on a default VM: ``kernel`` or ``daemon``."""
        return self.reg.enforcement

    def enforcement_for(self, vm_type: str) -> str:
        return self.reg.enforcement_for(vm_type)

    @staticmethod
    def guest_memfd_flag_names(bits: int) -> list[str]:
        return [name for name, bit in GMEM_FLAG_BITS.items() if bits & bit]

    @staticmethod
    def memory_attribute_names(bits: int) -> list[str]:
        return ["private"] if bits & KVM_MEMORY_ATTRIBUTE_PRIVATE else []

    def usage(self) -> HostUsage:
        """What the daemon has committed, and what the host has (``/proc/meminfo``)."""
        info = read_meminfo()
        return HostUsage(self.reg.budget.committed(), info.total, info.available)

    @property
    def stats(self) -> Stats:
        return self.reg.stats
