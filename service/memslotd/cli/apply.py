"""``memslotctl apply -f layout.yaml``: converge one VM to a declared layout, all or nothing.

The contract is kubectl's and terraform's: the plan (every object and slot to create, change
or delete, by name/id and GPA range) is computed and checked before anything changes; nothing
is deleted without ``prune``; a failure undoes what this apply did, so the VM is left as it was
and a rerun converges. Steps (each one call, each given ``dry_run`` for a dry run):

1. the VM (by name), 2. guest_memfds and shared memory (by name), 3. one memslot batch per
4096 ops: deletes of changed and pruned slots, then creates (the daemon applies a batch all
or nothing), 4. with ``prune``: objects no longer declared.

A dry run asks the daemon (``?dry_run=true``) for every step whose endpoint takes it (the
daemon's OpenAPI document says which); what it cannot ask (a step depending on an object the
dry run did not create) is checked here against the host's capabilities instead.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from collections.abc import Callable
from typing import Any

from ..api.schemas import MAX_BATCH_OPS
from ..client import Client
from ..client.errors import Conflict, MemslotdError
from .layout import Layout, LayoutError, MemslotSpec
from .sizes import format_size, format_size_approx

__all__ = ["Plan", "Action", "plan", "execute", "check"]

BATCH = MAX_BATCH_OPS
STEP_PATHS = {  # the endpoint of each kind of step, as the daemon's OpenAPI document names it
    "create_vm": ("POST", "/v1/vms"),
    "create_guest_memfd": ("POST", "/v1/vms/{vm_id}/guest-memfds"),
    "create_shared_memory": ("POST", "/v1/vms/{vm_id}/shared-memory"),
    "batch": ("POST", "/v1/vms/{vm_id}/memslots:batch"),
    "delete_guest_memfd": ("DELETE", "/v1/vms/{vm_id}/guest-memfds/{gmem_id}"),
    "delete_shared_memory": ("DELETE", "/v1/vms/{vm_id}/shared-memory/{shm_id}"),
}


@dataclasses.dataclass(frozen=True)
class Action:
    """One line of the plan: ``action`` is create, change, delete, unchanged or keep (not in
    the layout and not deleted: no ``prune``)."""

    action: str
    kind: str  # vm, guest_memfd, shared_memory, memslot
    name: str  # the object's name or the slot id
    id: str | None = None
    detail: str = ""
    was: str | None = None  # a change: what stands now

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v not in (None, "")}


@dataclasses.dataclass
class Plan:
    vm_name: str
    vm_type: str = "default"
    vm: Any = None  # VMRead when the VM exists
    actions: list[Action] = dataclasses.field(default_factory=list)
    create_gmems: list[Any] = dataclasses.field(default_factory=list)  # GuestMemfdSpec
    create_shms: list[Any] = dataclasses.field(default_factory=list)  # SharedMemorySpec
    delete_slots: list[Any] = dataclasses.field(default_factory=list)  # MemslotRead (kept for the undo)
    create_slots: list[MemslotSpec] = dataclasses.field(default_factory=list)
    delete_gmems: list[Any] = dataclasses.field(default_factory=list)  # GuestMemfdRead
    delete_shms: list[Any] = dataclasses.field(default_factory=list)  # SharedMemoryRead
    ids: dict[tuple[str, str], str] = dataclasses.field(default_factory=dict)  # (kind, name) -> id
    kept: list[Any] = dataclasses.field(default_factory=list)  # MemslotRead not in the layout, not deleted
    checked_by_daemon: list[str] = dataclasses.field(default_factory=list)
    checked_here: list[str] = dataclasses.field(default_factory=list)

    @property
    def empty(self) -> bool:
        return all(a.action in ("unchanged", "keep") for a in self.actions)

    def counts(self) -> dict[str, int]:
        out = {k: 0 for k in ("create", "change", "delete", "unchanged", "keep")}
        for a in self.actions:
            out[a.action] += 1
        return out


def _range(gpa: int, size: int) -> str:
    return f"[{gpa:#x}, {gpa + size:#x}) {format_size(size)}"


def _detail(key: tuple[Any, ...]) -> str:
    """A slot for the plan, from its comparison key: GPA range, backings, flags."""
    gpa, size, flags, shared, private = key
    parts = [_range(gpa, size)]
    parts += [f"shared {shared[0]}+{shared[1]:#x}"] if shared else []
    parts += [f"private {private[0]}+{private[1]:#x}"] if private else []
    parts += ["flags " + ",".join(flags)] if flags else []
    return " ".join(parts)


def _object_detail(size: int, extra: str) -> str:
    return format_size(size) + (f" {extra}" if extra else "")


def _all_slots(client: Client, vm_id: str) -> list[Any]:
    out, cursor = [], None
    while True:
        page = client.list_memslots(vm_id, limit=1000, cursor=cursor)
        out += page.items
        cursor = page.next_cursor
        if cursor is None:
            return out


def plan(client: Client, layout: Layout, *, prune: bool = False) -> Plan:
    """What converging to ``layout`` takes. Raises ``Conflict`` (nothing changed) when an
    existing object differs in size or flags: memory objects are never resized in place."""
    p = Plan(layout.vm)
    p.vm = next((v for v in client.list_vms().items if v.name == layout.vm), None)
    p.actions.append(Action("unchanged" if p.vm else "create", "vm", layout.vm, p.vm.id if p.vm else None))
    all_gmems = client.list_guest_memfds(p.vm.id).items if p.vm else []
    all_shms = client.list_shared_memory(p.vm.id).items if p.vm else []
    gmems = {g.name: g for g in all_gmems if g.name}  # unnamed objects are never the layout's
    shms = {m.name: m for m in all_shms if m.name}
    conflicts = []
    for i, g in enumerate(layout.guest_memfds):
        have = gmems.get(g.name)
        detail = _object_detail(g.size, "flags " + ",".join(g.flags) if g.flags else "")
        if have is None:
            p.create_gmems.append(g)
            p.actions.append(Action("create", "guest_memfd", g.name, detail=detail))
        elif (have.size, sorted(have.flags)) != (g.size, sorted(g.flags)):
            conflicts.append(
                f"guest_memfds[{i}]: guest_memfd {g.name!r} ({have.id}) exists with "
                f"{_object_detail(have.size, 'flags ' + ','.join(have.flags) if have.flags else '')}, "
                f"the layout says {detail}: delete it first (its memory would be lost)"
            )
        else:
            p.ids["guest_memfd", g.name] = have.id
            p.actions.append(Action("unchanged", "guest_memfd", g.name, have.id, detail))
    for i, m in enumerate(layout.shared_memory):
        have = shms.get(m.name)
        detail = _object_detail(m.size, f"hugepages {m.hugepages}" if m.hugepages else "")
        if have is None:
            p.create_shms.append(m)
            p.actions.append(Action("create", "shared_memory", m.name, detail=detail))
        elif (have.size, have.hugepages) != (m.size, m.hugepages):
            conflicts.append(
                f"shared_memory[{i}]: shared memory {m.name!r} ({have.id}) exists with "
                f"{_object_detail(have.size, f'hugepages {have.hugepages}' if have.hugepages else '')}, "
                f"the layout says {detail}: delete it first (its memory would be lost)"
            )
        else:
            p.ids["shared_memory", m.name] = have.id
            p.actions.append(Action("unchanged", "shared_memory", m.name, have.id, detail))
    if conflicts:
        raise Conflict("; ".join(conflicts), status=409, code="LAYOUT_CONFLICT")
    names = {**{g.id: name for name, g in gmems.items()}, **{m.id: name for name, m in shms.items()}}
    current = {s.slot: s for s in (_all_slots(client, p.vm.id) if p.vm else [])}
    desired = {s.slot: s for s in layout.memslots}
    for slot_id in sorted(current.keys() | desired.keys()):
        have, want = current.get(slot_id), desired.get(slot_id)
        if want is None:
            (p.delete_slots if prune else p.kept).append(have)
            p.actions.append(
                Action("delete" if prune else "keep", "memslot", str(slot_id), detail=_detail(_read_key(have, names)))
            )
        elif have is None:
            p.create_slots.append(want)
            p.actions.append(Action("create", "memslot", str(slot_id), detail=_detail(_spec_key(want))))
        elif _read_key(have, names) != _spec_key(want):
            p.delete_slots.append(have)
            p.create_slots.append(want)
            p.actions.append(
                Action(
                    "change",
                    "memslot",
                    str(slot_id),
                    detail=_detail(_spec_key(want)),
                    was=_detail(_read_key(have, names)),
                )
            )
        else:
            p.actions.append(Action("unchanged", "memslot", str(slot_id), detail=_detail(_spec_key(want))))
    undeclared = (
        (all_gmems, {g.name for g in layout.guest_memfds}, p.delete_gmems, "guest_memfd"),
        (all_shms, {m.name for m in layout.shared_memory}, p.delete_shms, "shared_memory"),
    )
    for existing, declared, to_delete, kind in undeclared:
        for obj in existing:
            if obj.name not in declared:
                if prune:
                    to_delete.append(obj)
                p.actions.append(
                    Action(
                        "delete" if prune else "keep", kind, obj.name or obj.id, obj.id, _object_detail(obj.size, "")
                    )
                )
    return p


def _read_key(s: Any, names: dict[str, str]) -> tuple[Any, ...]:
    """What a slot on the VM is, with its objects by name (by id when unnamed)."""
    return (
        s.guest_phys_addr,
        s.memory_size,
        tuple(sorted(s.flags)),
        (names.get(s.shared.shared_memory_id, s.shared.shared_memory_id), s.shared.offset) if s.shared else None,
        (names.get(s.private.guest_memfd_id, s.private.guest_memfd_id), s.private.offset) if s.private else None,
    )


def _spec_key(s: MemslotSpec) -> tuple[Any, ...]:
    return (
        s.guest_phys_addr,
        s.memory_size,
        tuple(sorted(s.flags)),
        (s.shared.shared_memory, s.shared.offset) if s.shared else None,
        (s.private.guest_memfd, s.private.offset) if s.private else None,
    )


# -- checks ----------------------------------------------------------------------------------
def dry_run_endpoints(client: Client) -> set[tuple[str, str]]:
    """(method, path) of every operation whose OpenAPI entry declares a ``dry_run`` query parameter."""
    spec = client.openapi()
    out = set()
    for path, operations in spec.get("paths", {}).items():
        for method, op in operations.items():
            if any(q.get("name") == "dry_run" and q.get("in") == "query" for q in op.get("parameters", [])):
                out.add((method.upper(), path))
    return out


def _local_slot_rules(p: Plan, layout: Layout, caps: Any, file: str) -> None:
    """The daemon's memslot rules that need no kernel object, for slots a dry run cannot send."""
    page = caps.page_size
    sizes = {
        **{("guest_memfd", g.name): g.size for g in layout.guest_memfds},
        **{("shared_memory", m.name): m.size for m in layout.shared_memory},
    }
    problems: list[tuple[str, str]] = []
    index = {s.slot: i for i, s in enumerate(layout.memslots)}
    spans: list[tuple[int, int, int]] = []
    for s in p.create_slots:
        where = f"memslots[{index[s.slot]}]"
        end = s.guest_phys_addr + s.memory_size
        if s.slot >= caps.max_memslots:
            problems.append((f"{where}.slot", f"slot id {s.slot} outside 0..{caps.max_memslots - 1} on this host"))
        for key, value in (("guest_phys_addr", s.guest_phys_addr), ("memory_size", s.memory_size)):
            if value % page:
                problems.append((f"{where}.{key}", f"{value:#x} is not aligned to the page size {page:#x}"))
        if end > caps.max_guest_phys_addr:
            problems.append((where, f"ends at {end:#x}, above this host's GPA limit {caps.max_guest_phys_addr:#x}"))
        for r in caps.reserved_gpa_ranges:
            if s.guest_phys_addr < r.guest_phys_addr + r.size and r.guest_phys_addr < end:
                problems.append(
                    (
                        where,
                        f"overlaps [{r.guest_phys_addr:#x}, {r.guest_phys_addr + r.size:#x}), reserved for {r.purpose}",
                    )
                )
        for part, kind, name in (
            ("shared", "shared_memory", s.shared.shared_memory if s.shared else None),
            ("private", "guest_memfd", s.private.guest_memfd if s.private else None),
        ):
            if name is None:
                continue
            offset = getattr(s, part).offset
            if offset % page:
                problems.append((f"{where}.{part}.offset", f"{offset:#x} is not aligned to the page size {page:#x}"))
            if offset + s.memory_size > sizes[kind, name]:
                problems.append(
                    (
                        f"{where}.{part}",
                        f"[{offset:#x}, {offset + s.memory_size:#x}) exceeds {kind} "
                        f"{name!r} of {format_size(sizes[kind, name])}",
                    )
                )
        spans.append((s.guest_phys_addr, end, s.slot))
    unchanged = {int(a.name) for a in p.actions if a.kind == "memslot" and a.action == "unchanged"}
    spans += [
        (s.guest_phys_addr, s.guest_phys_addr + s.memory_size, s.slot) for s in layout.memslots if s.slot in unchanged
    ]
    spans += [(s.guest_phys_addr, s.guest_phys_addr + s.memory_size, s.slot) for s in p.kept]
    spans.sort()
    for (_, a_end, a_slot), (b_start, b_end, b_slot) in itertools.pairwise(spans):
        if b_start < a_end:
            i = index.get(b_slot, index.get(a_slot))
            problems.append(
                (
                    f"memslots[{i}].guest_phys_addr",
                    f"GPA range [{b_start:#x}, {b_end:#x}) of slot {b_slot} overlaps slot {a_slot}",
                )
            )
    bound: dict[str, list[tuple[int, int, int]]] = {}  # a guest_memfd range backs one slot at most
    for s in layout.memslots:
        if s.private is not None:
            bound.setdefault(s.private.guest_memfd, []).append(
                (s.private.offset, s.private.offset + s.memory_size, s.slot)
            )
    for name, ranges in bound.items():
        ranges.sort()
        for (_, a_end, a_slot), (b_start, b_end, b_slot) in itertools.pairwise(ranges):
            if b_start < a_end:
                problems.append(
                    (
                        f"memslots[{index[b_slot]}].private",
                        f"guest_memfd {name!r} range [{b_start:#x}, {b_end:#x}) is also bound to slot {a_slot}",
                    )
                )
    if problems:
        raise LayoutError(file, problems)


