"""``memslotctl apply -f layout.yaml``: declare a VM's memory layout and converge to it.

    vm: demo                                   # by name; created when missing
    guest_memfds:
      - {name: ram-private, size: 1G, flags: [mmap, init_shared]}
    shared_memory:
      - {name: ram-shared, size: 1G}
    memslots:
      - slot: 0
        guest_phys_addr: 4G
        size: 1G
        private: {guest_memfd: ram-private, offset: 0}
        shared: {shared_memory: ram-shared, offset: 0}

Idempotent: a second apply changes nothing. Objects are matched by name, slots by id.
A memory object cannot be resized in place: a size or flag change is reported, not forced.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from ..client import Client
from ..client.errors import Conflict
from .sizes import parse_size

__all__ = ["Plan", "plan", "execute"]


@dataclasses.dataclass
class Plan:
    vm_id: str | None
    vm_name: str
    create_gmems: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    create_shms: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    delete_slots: list[int] = dataclasses.field(default_factory=list)
    create_slots: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # bodies with names, resolved later
    delete_gmems: list[str] = dataclasses.field(default_factory=list)
    delete_shms: list[str] = dataclasses.field(default_factory=list)
    unchanged: int = 0

    @property
    def empty(self) -> bool:
        return not (self.vm_id is None or self.create_gmems or self.create_shms or self.delete_slots
                    or self.create_slots or self.delete_gmems or self.delete_shms)

    def summary(self) -> dict[str, Any]:
        return {"vm": self.vm_name, "create_vm": self.vm_id is None,
                "create": {"guest_memfds": len(self.create_gmems), "shared_memory": len(self.create_shms),
                           "memslots": len(self.create_slots)},
                "delete": {"guest_memfds": len(self.delete_gmems), "shared_memory": len(self.delete_shms),
                           "memslots": len(self.delete_slots)}, "unchanged": self.unchanged}


def _all_slots(client: Client, vm_id: str) -> list[Any]:
    out, cursor = [], None
    while True:
        page = client.list_memslots(vm_id, limit=1000, cursor=cursor)
        out += page.items
        cursor = page.next_cursor
        if cursor is None:
            return out


def _slot_key(slot: dict[str, Any]) -> tuple[Any, ...]:
    return (slot["guest_phys_addr"], slot["memory_size"], tuple(sorted(slot.get("flags", []))),
            _part_key(slot.get("shared"), "shared_memory"), _part_key(slot.get("private"), "guest_memfd"))


def _part_key(part: dict[str, Any] | None, kind: str) -> tuple[str, int] | None:
    return None if part is None else (part[kind], parse_size(part.get("offset", 0)))


def plan(client: Client, layout: dict[str, Any], prune: bool = True) -> Plan:
    name = str(layout["vm"])
    vm = next((v for v in client.list_vms().items if v.name == name), None)
    p = Plan(vm.id if vm else None, name)
    gmems = {g.name: g for g in client.list_guest_memfds(vm.id).items} if vm else {}
    shms = {m.name: m for m in client.list_shared_memory(vm.id).items} if vm else {}
    for g in layout.get("guest_memfds", []):
        want = {"name": g["name"], "size": parse_size(g["size"]), "flags": sorted(g.get("flags", []))}
        have = gmems.get(g["name"])
        if have is None:
            p.create_gmems.append(want)
        elif (have.size, sorted(have.flags)) != (want["size"], want["flags"]):
            raise Conflict(f"guest_memfd {g['name']!r} exists with another size or flags; delete it first",
                           code="LAYOUT_CONFLICT")
        else:
            p.unchanged += 1
    for m in layout.get("shared_memory", []):
        want = {"name": m["name"], "size": parse_size(m["size"]), "hugepages": m.get("hugepages")}
        have = shms.get(m["name"])
        if have is None:
            p.create_shms.append(want)
        elif (have.size, have.hugepages) != (want["size"], want["hugepages"]):
            raise Conflict(f"shared memory {m['name']!r} exists with another size; delete it first", code="LAYOUT_CONFLICT")
        else:
            p.unchanged += 1
    names = {**{g.id: g.name for g in gmems.values()}, **{m.id: m.name for m in shms.values()}}
    current = {}
    for s in (_all_slots(client, vm.id) if vm else []):
        current[s.slot] = (s.guest_phys_addr, s.memory_size, tuple(sorted(s.flags)),
                           (names.get(s.shared.shared_memory_id), s.shared.offset) if s.shared else None,
                           (names.get(s.private.guest_memfd_id), s.private.offset) if s.private else None)
    desired = {}
    for s in layout.get("memslots", []):
        body = {"slot": int(s["slot"]), "guest_phys_addr": parse_size(s["guest_phys_addr"]),
                "memory_size": parse_size(s["size"]), "flags": sorted(s.get("flags", [])),
                "shared": s.get("shared"), "private": s.get("private")}
        desired[body["slot"]] = body
    for slot_id, have in current.items():
        wanted = desired.get(slot_id)
        if wanted is None:
            if prune:
                p.delete_slots.append(slot_id)
        elif have != _slot_key(wanted):
            p.delete_slots.append(slot_id)
            p.create_slots.append(wanted)
        else:
            p.unchanged += 1
    p.create_slots += [w for sid, w in desired.items() if sid not in current]
    if prune:
        keep_g = {g["name"] for g in layout.get("guest_memfds", [])}
        keep_m = {m["name"] for m in layout.get("shared_memory", [])}
        p.delete_gmems = [g.id for g in gmems.values() if g.name not in keep_g]
        p.delete_shms = [m.id for m in shms.values() if m.name not in keep_m]
    return p


def execute(client: Client, p: Plan, progress: Callable[[int], None] = lambda n: None) -> str:
    """Apply the plan: objects first, then slots in batches (all-or-nothing each), then pruning."""
    vm_id = p.vm_id or client.create_vm(name=p.vm_name).id
    for g in p.create_gmems:
        client.create_guest_memfd(vm_id, g["size"], g["flags"], name=g["name"])
    for m in p.create_shms:
        client.create_shared_memory(vm_id, m["size"], m["hugepages"], name=m["name"])
    ids = {**{g.name: g.id for g in client.list_guest_memfds(vm_id).items},
           **{m.name: m.id for m in client.list_shared_memory(vm_id).items}}
    ops: list[dict[str, Any]] = [{"op": "delete", "slot": s} for s in p.delete_slots]
    for s in p.create_slots:
        op: dict[str, Any] = {"op": "create", "slot": s["slot"], "guest_phys_addr": s["guest_phys_addr"],
                              "memory_size": s["memory_size"], "flags": s["flags"]}
        if s.get("shared"):
            op["shared"] = {"shared_memory_id": ids[s["shared"]["shared_memory"]],
                            "offset": parse_size(s["shared"].get("offset", 0))}
        if s.get("private"):
            op["private"] = {"guest_memfd_id": ids[s["private"]["guest_memfd"]],
                             "offset": parse_size(s["private"].get("offset", 0))}
        ops.append(op)
    for start in range(0, len(ops), 4096):
        chunk = ops[start:start + 4096]
        client.batch(vm_id, chunk)
        progress(len(chunk))
    for gmem_id in p.delete_gmems:
        client.delete_guest_memfd(vm_id, gmem_id)
    for shm_id in p.delete_shms:
        client.delete_shared_memory(vm_id, shm_id)
    return vm_id
