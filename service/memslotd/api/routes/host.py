"""Host endpoints: capabilities, health, version."""

from __future__ import annotations

from typing import Any

from fastapi import Request

from ... import __version__
from ...core import GPA_LIMIT, MAX_PROBE_BYTES, RESERVED_GPA
from ..deps import CoreDep, SettingsDep
from ..schemas import Capabilities, Health, LimitsRead, Version
from ._common import router as _router

router = _router("/v1", "host")


@router.get("/capabilities", response_model=Capabilities)
async def capabilities(core: CoreDep, settings: SettingsDep) -> Any:
    """What this host's KVM offers, reported truthfully: probed at start on a throw-away VM of
    every type; the flat fields are a default VM's, ``per_vm_type`` each type's own."""
    service = core.host
    host, gmem_flags, attributes = service.capabilities, service.guest_memfd_flag_names, service.memory_attribute_names
    per_vm_type = [
        {
            "vm_type": name,
            "memory_attributes": attributes(caps.memory_attributes),
            "memory_attributes_ioctl": caps.memory_attributes_ioctl,
            "guest_memfd_flags": gmem_flags(caps.guest_memfd_flags),
            "conversion_enforcement": service.enforcement_for(name),
        }
        for name, caps in host.per_vm_type.items()
    ]
    return {
        "api_version": host.api_version,
        "kernel_release": host.kernel_release,
        "arch": host.arch,
        "page_size": host.page_size,
        "vm_types": list(host.vm_types),
        "max_memslots": host.max_memslots,
        "user_memory2": host.user_memory2,
        "guest_memfd": host.guest_memfd,
        "guest_memfd_flags": gmem_flags(host.guest_memfd_flags),
        "memory_attributes": attributes(host.memory_attributes),
        "memory_attributes_ioctl": host.memory_attributes_ioctl,
        "memory_fault_info": host.memory_fault_info,
        "pre_fault_memory": host.pre_fault_memory,
        "conversion_enforcement": service.enforcement,
        "memory_failure": host.memory_failure,
        "memory_error_injection": settings.enable_memory_error_injection,
        "reserved_gpa_ranges": [
            {
                "guest_phys_addr": RESERVED_GPA.start,
                "size": RESERVED_GPA.size,
                "purpose": "guest probe window (code and page tables)",
            }
        ],
        "max_guest_phys_addr": GPA_LIMIT,
        "max_probe_ops": core.limits.max_probe_ops,
        "max_probe_bytes": MAX_PROBE_BYTES,
        "per_vm_type": per_vm_type,
        "guest_memfd_only_honoured": host.guest_memfd_only_honoured,
    }


@router.get("/limits", response_model=LimitsRead)
async def limits(core: CoreDep, settings: SettingsDep, request: Request) -> Any:
    """Quotas, caps and deadlines in force (the byte quotas derive from this host unless configured)."""
    lim, usage = core.limits, core.host.usage()
    guard = getattr(request.app.state, "connection_guard", None)
    return {
        "max_vms": lim.max_vms,
        "max_slots_per_vm": lim.max_slots_per_vm,
        "max_bytes_per_vm": lim.max_bytes_per_vm,
        "max_bytes_total": lim.max_bytes_total,
        "memory_reserve_bytes": lim.memory_reserve_bytes,
        "committed_bytes": usage.committed_bytes,
        "host_mem_total": usage.mem_total,
        "host_mem_available": usage.mem_available,
        "max_pending_per_vm": lim.max_pending_per_vm,
        "max_probe_ops": lim.max_probe_ops,
        "max_probes_per_second": lim.max_probes_per_second,
        "max_body_bytes": settings.max_body_bytes,
        "max_batch_body_bytes": settings.max_batch_body_bytes,
        "max_connections": guard.max_per_listener if guard is not None else settings.max_connections,
        "max_connections_per_peer": settings.max_connections_per_peer,
        "request_timeout_s": settings.request_timeout_s,
        "tcp_auth_timeout_s": settings.tcp_auth_timeout_s,
        "idle_timeout_s": settings.idle_timeout_s,
        "ws_ping_interval_s": settings.ws_ping_interval_s,
        "ws_ping_timeout_s": settings.ws_ping_timeout_s,
        "idempotency_cache_bytes": settings.idempotency_cache_bytes,
        "event_retention_count": settings.event_retention_count,
        "event_retention_bytes": settings.event_retention_bytes,
    }


@router.get("/healthz", response_model=Health, response_model_exclude_none=True)
async def healthz(core: CoreDep, request: Request) -> Any:
    """Liveness. Needs no token on TCP; without one it says only that the daemon answers."""
    anonymous = request.scope.get("memslotd.listener") == "tcp" and "memslotd.token" not in request.scope
    return {"status": "ok", "boot_id": core.events.boot_id, "vms": None if anonymous else core.vms.count()}


@router.get("/version", response_model=Version)
async def version(core: CoreDep) -> Any:
    return {"version": __version__, "api": "v1", "boot_id": core.events.boot_id, "shim_version": core.shim_version}