def _local_limit_rules(p: Plan, layout: Layout, limits: Any, file: str, *, slots: bool, objects: bool) -> None:
    """The daemon's limits, for the steps a dry run cannot send: the slot count per VM and the
    byte quota an object must fit (``GET /v1/limits``)."""
    problems: list[tuple[str, str]] = []
    if slots:
        unchanged = sum(1 for a in p.actions if a.kind == "memslot" and a.action == "unchanged")
        total = len(p.kept) + unchanged + len(p.create_slots)
        if total > limits.max_slots_per_vm:
            problems.append(
                ("memslots", f"the VM would have {total} memslots; the daemon allows {limits.max_slots_per_vm} per VM")
            )
    if objects:
        quota = min(limits.max_bytes_per_vm, limits.max_bytes_total)
        whose = "per VM" if quota == limits.max_bytes_per_vm else "of the whole daemon"
        declared: tuple[tuple[str, list[Any], list[Any]], ...] = (
            ("guest_memfds", layout.guest_memfds, p.create_gmems),
            ("shared_memory", layout.shared_memory, p.create_shms),
        )
        for key, entries, created in declared:
            for i, entry in enumerate(entries):
                if entry in created and entry.size > quota:
                    rule = f"{format_size(entry.size)} exceeds the daemon's byte quota of {format_size_approx(quota)}"
                    problems.append((f"{key}[{i}].size", f"{rule} {whose}"))
    if problems:
        raise LayoutError(file, problems)


