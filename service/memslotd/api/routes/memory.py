"""Private <-> shared conversion, the attribute map, and the guest probe."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Query, Response

from ...core.probe import ProbeOp
from ...core.ranges import Range
from ..deps import CoreDep
from ..schemas import AttributeList, ConvertRequest, ConvertResult, ProbeRequest, ProbeResponse
from ..routing import DRY_RUN_HEADER
from ._common import DryRun, VMId, problems, router as _router

router = _router("/v1/vms/{vm_id}", "memory")


@router.post("/memory/convert", response_model=ConvertResult, response_model_by_alias=True,
             responses=problems(400, 404, 409, 422, 429, 503))
async def convert(vm_id: VMId, body: ConvertRequest, core: CoreDep, response: Response, dry_run: DryRun = False) -> Any:
    """Make ``[guest_phys_addr, +size)`` private or shared (idempotent; may span slots).

    Order as QEMU's ``kvm_convert_memory``: the kernel attribute where the VM's type has
    memory attributes (``enforcement: "kernel"``), then discard of the stale side. Only changed sub-ranges
    are discarded and announced; the rest is reported as ``unchanged``. If a kernel call
    fails part-way, the answer (problem+json ``CONVERSION_PARTIAL``) lists what was converted.
    With ``dry_run`` the answer is what it would change and discard (``discarded_bytes``); nothing is.
    """
    if dry_run:
        result = await core.conversion.preview(vm_id, body.guest_phys_addr, body.size, body.to, body.discard)
        response.headers[DRY_RUN_HEADER] = "true"
    else:
        result = await core.conversion.convert(vm_id, body.guest_phys_addr, body.size, body.to, body.discard)
    return {"changed": result.changed, "unchanged": result.unchanged, "discarded": result.discarded,
            "discarded_bytes": sum(d["length"] for d in result.discarded), "enforcement": result.enforcement}


@router.get("/memory/attributes", response_model=AttributeList, responses=problems(404, 422))
async def attributes(
    vm_id: VMId, core: CoreDep,
    gpa_start: Annotated[int, Query(ge=0, le=(1 << 53) - 1)] = 0,
    gpa_end: Annotated[int, Query(ge=1, le=1 << 53)] = 1 << 53,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    cursor: Annotated[str | None, Query(pattern=r"^[0-9a-f]{1,16}$", description="next_cursor of the previous page")] = None,
) -> Any:
    """Run-length private/shared ranges over the VM's memslots (gaps are not guest memory)."""
    vm = core.registry.vm(vm_id)
    start = max(gpa_start, int(cursor, 16)) if cursor else gpa_start
    ranges: list[dict[str, Any]] = []
    next_cursor = None
    for r, state in vm.attributes.runs(Range(start, max(gpa_end, start + 1))):
        if len(ranges) == limit:
            next_cursor = f"{r.start:x}"
            break
        ranges.append({"guest_phys_addr": r.start, "size": r.size, "state": state})
    return {"ranges": ranges, "enforcement": vm.enforcement, "next_cursor": next_cursor}


@router.post("/probe", response_model=ProbeResponse, responses=problems(400, 404, 422, 429, 503, 507))
async def probe(vm_id: VMId, body: ProbeRequest, core: CoreDep) -> Any:
    """Run a tiny 64-bit guest on a daemon-owned vCPU that performs the accesses.

    Each result is what the guest saw (``data_hex``) or the exit it took: ``mmio`` where no
    memslot maps the GPA, ``memory_fault`` (with errno EFAULT/EHWPOISON) where KVM could not
    fault the page in. Writes change guest memory at exactly the requested bytes.
    """
    ops = [ProbeOp(o.op, o.guest_phys_addr, o.length, bytes.fromhex(o.data_hex) if o.data_hex is not None else None)
           for o in body.ops]
    results = await core.probe.probe(vm_id, ops)
    return {"results": results, "enforcement": core.registry.vm(vm_id).enforcement}
