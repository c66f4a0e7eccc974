"""The guest probe: a real vCPU reads and writes guest-physical memory and reports what it saw.

The probe's code and page tables live in the reserved window (``RESERVED_GPA``), which
is installed as a temporary memslot (the highest free slot id) for the duration of
one request and removed afterwards: the probe never holds a slot between requests
and touches user memory only at the requested bytes.
"""

from __future__ import annotations

import dataclasses
import errno as _errno
import time
from typing import Any

from ..uapi import KVM_MEMORY_EXIT_FLAG_PRIVATE
from ..uapi import PROBE_MAX_GPA as MAX_PROBE_GPA
from ..uapi import PROBE_MAX_OP_BYTES as MAX_PROBE_BYTES
from .errors import InvalidRequest, QuotaExceeded, kernel_error
from .memslots import RESERVED_GPA
from .ranges import Range
from .read_models import ProbeReport
from .records import VMRecord
from .registry import Registry

__all__ = ["ProbeOp", "ProbeService", "MAX_PROBE_BYTES", "MAX_PROBE_GPA"]

MEMORY_EXIT_FLAG_PRIVATE = KVM_MEMORY_EXIT_FLAG_PRIVATE  # the guest wanted the private side
_EHWPOISON = 133  # Linux's EHWPOISON; Python's errno module has no name for it


def errno_name(code: int | None) -> str | None:
    if code == _EHWPOISON:
        return "EHWPOISON"
    return _errno.errorcode.get(code) if code else None


@dataclasses.dataclass(frozen=True, slots=True)
class ProbeOp:
    op: str  # "read" | "write"
    guest_phys_addr: int
    length: int
    data: bytes | None = None


class ProbeService:
    def __init__(self, registry: Registry):
        # four-level paging reaches 2^48; a vCPU with a smaller MAXPHYADDR reaches less
        self.max_gpa = min(MAX_PROBE_GPA, 1 << registry.host.guest_phys_bits)
        self.reg = registry
        self._allowance = registry.limits.max_probes_per_second
        self._last = time.monotonic()

    def _take_rate_token(self) -> None:
        """Token bucket of ``max_probes_per_second`` (burst of the same size): each probe is a vCPU run."""
        rate = self.reg.limits.max_probes_per_second
        now = time.monotonic()
        self._allowance = min(rate, self._allowance + (now - self._last) * rate)
        self._last = now
        if self._allowance < 1:
            raise QuotaExceeded(f"more than {rate:g} probes per second", code="PROBE_RATE", limit=rate)
        self._allowance -= 1

    def _validate(self, ops: list[ProbeOp]) -> None:
        if not ops:
            raise InvalidRequest("a probe needs at least one op", code="PROBE_EMPTY")
        if len(ops) > self.reg.limits.max_probe_ops:
            raise InvalidRequest(f"at most {self.reg.limits.max_probe_ops} ops per probe", code="PROBE_TOO_MANY_OPS")
        for i, op in enumerate(ops):
            r = Range.of(op.guest_phys_addr, op.length)
            if not 0 < op.length <= MAX_PROBE_BYTES:
                raise InvalidRequest(
                    f"op {i}: length must be 1..{MAX_PROBE_BYTES}", code="PROBE_OUT_OF_BOUNDS", index=i
                )
            if r.end > self.max_gpa:
                raise InvalidRequest(
                    f"op {i}: the probe reaches GPAs below {self.max_gpa:#x}", code="PROBE_OUT_OF_BOUNDS", index=i
                )
            if r.overlaps(RESERVED_GPA):
                raise InvalidRequest(
                    f"op {i}: the probe window [{RESERVED_GPA.start:#x}, {RESERVED_GPA.end:#x}) is not guest memory",
                    code="PROBE_OUT_OF_BOUNDS",
                    index=i,
                )
            if op.op == "write" and (op.data is None or len(op.data) != op.length):
                raise InvalidRequest(
                    f"op {i}: a write needs data_hex of exactly length bytes", code="PROBE_DATA_LENGTH", index=i
                )

    async def probe(self, vm_id: str, ops: list[ProbeOp]) -> ProbeReport:
        """What the guest saw at each op (or the exit it took), and who enforces private/shared."""
        self._validate(ops)
        vm = self.reg.vm(vm_id)
        self._take_rate_token()
        async with vm.mutation():
            window_slot = vm.slots.highest_free_id()
            if window_slot is None:
                raise QuotaExceeded(
                    f"VM {vm.id} uses all memslots; the probe needs one for its window", code="SLOT_BUDGET_EXHAUSTED"
                )
            budget = self.reg.budget
            touched = [p for op in ops for p in budget.touched(vm, op.guest_phys_addr, op.length, self.reg.page_size)]
            budget.check(vm, sum(budget.unpopulated(obj, r) for obj, r in touched), "the probe")
            try:
                raw = await self.reg.blocking(self._run, vm, window_slot, ops)
            except OSError as exc:
                raise kernel_error(exc, "probe") from exc
            finally:
                budget.mark(touched)
            self.reg.stats.probes += 1
            self.reg.stats.probe_ops += len(ops)
            return ProbeReport(
                [self._report(vm, op, outcome) for op, outcome in zip(ops, raw, strict=True)], vm.enforcement
            )

    def _run(self, vm: VMRecord, window_slot: int, ops: list[ProbeOp]) -> list[Any]:
        """Worker thread: install the window, run every op, always remove the window."""
        if vm.runner is None:
            vm.runner = self.reg.kernel.create_guest_runner(vm.port)
        runner = vm.runner
        runner.install(window_slot)
        try:
            return [
                runner.read(op.guest_phys_addr, op.length)
                if op.op == "read"
                else runner.write(op.guest_phys_addr, op.data or b"")
                for op in ops
            ]
        finally:
            runner.uninstall(window_slot)

    def _report(self, vm: VMRecord, op: ProbeOp, outcome: Any) -> dict[str, Any]:
        result: dict[str, Any] = {
            "op": op.op,
            "guest_phys_addr": op.guest_phys_addr,
            "length": op.length,
            "ok": bool(outcome.ok),
            "state": vm.attributes.state_at(op.guest_phys_addr),
        }
        if outcome.ok and op.op == "read":
            result["data_hex"] = outcome.data.hex()
        if outcome.exit is not None:
            ex = outcome.exit
            result["exit"] = {
                "reason": ex.reason,
                "gpa": ex.gpa,
                "size": ex.size,
                "flags": ex.flags,
                "is_write": ex.is_write,
                "errno": ex.errno or None,
                "errno_name": errno_name(ex.errno) if ex.errno else None,
            }
            if ex.reason in ("memory_fault", "fault"):
                # "fault": KVM_RUN failed with EFAULT/EHWPOISON but filled in no memory_fault
                # details; the access's own range is what faulted
                self.reg.emit(
                    "memory.fault",
                    vm.id,
                    gpa=ex.gpa if ex.gpa is not None else op.guest_phys_addr,
                    size=ex.size if ex.size is not None else op.length,
                    flags=ex.flags,
                    private=bool((ex.flags or 0) & MEMORY_EXIT_FLAG_PRIVATE),
                    errno=ex.errno,
                    errno_name=errno_name(ex.errno),
                    exit_reason=ex.reason,
                    source="probe",
                )
        return result