def check(client: Client, p: Plan, layout: Layout, file: str) -> None:
    """Check the whole plan before anything changes: the host rules here, then the daemon's dry
    run of every step it can check, then here the limits of the steps it could not. Raises
    ``LayoutError`` or the daemon's error."""
    _local_slot_rules(p, layout, client.capabilities(), file)
    p.checked_here.append("slot rules without kernel objects (alignment, bounds, overlaps, reserved GPAs)")
    supported = dry_run_endpoints(client)
    unchecked: set[str] = set()
    for step in _steps(client, p, dry_run=True):
        if STEP_PATHS[step.kind] not in supported:
            p.checked_here.append(f"{step.label} (the daemon takes no dry run there yet)")
            unchecked.add(step.kind)
        elif step.blocked:
            p.checked_here.append(f"{step.label} ({step.blocked})")
            unchecked.add(step.kind)
        else:
            step.run()
            p.checked_by_daemon.append(step.label)
    objects = bool(unchecked & {"create_guest_memfd", "create_shared_memory"})
    # batches dry-run one by one against the VM as it is: together they may still exceed the count
    slots = "batch" in unchecked or len(p.delete_slots) + len(p.create_slots) > BATCH
    if slots or objects:
        _local_limit_rules(p, layout, client.limits(), file, slots=slots, objects=objects)
        p.checked_here.append("the daemon's limits (slots per VM, byte quota per object)")


