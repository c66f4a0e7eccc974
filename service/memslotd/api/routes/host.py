"""Host endpoints: capabilities, health, version."""

from __future__ import annotations

from typing import Any

from fastapi import Request


from ... import __version__
from ...core.memslots import GPA_LIMIT, RESERVED_GPA
from ...core.probe import MAX_PROBE_BYTES
from ...core.registry import GMEM_FLAG_BITS
from ..deps import CoreDep, SettingsDep
from ..schemas import Capabilities, Health, Version
from ._common import router as _router

router = _router("/v1", "host")


@router.get("/capabilities", response_model=Capabilities)
async def capabilities(core: CoreDep, settings: SettingsDep) -> Any:
    """What this host's KVM offers, reported truthfully (probed at start on a default VM)."""
    host = core.host
    gmem_flags = [name for name, bit in GMEM_FLAG_BITS.items() if host.guest_memfd_flags & bit]
    return {
        "api_version": host.api_version, "kernel_release": host.kernel_release, "arch": host.arch,
        "page_size": host.page_size, "vm_types": list(host.vm_types), "max_memslots": host.max_memslots,
        "user_memory2": host.user_memory2, "guest_memfd": host.guest_memfd, "guest_memfd_flags": gmem_flags,
        "memory_attributes": ["private"] if host.memory_attributes & (1 << 3) else [],
        "memory_attributes_ioctl": host.memory_attributes_ioctl, "memory_fault_info": host.memory_fault_info,
        "pre_fault_memory": host.pre_fault_memory, "conversion_enforcement": core.registry.enforcement,
        "memory_failure": host.memory_failure, "memory_error_injection": settings.enable_memory_error_injection,
        "reserved_gpa_ranges": [{"guest_phys_addr": RESERVED_GPA.start, "size": RESERVED_GPA.size,
                                 "purpose": "guest probe window (code and page tables)"}],
        "max_guest_phys_addr": GPA_LIMIT, "max_probe_ops": core.limits.max_probe_ops,
        "max_probe_bytes": MAX_PROBE_BYTES,
    }


@router.get("/healthz", response_model=Health, response_model_exclude_none=True)
async def healthz(core: CoreDep, request: Request) -> Any:
    """Liveness. Needs no token on TCP; without one it says only that the daemon answers."""
    anonymous = request.scope.get("memslotd.listener") == "tcp" and "memslotd.token" not in request.scope
    return {"status": "ok", "boot_id": core.events.boot_id, "vms": None if anonymous else len(core.registry.vms)}


@router.get("/version", response_model=Version)
async def version(core: CoreDep) -> Any:
    return {"version": __version__, "api": "v1", "boot_id": core.events.boot_id, "shim_version": core.shim_version}
