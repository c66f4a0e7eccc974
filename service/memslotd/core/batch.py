"""Batch memslot operations: applied in order, all or nothing.

The whole batch runs synchronously on the event loop: per op, validate against the
state the ops before it left, make the ioctl (microseconds, as for single ops), commit.
Nothing awaits in between, so no other request ever observes a half-applied batch.
On the first failure (a broken rule or a kernel error) the applied ops are undone in
reverse — delete what was created, re-create what was deleted (a guest_memfd binding
returns to the same file range, so guest memory is unchanged) — and the answer names
the failing op. The attribute map is updated once, after the last op succeeded (nothing
in a batch reads it, and a rolled-back batch then leaves converted ranges untouched by
construction); runs of adjacent slots go in as one range. Events are emitted only for
what finally stands, in op order, after the batch (including the invalidate pair of each
batched delete). MAX_BATCH_OPS (4096) ops take tens of milliseconds of loop time at most.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
from typing import Any

from ..uapi import RegionArgs
from .errors import Conflict, DomainError, QuotaExceeded, kernel_error
from .memslots import MemslotService, SlotRequest, set_kernel_attributes, slot_start_state
from .records import VMRecord
from .slot_events import continues_run, invalidation_of_run, slot_event
from .slot_table import Slot
from .value_type import value_type

__all__ = ["BatchOp", "BatchService", "BatchFailed", "MAX_BATCH_OPS"]

#: Ops per batch (the API's schema refuses more; the CLI splits larger plans into batches of it).
MAX_BATCH_OPS = 4096


@value_type
class BatchOp:
    op: str  # "create" | "delete"
    slot_id: int | None
    request: SlotRequest | None = None


@dataclasses.dataclass(slots=True)
class _Step:
    op: str  # "create" | "delete" | "unchanged"
    slot: Slot
    flags: int


class BatchFailed(DomainError):
    """Op ``index`` failed with ``cause``; nothing of the batch was applied."""

    code = "BATCH_FAILED"
    title = "Batch rolled back"

    def __init__(self, detail: str, cause: DomainError, index: int):
        super().__init__(detail, index=index, cause=cause.code, **cause.extra)
        self.cause = cause


class BatchService:
    def __init__(self, memslots: MemslotService):
        self.memslots = memslots
        self.reg = memslots.reg

    async def apply(self, vm_id: str, ops: list[BatchOp], *, dry_run: bool = False) -> list[dict[str, Any]]:
        """Validate every op against the state the ops before it leave (updating the tables as
        it goes), then make all the ioctls in one call into C, then announce.

        A broken rule is found before anything reaches the kernel; a kernel failure undoes the
        applied ioctls in reverse. ``dry_run`` stops after validation and undoes the tables."""
        vm = self.reg.vm(vm_id)
        async with vm.mutation():
            done: list[_Step] = []
            for index, op in enumerate(ops):
                try:
                    done.append(self._plan_one(vm, op))
                except DomainError as exc:
                    self._undo_tables(vm, done)
                    which = op.op if op.slot_id is None else f"{op.op} slot {op.slot_id}"
                    raise BatchFailed(f"op {index} ({which}): {exc.detail}", exc, index) from exc
            if dry_run:
                self._undo_tables(vm, done)
                return [self._result(step) for step in done]
            self._apply_to_kernel(vm, done)
            if vm.kernel_attributes:
                self._mirror_attributes_in_kernel(vm, done)
            self._update_attributes(vm, done)
            return self._announce(vm, done)

    def _apply_to_kernel(self, vm: VMRecord, steps: list[_Step]) -> None:
        """One trip into C for every ioctl; on a failure, the applied ones are undone (newest
        first) and the tables restored, and the error names the op that failed."""
        changes = list(enumerate(steps))
        if any(step.op == "unchanged" for step in steps):
            changes = [(index, step) for index, step in changes if step.op != "unchanged"]
        region_args = self.memslots.region_args
        applied, error = vm.port.set_user_memory_regions(
            [
                region_args(vm, step.slot, step.flags) if step.op == "create" else (step.slot.slot_id, 0, 0, 0, 0, 0, 0)
                for _, step in changes
            ]
        )
        if not error:
            return
        self._undo_kernel(vm, steps, [step for _, step in changes[:applied]])
        index, step = changes[applied]
        cause = kernel_error(OSError(error, os.strerror(error)), f"op {index}", ioctl="KVM_SET_USER_MEMORY_REGION2")
        raise BatchFailed(f"op {index} ({step.op} slot {step.slot.slot_id}): {cause.detail}", cause, index)

    def _undo_kernel(self, vm: VMRecord, steps: list[_Step], applied: list[_Step]) -> None:
        """Undo the ``applied`` region ioctls (newest first) and restore the tables."""
        undo = [self._region(vm, step, forward=False) for step in reversed(applied)]
        while undo:  # undoing what the kernel just took; should it refuse one, go on with the rest
            undone, undo_error = vm.port.set_user_memory_regions(undo)
            undo = undo[undone + 1 :] if undo_error else []
        self._undo_tables(vm, steps)

    def _mirror_attributes_in_kernel(self, vm: VMRecord, steps: list[_Step]) -> None:
        """Kernel-enforced VM: keep KVM's per-GFN attributes equal to the map (see
        ``MemslotService.kernel_attribute_changes``); a refusal undoes the whole batch."""
        changes = []
        for step in steps:
            if step.op in ("create", "delete"):
                changes += self.memslots.kernel_attribute_changes(vm, step.slot, create=step.op == "create")
        try:
            set_kernel_attributes(vm, changes)
        except OSError as exc:
            self._undo_kernel(vm, steps, [step for step in steps if step.op != "unchanged"])
            cause = kernel_error(exc, "batch attributes", ioctl="KVM_SET_MEMORY_ATTRIBUTES")
            raise BatchFailed(f"memory attributes of the batch's slots: {cause.detail}", cause, len(steps) - 1) from exc

    def _plan_one(self, vm: VMRecord, op: BatchOp) -> _Step:
        """Validate one op against the current (batch-so-far) state and apply it to the tables."""
        ms = self.memslots
        if op.op == "delete":
            assert op.slot_id is not None
            slot = vm.slots.get(op.slot_id) or ms.find(vm, op.slot_id)  # ms.find raises the 404
            ms.commit_delete(vm, slot, attributes=False)
            return _Step("delete", slot, 0)  # flags: only an undo needs them (see _region)
        assert op.request is not None
        slot_id = op.slot_id if op.slot_id is not None else ms.lowest_free_id(vm)
        existing = vm.slots.get(slot_id)
        slot, flags = ms._validate(vm, slot_id, op.request)
        if existing is not None:
            if existing.same_request(slot):
                return _Step("unchanged", existing, flags)
            raise Conflict(f"slot {slot_id} exists", code="SLOT_EXISTS", slot=slot_id)
        if len(vm.slots) >= self.reg.limits.max_slots_per_vm:
            raise QuotaExceeded(
                f"VM {vm.id} already has {len(vm.slots)} memslots",
                code="SLOT_QUOTA",
                limit=self.reg.limits.max_slots_per_vm,
            )
        if slot.userspace_addr_source == "guest_memfd_mmap":
            slot = ms.resolve_userspace_addr(vm, slot)
        ms.commit_create(vm, slot, attributes=False)
        return _Step("create", slot, flags)

    def _undo_tables(self, vm: VMRecord, steps: list[_Step]) -> None:
        """Restore the slot table, bindings and users as they were before ``steps`` (newest first)."""
        for step in reversed(steps):
            if step.op == "create":
                self.memslots.commit_delete(vm, step.slot, attributes=False)
            elif step.op == "delete":
                self.memslots.commit_create(vm, step.slot, attributes=False)

    @staticmethod
    def _update_attributes(vm: VMRecord, steps: list[_Step]) -> None:
        """In op order, a run of creates (or of deletes) at a time: within a run the ranges are
        disjoint, so each run is one bulk update."""
        for op, run in itertools.groupby(steps, key=lambda step: step.op):
            if op == "create":
                vm.attributes.add_many(
                    [
                        (
                            step.slot.guest_phys_addr,
                            step.slot.guest_phys_addr + step.slot.memory_size,
                            slot_start_state(vm, step.slot),
                        )
                        for step in run
                    ]
                )
            elif op == "delete":
                vm.attributes.remove_many(
                    [(step.slot.guest_phys_addr, step.slot.guest_phys_addr + step.slot.memory_size) for step in run]
                )

    def _region(self, vm: VMRecord, step: _Step, *, forward: bool) -> RegionArgs:
        """The ioctl arguments that apply ``step`` (or, not ``forward``, undo it)."""
        if step.op == "create" and forward:
            return self.memslots.region_args(vm, step.slot, step.flags)
        if step.op == "delete" and not forward:  # re-create it as it was
            return self.memslots.region_args(vm, step.slot, self.memslots.kernel_flags(step.slot))
        return step.slot.slot_id, 0, 0, 0, 0, 0, 0  # memory_size 0: delete

    def _announce(self, vm: VMRecord, steps: list[_Step]) -> list[dict[str, Any]]:
        """Emit the events of what stands, in op order, and return the per-op results.

        Consecutive deletes whose backings continue each other (same objects, offsets back to
        back) invalidated one file range in one trip into the kernel: they get one invalidate
        pair listing every slot's GPA range (the shape a punch hole has), then one
        ``memslot.deleted`` each."""
        events: list[tuple[str, str | None, dict[str, Any]]] = []
        results: list[dict[str, Any]] = []
        add, vm_id = events.append, vm.id
        run: list[Slot] = []

        def close_run() -> None:
            info = invalidation_of_run(run, batch=True)
            add(("memory.invalidate_start", vm_id, info))  # the pair shares one dict: encoded once
            add(("memory.invalidate_end", vm_id, info))
            for deleted in run:
                add(("memslot.deleted", vm_id, slot_event(deleted, batch=True)))
            run.clear()

        for step in steps:
            slot = step.slot
            if run and (step.op != "delete" or not continues_run(run[-1], slot)):
                close_run()
            if step.op == "create":
                add(("memslot.created", vm_id, slot_event(slot, batch=True)))
            elif step.op == "delete":
                run.append(slot)
            op, result = _RESULTS[step.op]
            results.append({"op": op, "slot": slot.slot_id, "result": result})
        if run:
            close_run()
        self.reg.events.extend(events)
        return results

    @staticmethod
    def _result(step: _Step) -> dict[str, Any]:
        op, result = _RESULTS[step.op]
        return {"op": op, "slot": step.slot.slot_id, "result": result}


#: step -> (the op as the client sent it, its result)
_RESULTS = {"create": ("create", "created"), "delete": ("delete", "deleted"), "unchanged": ("create", "unchanged")}