# -- steps -----------------------------------------------------------------------------------
@dataclasses.dataclass
class _Step:
    kind: str
    label: str
    run: Callable[[], Any]
    undo: Callable[[Any], None] | None = None  # given what run() returned
    blocked: str = ""  # why a dry run cannot send it: it depends on an earlier step's effect


def _create_op(s: Any, shared_memory_id: str | None, guest_memfd_id: str | None) -> dict[str, Any]:
    """A batch create of slot ``s`` (a layout spec or a slot the daemon answered) on these objects."""
    op: dict[str, Any] = {
        "op": "create",
        "slot": s.slot,
        "guest_phys_addr": s.guest_phys_addr,
        "memory_size": s.memory_size,
        "flags": list(s.flags),
    }
    if shared_memory_id is not None:
        op["shared"] = {"shared_memory_id": shared_memory_id, "offset": s.shared.offset}
    if guest_memfd_id is not None:
        op["private"] = {"guest_memfd_id": guest_memfd_id, "offset": s.private.offset}
    return op


def _slot_op(s: MemslotSpec, ids: dict[tuple[str, str], str]) -> dict[str, Any]:
    """The create of a layout's slot, its objects named in the layout resolved to their ids."""
    shared = ids["shared_memory", s.shared.shared_memory] if s.shared else None
    private = ids["guest_memfd", s.private.guest_memfd] if s.private else None
    return _create_op(s, shared, private)


