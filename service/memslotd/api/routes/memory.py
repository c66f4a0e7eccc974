"""A VM's memory: private <-> shared conversion and the attribute map."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Query, Response

from ...core import MAX_JSON_INT
from ..deps import CoreDep
from ..routing import DRY_RUN_HEADER
from ..schemas import AttributeList, ConvertRequest, ConvertResult
from ._common import DryRun, VMId, problems
from ._common import router as _router

router = _router("/v1/vms/{vm_id}", "memory")


@router.post(
    "/memory/convert",
    response_model=ConvertResult,
    response_model_by_alias=True,
    responses=problems(400, 404, 409, 422, 429, 503),
)
async def convert(vm_id: VMId, body: ConvertRequest, core: CoreDep, response: Response, dry_run: DryRun = False) -> Any:
    """Make ``[guest_phys_addr, +size)`` private or shared (idempotent; may span slots).

    Order as QEMU's ``kvm_convert_memory``: the kernel attribute where the VM's type has
    memory attributes (``enforcement: "kernel"``), then discard of the stale side. Only changed sub-ranges
    are discarded and announced; the rest is reported as ``unchanged``. If a kernel call
    fails part-way, the answer (problem+json ``CONVERSION_PARTIAL``) lists what was converted.
    With ``dry_run`` the answer is what it would change and discard (``discarded_bytes``); nothing is.
    """
    if dry_run:
        result = await core.memory.preview(vm_id, body.guest_phys_addr, body.size, body.to, body.discard)
        response.headers[DRY_RUN_HEADER] = "true"
    else:
        result = await core.memory.convert(vm_id, body.guest_phys_addr, body.size, body.to, body.discard)
    return {
        "changed": result.changed,
        "unchanged": result.unchanged,
        "discarded": result.discarded,
        "discarded_bytes": sum(d["length"] for d in result.discarded),
        "enforcement": result.enforcement,
    }


@router.get("/memory/attributes", response_model=AttributeList, responses=problems(404, 422))
async def attributes(
    vm_id: VMId,
    core: CoreDep,
    gpa_start: Annotated[int, Query(ge=0, le=MAX_JSON_INT)] = 0,
    gpa_end: Annotated[int, Query(ge=1, le=MAX_JSON_INT + 1)] = MAX_JSON_INT + 1,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    cursor: Annotated[
        str | None, Query(pattern=r"^[0-9a-f]{1,16}$", description="next_cursor of the previous page")
    ] = None,
) -> Any:
    """Run-length private/shared ranges over the VM's memslots (gaps are not guest memory)."""
    page = core.memory.attributes(vm_id, gpa_start, gpa_end, limit, int(cursor, 16) if cursor else None)
    return {
        "ranges": [{"guest_phys_addr": r.guest_phys_addr, "size": r.size, "state": r.state} for r in page.ranges],
        "enforcement": page.enforcement,
        "next_cursor": f"{page.next_gpa:x}" if page.next_gpa is not None else None,
    }
