"""Daemon-side state of a VM and the kernel objects it owns."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import secrets
import time
from collections.abc import AsyncIterator

from .attributes import SHARED, AttributeMap
from .errors import NotFound, ShuttingDown, VMBusy
from .ports import GuestMemfdPort, GuestRunnerPort, SharedMemoryPort, VMPort
from .ranges import Range
from .slot_table import GmemBindings, MemslotTable

__all__ = ["VMRecord", "GmemRecord", "ShmRecord", "new_id", "id_pattern", "ID_PATTERN", "VM_ID_PATTERN"]


def new_id(prefix: str) -> str:
    """``<prefix>-<12 hex digits>``: what ``id_pattern(prefix)`` matches."""
    return f"{prefix}-{secrets.token_hex(6)}"


def id_pattern(prefix: str = "[a-z]+") -> str:
    """The shape of the ids ``new_id`` makes, with room to grow (up to 32 hex digits)."""
    return rf"^{prefix}-[0-9a-f]{{1,32}}$"


ID_PATTERN = id_pattern()  # any object id: vm-…, gmem-…, shm-…
VM_ID_PATTERN = id_pattern("vm")


@dataclasses.dataclass(eq=False)
class GmemRecord:
    id: str
    size: int
    flags: tuple[str, ...]
    port: GuestMemfdPort
    name: str | None = None
    created_at: float = dataclasses.field(default_factory=time.time)
    bindings: GmemBindings = dataclasses.field(default_factory=GmemBindings)
    populated: AttributeMap = dataclasses.field(default_factory=AttributeMap)  # see core.budget

    def __post_init__(self) -> None:
        self.populated.add(Range(0, self.size), SHARED)


@dataclasses.dataclass(eq=False)
class ShmRecord:
    id: str
    size: int
    hugepages: str | None
    page_size: int
    port: SharedMemoryPort
    name: str | None = None
    created_at: float = dataclasses.field(default_factory=time.time)
    users: set[int] = dataclasses.field(default_factory=set)  # slot ids
    populated: AttributeMap = dataclasses.field(default_factory=AttributeMap)  # see core.budget

    def __post_init__(self) -> None:
        self.populated.add(Range(0, self.size), SHARED)


@dataclasses.dataclass(eq=False)
class VMRecord:
    id: str
    type: str
    name: str | None
    port: VMPort
    slots: MemslotTable
    max_pending: int
    created_at: float = dataclasses.field(default_factory=time.time)
    gmems: dict[str, GmemRecord] = dataclasses.field(default_factory=dict)
    shms: dict[str, ShmRecord] = dataclasses.field(default_factory=dict)
    attributes: AttributeMap = dataclasses.field(default_factory=AttributeMap)
    runner: GuestRunnerPort | None = None
    #: KVM enforces private/shared for this VM (its type has KVM_MEMORY_ATTRIBUTE_PRIVATE and the
    #: ioctl): conversions call KVM_SET_MEMORY_ATTRIBUTES and the attribute map mirrors the kernel.
    kernel_attributes: bool = False
    guest_memfd_flags: int = 0  # KVM_CAP_GUEST_MEMFD_FLAGS answered by a VM of this type
    deleted: bool = False
    closing: bool = False  # the daemon is shutting down: only its own teardown may mutate
    _lock: asyncio.Lock = dataclasses.field(default_factory=asyncio.Lock)
    _pending: int = 0

    @property
    def backing_bytes(self) -> int:
        return sum(g.size for g in self.gmems.values()) + sum(s.size for s in self.shms.values())

    @property
    def enforcement(self) -> str:
        """Who enforces private/shared for this VM: ``kernel`` or ``daemon`` (the map alone)."""
        return "kernel" if self.kernel_attributes else "daemon"

    @contextlib.asynccontextmanager
    async def mutation(self, *, teardown: bool = False) -> AsyncIterator[None]:
        """Serialize mutations of this VM; refuse (429) past ``max_pending`` waiters, and
        (503) once the daemon is shutting down, except for its own ``teardown``."""
        if self.closing and not teardown:
            raise ShuttingDown("the daemon is shutting down: no more changes", vm_id=self.id)
        if self._pending >= self.max_pending and not teardown:
            raise VMBusy(f"VM {self.id} already has {self._pending} operations queued", vm_id=self.id)
        self._pending += 1
        try:
            async with self._lock:
                if self.deleted:
                    raise NotFound(f"VM {self.id} was deleted", code="VM_NOT_FOUND", vm_id=self.id)
                if self.closing and not teardown:  # queued behind the lock when the stop began
                    raise ShuttingDown("the daemon is shutting down: no more changes", vm_id=self.id)
                yield
        finally:
            self._pending -= 1