def _restore_op(s: Any) -> dict[str, Any]:
    """The create that brings back a slot this apply deleted (its objects still exist)."""
    shared = s.shared.shared_memory_id if s.shared else None
    private = s.private.guest_memfd_id if s.private else None
    return _create_op(s, shared, private)


def _steps(client: Client, p: Plan, *, dry_run: bool) -> list[_Step]:
    """Every call of the plan, in order; each closure makes exactly one call. Ids of objects
    made by earlier steps are read from ``p.ids`` / ``state`` when the step runs."""
    state: dict[str, Any] = {"vm_id": p.vm.id if p.vm else None}
    steps: list[_Step] = []
    no_vm = "" if p.vm is not None else "the VM is created by this plan"
    if p.vm is None:

        def make_vm() -> Any:
            vm = client.create_vm(name=p.vm_name, type=p.vm_type, dry_run=dry_run)
            if not dry_run:
                state["vm_id"] = vm.id
            return vm

        steps.append(_Step("create_vm", f"create VM {p.vm_name}", make_vm, lambda vm: client.delete_vm(vm.id)))
    for g in p.create_gmems:

        def make_gmem(g: Any = g) -> Any:
            made = client.create_guest_memfd(state["vm_id"], g.size, list(g.flags), name=g.name, dry_run=dry_run)
            if not dry_run:
                p.ids["guest_memfd", g.name] = made.id
            return made

        steps.append(
            _Step(
                "create_guest_memfd",
                f"create guest_memfd {g.name}",
                make_gmem,
                lambda made: client.delete_guest_memfd(state["vm_id"], made.id),
                no_vm,
            )
        )
    for m in p.create_shms:

        def make_shm(m: Any = m) -> Any:
            made = client.create_shared_memory(state["vm_id"], m.size, m.hugepages, name=m.name, dry_run=dry_run)
            if not dry_run:
                p.ids["shared_memory", m.name] = made.id
            return made

        steps.append(
            _Step(
                "create_shared_memory",
                f"create shared memory {m.name}",
                make_shm,
                lambda made: client.delete_shared_memory(state["vm_id"], made.id),
                no_vm,
            )
        )
    deletes = [{"op": "delete", "slot": s.slot} for s in p.delete_slots]
    restores = [_restore_op(s) for s in p.delete_slots]
    batch_blocked = no_vm or (
        "its slots use objects this plan creates"
        if any(
            (s.shared and ("shared_memory", s.shared.shared_memory) not in p.ids)
            or (s.private and ("guest_memfd", s.private.guest_memfd) not in p.ids)
            for s in p.create_slots
        )
        else ""
    )
    n_ops = len(deletes) + len(p.create_slots)
    for start in range(0, n_ops, BATCH):

        def run_batch(start: int = start) -> Any:
            ops = (deletes + [_slot_op(s, p.ids) for s in p.create_slots])[start : start + BATCH]
            client.batch(state["vm_id"], ops, dry_run=dry_run)
            return ops

        def undo_batch(ops: list[dict[str, Any]]) -> None:
            undo = [{"op": "delete", "slot": op["slot"]} for op in ops if op["op"] == "create"]
            undo += [r for r in restores if any(op["op"] == "delete" and op["slot"] == r["slot"] for op in ops)]
            if undo:
                client.batch(state["vm_id"], undo)

        end = min(start + BATCH, n_ops)
        whole = "" if n_ops <= BATCH else f", ops {start}..{end - 1} of {n_ops}"  # 0-based, as the daemon counts
        steps.append(
            _Step(
                "batch",
                f"memslot batch of {end - start} ops{whole}",
                run_batch,
                undo_batch,
                batch_blocked,
            )
        )
    bound = "its slots are deleted by this plan's batch"
    for g in p.delete_gmems:
        steps.append(
            _Step(
                "delete_guest_memfd",
                f"delete guest_memfd {g.name or g.id}",
                functools.partial(client.delete_guest_memfd, state["vm_id"], g.id, dry_run=dry_run),
                blocked=bound if g.bindings else "",
            )
        )
    for m in p.delete_shms:
        steps.append(
            _Step(
                "delete_shared_memory",
                f"delete shared memory {m.name or m.id}",
                functools.partial(client.delete_shared_memory, state["vm_id"], m.id, dry_run=dry_run),
                blocked=bound if m.used_by_slots else "",
            )
        )
    return steps


