"""The guest probe: a daemon-owned vCPU reads and writes guest memory (the guest's view)."""

from __future__ import annotations

from typing import Any

from ...core import ProbeOp
from ..deps import CoreDep
from ..schemas import ProbeRequest, ProbeResponse
from ._common import VMId, problems
from ._common import router as _router

router = _router("/v1/vms/{vm_id}", "memory")


@router.post("/probe", response_model=ProbeResponse, responses=problems(400, 404, 422, 429, 503, 507))
async def probe(vm_id: VMId, body: ProbeRequest, core: CoreDep) -> Any:
    """Run a tiny 64-bit guest on a daemon-owned vCPU that performs the accesses.

    Each result is what the guest saw (``data_hex``) or the exit it took: ``mmio`` where no
    memslot maps the GPA, ``memory_fault`` (with errno EFAULT/EHWPOISON) where KVM could not
    fault the page in. Writes change guest memory at exactly the requested bytes.
    """
    ops = [
        ProbeOp(o.op, o.guest_phys_addr, o.length, bytes.fromhex(o.data_hex) if o.data_hex is not None else None)
        for o in body.ops
    ]
    report = await core.probe.probe(vm_id, ops)
    return {"results": report.results, "enforcement": report.enforcement}
