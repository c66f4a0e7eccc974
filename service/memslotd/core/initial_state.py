"""``initial_state``: the current state as synthetic events (Kubernetes' sendInitialEvents).

Built synchronously on the event loop, in the same step as the subscription, so no
live event can fall between the snapshot and the stream.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from .ranges import Range
from .registry import Registry
from .slot_events import slot_event

__all__ = ["initial_state"]

RANGES_PER_EVENT = 1000


def initial_state(reg: Registry, vm_id: str | None = None) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(type, vm_id, data) for every VM, guest_memfd, shared-memory region, slot and attribute range."""
    for vm in reg.vms.values():
        if vm_id is not None and vm.id != vm_id:
            continue
        yield "vm.created", vm.id, {"type": vm.type, "name": vm.name, "enforcement": vm.enforcement}
        for g in vm.gmems.values():
            yield "guest_memfd.created", vm.id, {"id": g.id, "name": g.name, "size": g.size, "flags": list(g.flags)}
        for m in vm.shms.values():
            yield "shared_memory.created", vm.id, {"id": m.id, "name": m.name, "size": m.size, "hugepages": m.hugepages}
        for slot in vm.slots:
            yield "memslot.created", vm.id, slot_event(slot)
        batch: list[dict[str, Any]] = []
        for r, state in vm.attributes.runs(Range(0, 1 << 64)):
            batch.append({"guest_phys_addr": r.start, "size": r.size, "state": state})
            if len(batch) == RANGES_PER_EVENT:
                yield "memory.attributes", vm.id, {"ranges": batch, "enforcement": vm.enforcement}
                batch = []
        if batch:
            yield "memory.attributes", vm.id, {"ranges": batch, "enforcement": vm.enforcement}
