"""Batch memslot operations: applied in order, all or nothing.

The whole batch runs synchronously on the event loop: per op, validate against the
state the ops before it left, make the ioctl (microseconds, as for single ops), commit.
Nothing awaits in between, so no other request ever observes a half-applied batch.
On the first failure (a broken rule or a kernel error) the applied ops are undone in
reverse — delete what was created, re-create what was deleted (a guest_memfd binding
returns to the same file range, so guest memory is unchanged; converted ranges get
their states back) — and the answer names the failing op. Events are emitted only
for what finally stands, in op order, after the batch (including the invalidate pair
of each batched delete). 4096 ops take tens of milliseconds of loop time at most.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .errors import Conflict, DomainError, NotFound, kernel_error
from .memslots import MemslotService, SlotRequest, slot_event
from .ranges import Range
from .records import VMRecord
from .slots import Slot

__all__ = ["BatchOp", "BatchService", "BatchFailed", "MAX_BATCH_OPS"]

MAX_BATCH_OPS = 4096


@dataclasses.dataclass(frozen=True, slots=True)
class BatchOp:
    op: str  # "create" | "delete"
    slot_id: int | None
    request: SlotRequest | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class _Step:
    op: str  # "create" | "delete" | "unchanged"
    slot: Slot
    flags: int
    attributes: tuple[tuple[Range, str], ...] = ()  # a deleted slot's private/shared runs


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
        """``dry_run`` validates every op against the state the ops before it leave, then
        undoes the tables: nothing reaches the kernel, nothing is announced."""
        vm = self.reg.vm(vm_id)
        async with vm.mutation():
            done: list[_Step] = []
            for index, op in enumerate(ops):
                try:
                    step = self._plan_one(vm, op)
                except DomainError as exc:
                    self._undo(vm, done, kernel=not dry_run)
                    raise BatchFailed(f"op {index} ({op.op}): {exc.detail}", exc, index) from exc
                if dry_run:
                    done.append(step)
                    continue
                try:
                    self._kernel(vm, step, forward=True)
                except OSError as exc:
                    self._undo_tables(vm, step)
                    self._undo(vm, done)
                    cause = kernel_error(exc, f"op {index}")
                    raise BatchFailed(f"op {index} ({step.op} slot {step.slot.slot_id}): {cause.detail}", cause,
                                      index) from exc
                done.append(step)
            if dry_run:
                self._undo(vm, done, kernel=False)
                return [self._result(step) for step in done]
            return self._announce(vm, done)

    def _plan_one(self, vm: VMRecord, op: BatchOp) -> _Step:
        """Validate one op against the current (batch-so-far) state and apply it to the tables."""
        ms = self.memslots
        if op.op == "delete":
            assert op.slot_id is not None
            slot = ms.get(vm, op.slot_id)
            runs = tuple(vm.attributes.runs(slot.gpa_range))
            ms.commit_delete(vm, slot)
            return _Step("delete", slot, ms.kernel_flags(slot), runs)
        assert op.request is not None
        slot_id = op.slot_id if op.slot_id is not None else vm.slots.lowest_free_id()
        if slot_id is None:
            raise NotFound("no free slot id", code="SLOT_BUDGET_EXHAUSTED")
        existing = vm.slots.get(slot_id)
        slot, flags = ms._validate(vm, slot_id, op.request)
        if existing is not None:
            if existing.same_request(slot):
                return _Step("unchanged", existing, flags)
            raise Conflict(f"slot {slot_id} exists", code="SLOT_EXISTS", slot=slot_id)
        slot = ms.resolve_userspace_addr(vm, slot)
        ms.commit_create(vm, slot)
        return _Step("create", slot, flags)

    def _undo_tables(self, vm: VMRecord, step: _Step) -> None:
        if step.op == "create":
            self.memslots.commit_delete(vm, step.slot)
        elif step.op == "delete":  # back with the attribute states it had, not the defaults
            self.memslots.commit_create(vm, step.slot)
            for r, state in step.attributes:
                vm.attributes.assign(r, state)

    def _undo(self, vm: VMRecord, done: list[_Step], *, kernel: bool = True) -> None:
        for step in reversed(done):
            if kernel:
                try:
                    self._kernel(vm, step, forward=False)
                except OSError:  # pragma: no cover - the kernel accepted the opposite call a moment ago
                    pass
            self._undo_tables(vm, step)

    def _kernel(self, vm: VMRecord, step: _Step, *, forward: bool) -> None:
        if step.op == "unchanged":
            return
        if (step.op == "create") == forward:
            vm.port.set_user_memory_region2(*self.memslots.region_args(vm, step.slot, step.flags))
        else:
            vm.port.delete_user_memory_region(step.slot.slot_id)

    def _announce(self, vm: VMRecord, steps: list[_Step]) -> list[dict[str, Any]]:
        results = []
        for step in steps:
            if step.op == "create":
                self.reg.emit("memslot.created", vm.id, **slot_event(step.slot), batch=True)
            elif step.op == "delete":
                info = MemslotService._invalidation(vm, step.slot)
                self.reg.emit("memory.invalidate_start", vm.id, **info, batch=True)
                self.reg.emit("memory.invalidate_end", vm.id, **info, batch=True)
                self.reg.emit("memslot.deleted", vm.id, **slot_event(step.slot), batch=True)
            results.append(self._result(step))
        return results

    @staticmethod
    def _result(step: _Step) -> dict[str, Any]:
        return {"op": step.op if step.op != "unchanged" else "create", "slot": step.slot.slot_id,
                "result": {"create": "created", "delete": "deleted", "unchanged": "unchanged"}[step.op]}