class ApplyFailed(MemslotdError):
    """A step failed; what this apply had done was undone (``rolled_back``), or could not be."""


def execute(client: Client, p: Plan, progress: Callable[[str], None] = lambda label: None) -> str | None:
    """Run the plan's steps; on a failure undo the steps done so far, newest first, and raise
    the failure (its class and code) with what was undone. Returns the VM id."""
    done: list[tuple[_Step, Any]] = []
    steps = _steps(client, p, dry_run=False)
    try:
        for step in steps:
            done.append((step, step.run()))
            progress(step.label)
    except MemslotdError as exc:
        undone, stuck = _undo(done)
        note = f"; undone: {', '.join(undone)}" if undone else ""
        note += f"; COULD NOT UNDO: {', '.join(stuck)} (rerun apply to converge)" if stuck else ""
        failed = steps[len(done)].label if len(done) < len(steps) else "?"
        raise type(exc)(
            f"{failed} failed: {exc.detail}{note}", status=exc.status, code=exc.code, problem=exc.problem
        ) from exc
    return p.vm.id if p.vm else next((r.id for s, r in done if s.kind == "create_vm"), None)


def _undo(done: list[tuple[_Step, Any]]) -> tuple[list[str], list[str]]:
    undone, stuck = [], []
    for step, result in reversed(done):
        if step.undo is None:
            stuck.append(step.label)  # a deletion: memory objects do not come back
            continue
        try:
            step.undo(result)
            undone.append(step.label)
        except MemslotdError as exc:
            stuck.append(f"{step.label} ({exc})")
    return undone, stuck
