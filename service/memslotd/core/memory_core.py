"""``MemoryCore``: the domain's single entry point, composed of its use-case services."""

from __future__ import annotations

from collections.abc import Callable

from ..uapi import HostCapabilities
from .events import EventLog
from .limits import Limits
from .batch import BatchService
from .memory import ConversionService
from .host_view import HostViewService
from .memslots import MemslotService
from .probe import ProbeService
from .ports import KernelPort
from .registry import Registry

__all__ = ["MemoryCore"]


class MemoryCore:
    def __init__(self, kernel: KernelPort, *, limits: Limits | None = None, events: EventLog | None = None):
        self.limits = limits or Limits()
        self.events = events or EventLog()
        self.registry = Registry(kernel, self.events, self.limits)
        self.memslots = MemslotService(self.registry)
        self.conversion = ConversionService(self.registry)
        self.probe = ProbeService(self.registry)
        self.host_view = HostViewService(self.registry)
        self.batch = BatchService(self.memslots)
        self.on_close: list[Callable[[], None]] = []  # e.g. closing /dev/kvm after every VM
        self.shim_version: int | None = None  # set by whoever wires the kernel layer in

    @property
    def host(self) -> HostCapabilities:
        return self.registry.host

    async def close(self) -> None:
        """Delete every VM, then run the close hooks once (safe to call again)."""
        await self.registry.close_all()
        hooks, self.on_close = self.on_close, []
        for hook in hooks:
            hook()
