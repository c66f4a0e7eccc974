"""VMs: create, list, get, delete."""

from __future__ import annotations

from typing import Any

from fastapi import Response
from fastapi.responses import JSONResponse

from ..deps import CoreDep
from ..routing import DRY_RUN_HEADER
from ..schemas import VMCreate, VMList, VMPlan, VMRead, VMRelease
from ..views import vm_plan, vm_read
from ._common import DryRun, VMId, problems
from ._common import router as _router

router = _router("/v1/vms", "vms")
DRY = {DRY_RUN_HEADER: "true"}


@router.post(
    "",
    status_code=201,
    response_model=VMRead,
    responses={
        200: {"model": VMPlan, "description": "dry run: every rule held; the VM that would be created"},
        **problems(400, 409, 422, 429, 501, 503),
    },
)
async def create_vm(body: VMCreate, core: CoreDep, response: Response, dry_run: DryRun = False) -> Any:
    """Create a VM (KVM_CREATE_VM). ``name`` is unique among the daemon's VMs (409 ``NAME_TAKEN``)."""
    vm = await core.vms.create(body.type, body.name, dry_run=dry_run)
    if dry_run:
        return JSONResponse(vm_plan(vm), headers=DRY)
    response.headers["Location"] = f"/v1/vms/{vm.id}"
    return vm_read(vm)


@router.get("", response_model=VMList)
async def list_vms(core: CoreDep) -> Any:
    return {"items": [vm_read(vm) for vm in core.vms.list()]}


@router.get("/{vm_id}", response_model=VMRead, responses=problems(404))
async def get_vm(vm_id: VMId, core: CoreDep) -> Any:
    return vm_read(core.vms.get(vm_id))


@router.delete(
    "/{vm_id}",
    status_code=204,
    response_model=None,
    responses={
        200: {"model": VMRelease, "description": "dry run: what the delete would release (nothing was)"},
        **problems(404, 429),
    },
)
async def delete_vm(vm_id: VMId, core: CoreDep, dry_run: DryRun = False) -> Any:
    """Tear down every slot, guest_memfd and shared-memory region of the VM (events for each)."""
    if dry_run:
        return JSONResponse(core.vms.release(vm_id), headers=DRY)
    await core.vms.delete(vm_id)
    return Response(status_code=204)
