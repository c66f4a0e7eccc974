"""``MemoryCore``: the domain's single entry point, composed of its use-case services.

The services mirror the API's route files name for name: ``vms``, ``memory_objects``,
``memslots`` (with ``batch``), ``memory``, ``probe``, ``host_view``, ``events`` and ``host``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from .batch import BatchService
from .events import EventLog
from .host import HostService
from .host_view import HostViewService
from .initial_state import initial_state
from .limits import Limits
from .memory import MemoryService
from .memory_objects import MemoryObjectService
from .memslots import MemslotService
from .ports import KernelPort
from .probe import ProbeService
from .registry import Registry
from .vms import VMService

__all__ = ["MemoryCore"]


class MemoryCore:
    def __init__(self, kernel: KernelPort, *, limits: Limits | None = None, events: EventLog | None = None):
        self.limits = limits or Limits()
        self.events = events or EventLog()
        self.registry = Registry(kernel, self.events, self.limits)
        self.vms = VMService(self.registry)
        self.memory_objects = MemoryObjectService(self.registry)
        self.memslots = MemslotService(self.registry)
        self.batch = BatchService(self.memslots)
        self.memory = MemoryService(self.registry)
        self.probe = ProbeService(self.registry)
        self.host_view = HostViewService(self.registry)
        self.host = HostService(self.registry)
        self.on_close: list[Callable[[], None]] = []  # e.g. closing /dev/kvm after every VM
        self.shim_version: int | None = None  # set by whoever wires the kernel layer in

    @property
    def closing(self) -> bool:
        """Set at shutdown: from then on every mutation answers 503 ``SHUTTING_DOWN``; reads go on."""
        return self.registry.closing

    @closing.setter
    def closing(self, value: bool) -> None:
        self.registry.closing = value

    def initial_state(self, vm_id: str | None = None) -> Iterator[tuple[str, str, dict[str, Any]]]:
        """The current state as (type, vm_id, data) events, for a stream's ``initial_state``."""
        return initial_state(self.registry, vm_id)

    async def close(self) -> None:
        """Delete every VM, then run the close hooks once (safe to call again)."""
        await self.vms.close_all()
        hooks, self.on_close = self.on_close, []
        for hook in hooks:
            hook()
