"""The host view: bytes of a backing object as the host sees them (the probe is the guest's view).

Reads need the ``read`` scope, writes ``mutate``; both are audited. Private pages of a
guest_memfd are refused (409 ``HOST_ACCESS_PRIVATE``), as the kernel refuses them.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Query

from ...core import MAX_JSON_INT, MAX_PROBE_BYTES
from ..deps import CoreDep
from ..schemas import HostBytes, HostWriteRequest
from ._common import ObjectIdPath, VMId, problems
from ._common import router as _router

router = _router("/v1/vms/{vm_id}", "host view")

Offset = Annotated[int, Query(ge=0, le=MAX_JSON_INT, description="byte offset in the object")]
Length = Annotated[int, Query(ge=1, le=MAX_PROBE_BYTES, description="bytes to read")]
ERRORS = problems(404, 409, 422, 429)


@router.get("/guest-memfds/{gmem_id}/bytes", response_model=HostBytes, responses=ERRORS)
async def read_gmem_bytes(vm_id: VMId, gmem_id: ObjectIdPath, offset: Offset, length: Length, core: CoreDep) -> Any:
    """Read shared pages of an mmap-able guest_memfd through the daemon's mapping."""
    return await core.host_view.read(vm_id, "guest_memfd", gmem_id, offset, length)


@router.post("/guest-memfds/{gmem_id}/bytes", response_model=HostBytes, responses=ERRORS)
async def write_gmem_bytes(vm_id: VMId, gmem_id: ObjectIdPath, body: HostWriteRequest, core: CoreDep) -> Any:
    """Write shared pages of an mmap-able guest_memfd (event ``memory.host_write``)."""
    return await core.host_view.write(vm_id, "guest_memfd", gmem_id, body.offset, bytes.fromhex(body.data_hex))


@router.get("/shared-memory/{shm_id}/bytes", response_model=HostBytes, responses=ERRORS)
async def read_shm_bytes(vm_id: VMId, shm_id: ObjectIdPath, offset: Offset, length: Length, core: CoreDep) -> Any:
    """Read shared memory; ``backs`` says which guest ranges it backs and whether they are private
    (then the guest does not see these bytes: they are the discarded shared side)."""
    return await core.host_view.read(vm_id, "shared_memory", shm_id, offset, length)


@router.post("/shared-memory/{shm_id}/bytes", response_model=HostBytes, responses=ERRORS)
async def write_shm_bytes(vm_id: VMId, shm_id: ObjectIdPath, body: HostWriteRequest, core: CoreDep) -> Any:
    """Write shared memory (event ``memory.host_write``)."""
    return await core.host_view.write(vm_id, "shared_memory", shm_id, body.offset, bytes.fromhex(body.data_hex))
