"""VMs: create, list, get, delete."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response

from ..convert import vm_read
from ..deps import CoreDep
from ..schemas import VMCreate, VMList, VMRead
from ._common import VMId, problems

router = APIRouter(prefix="/v1/vms", tags=["vms"])


@router.post("", status_code=201, response_model=VMRead, responses=problems(400, 422, 429, 501, 503))
async def create_vm(body: VMCreate, core: CoreDep, response: Response) -> Any:
    vm = await core.registry.create_vm(body.type, body.name)
    response.headers["Location"] = f"/v1/vms/{vm.id}"
    return vm_read(vm, vm.enforcement)


@router.get("", response_model=VMList)
async def list_vms(core: CoreDep) -> Any:
    return {"items": [vm_read(vm, vm.enforcement) for vm in core.registry.vms.values()]}


@router.get("/{vm_id}", response_model=VMRead, responses=problems(404))
async def get_vm(vm_id: VMId, core: CoreDep) -> Any:
    vm = core.registry.vm(vm_id)
    return vm_read(vm, vm.enforcement)


@router.delete("/{vm_id}", status_code=204, responses=problems(404, 429))
async def delete_vm(vm_id: VMId, core: CoreDep) -> None:
    """Tear down every slot, guest_memfd and shared-memory region of the VM (events for each)."""
    await core.registry.delete_vm(vm_id)
