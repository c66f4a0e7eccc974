"""guest_memfds (the private part) and shared-memory regions (the shared part)."""

from __future__ import annotations

from typing import Any

from fastapi import HTTPException, Response
from fastapi.responses import JSONResponse

from ..deps import CoreDep, SettingsDep
from ..routing import DRY_RUN_HEADER
from ..schemas import (
    FileRange,
    GuestMemfdCreate,
    GuestMemfdList,
    GuestMemfdPlan,
    GuestMemfdRead,
    InjectErrorRequest,
    Invalidation,
    MemoryErrorRead,
    SharedMemoryCreate,
    SharedMemoryList,
    SharedMemoryPlan,
    SharedMemoryRead,
)
from ..views import gmem_plan, gmem_read, shm_plan, shm_read
from ._common import DryRun, ObjectIdPath, VMId, problems, router

gmem_router = router("/v1/vms/{vm_id}/guest-memfds", "guest_memfd")
shm_router = router("/v1/vms/{vm_id}/shared-memory", "shared_memory")
DRY = {DRY_RUN_HEADER: "true"}


def _done(dry_run: bool) -> Response:
    return Response(status_code=204, headers=DRY if dry_run else None)


@gmem_router.post(
    "",
    status_code=201,
    response_model=GuestMemfdRead,
    responses={
        200: {
            "model": GuestMemfdPlan,
            "description": "dry run: every rule held; the guest_memfd that would be created",
        },
        **problems(400, 404, 409, 422, 429, 501, 503, 507),
    },
)
async def create_gmem(
    vm_id: VMId, body: GuestMemfdCreate, core: CoreDep, response: Response, dry_run: DryRun = False
) -> Any:
    """KVM_CREATE_GUEST_MEMFD (the fd is owned by the daemon, close-on-exec)."""
    gmem = await core.memory_objects.create_gmem(vm_id, body.size, list(body.flags), body.name, dry_run=dry_run)
    if dry_run:
        return JSONResponse(gmem_plan(gmem), headers=DRY)
    response.headers["Location"] = f"/v1/vms/{vm_id}/guest-memfds/{gmem.id}"
    return gmem_read(gmem)


@gmem_router.get("", response_model=GuestMemfdList, responses=problems(404))
async def list_gmems(vm_id: VMId, core: CoreDep) -> Any:
    return {"items": [gmem_read(g) for g in core.memory_objects.list_gmems(vm_id)]}


@gmem_router.get("/{gmem_id}", response_model=GuestMemfdRead, responses=problems(404))
async def get_gmem(vm_id: VMId, gmem_id: ObjectIdPath, core: CoreDep) -> Any:
    return gmem_read(core.memory_objects.get_gmem(vm_id, gmem_id))


@gmem_router.delete("/{gmem_id}", status_code=204, responses=problems(404, 409, 429))
async def delete_gmem(vm_id: VMId, gmem_id: ObjectIdPath, core: CoreDep, dry_run: DryRun = False) -> Response:
    """Close the guest_memfd (409 while a slot is bound to it)."""
    await core.memory_objects.delete_gmem(vm_id, gmem_id, dry_run=dry_run)
    return _done(dry_run)


@gmem_router.post("/{gmem_id}/allocate", status_code=204, responses=problems(400, 404, 422, 429, 503, 507))
async def allocate_gmem(
    vm_id: VMId, gmem_id: ObjectIdPath, body: FileRange, core: CoreDep, dry_run: DryRun = False
) -> Response:
    """fallocate(KEEP_SIZE): back the range with memory now."""
    await core.memory_objects.allocate_gmem(vm_id, gmem_id, body.offset, body.length, dry_run=dry_run)
    return _done(dry_run)


@gmem_router.post("/{gmem_id}/punch-hole", response_model=Invalidation, responses=problems(400, 404, 422, 429))
async def punch_gmem(
    vm_id: VMId, gmem_id: ObjectIdPath, body: FileRange, core: CoreDep, response: Response, dry_run: DryRun = False
) -> Any:
    """fallocate(PUNCH_HOLE|KEEP_SIZE), bracketed by invalidate events; returns the invalidated ranges
    (with ``dry_run``: the ranges it would invalidate)."""
    if dry_run:
        response.headers.update(DRY)
    return await core.memory_objects.punch_gmem(vm_id, gmem_id, body.offset, body.length, dry_run=dry_run)


@gmem_router.post(
    "/{gmem_id}/inject-error", response_model=MemoryErrorRead, responses=problems(403, 404, 409, 422, 501)
)
async def inject_error(
    vm_id: VMId, gmem_id: ObjectIdPath, body: InjectErrorRequest, core: CoreDep, settings: SettingsDep
) -> Any:
    """Test rig (off by default: ``--enable-memory-error-injection``): poison one page for real
    with madvise(MADV_HWPOISON) from a sacrificial child process, then emit ``memory.error``.
    Hosts without CONFIG_MEMORY_FAILURE answer 501 with the kernel's errno."""
    if not settings.enable_memory_error_injection:
        raise HTTPException(403, "memory-error injection is disabled (start with --enable-memory-error-injection)")
    return await core.memory_objects.inject_memory_error(vm_id, gmem_id, body.offset)


@shm_router.post(
    "",
    status_code=201,
    response_model=SharedMemoryRead,
    responses={
        200: {"model": SharedMemoryPlan, "description": "dry run: every rule held; the region that would be created"},
        **problems(400, 404, 409, 422, 429, 501, 503, 507),
    },
)
async def create_shm(
    vm_id: VMId, body: SharedMemoryCreate, core: CoreDep, response: Response, dry_run: DryRun = False
) -> Any:
    """A memfd owned and mapped by the daemon (the ``userspace_addr`` side of slots)."""
    shm = await core.memory_objects.create_shm(vm_id, body.size, body.hugepages, body.name, dry_run=dry_run)
    if dry_run:
        return JSONResponse(shm_plan(shm), headers=DRY)
    response.headers["Location"] = f"/v1/vms/{vm_id}/shared-memory/{shm.id}"
    return shm_read(shm)


@shm_router.get("", response_model=SharedMemoryList, responses=problems(404))
async def list_shms(vm_id: VMId, core: CoreDep) -> Any:
    return {"items": [shm_read(m) for m in core.memory_objects.list_shms(vm_id)]}


@shm_router.get("/{shm_id}", response_model=SharedMemoryRead, responses=problems(404))
async def get_shm(vm_id: VMId, shm_id: ObjectIdPath, core: CoreDep) -> Any:
    return shm_read(core.memory_objects.get_shm(vm_id, shm_id))


@shm_router.delete("/{shm_id}", status_code=204, responses=problems(404, 409, 429))
async def delete_shm(vm_id: VMId, shm_id: ObjectIdPath, core: CoreDep, dry_run: DryRun = False) -> Response:
    """Unmap and close (409 while a slot uses it)."""
    await core.memory_objects.delete_shm(vm_id, shm_id, dry_run=dry_run)
    return _done(dry_run)
