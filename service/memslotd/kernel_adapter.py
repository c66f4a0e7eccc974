"""Wires the kernel-object layer to the core's ports (the only module importing both)."""

from __future__ import annotations

from .core import EventLog, Limits, MemoryCore
from .core.limits import derive_byte_quotas, read_meminfo
from .core.ports import VMPort
from .kvm import KVMSystem, SharedMemory, VMFd
from .kvm._lib import SHIM_VERSION
from .kvm.probe_guest import GuestRunner
from .settings import Settings
from .uapi import VM_TYPES, HostCapabilities

__all__ = ["KernelAdapter", "build_core"]


class KernelAdapter:
    """Implements ``core.ports.KernelPort`` over one ``/dev/kvm`` fd."""

    def __init__(self, system: KVMSystem, probe_timeout_ms: int = 1000):
        self.system = system
        self.host: HostCapabilities = system.probe()
        self._probe_timeout_ms = probe_timeout_ms

    def create_vm(self, vm_type: str) -> VMFd:
        return self.system.create_vm(VM_TYPES[vm_type])

    def create_shared_memory(self, name: str, size: int, hugepage_size: int | None) -> SharedMemory:
        return SharedMemory.create(name, size, hugepage_size)

    def create_guest_runner(self, vm: VMPort) -> GuestRunner:
        assert isinstance(vm, VMFd)  # the core only ever hands back what create_vm returned
        return GuestRunner(vm, timeout_ms=self._probe_timeout_ms)

    def close(self) -> None:
        self.system.close()


def build_core(settings: Settings) -> MemoryCore:
    """Open /dev/kvm, probe it, and build the core with the configured limits."""
    from .api.jsonenc import encode_event_data

    system = KVMSystem.open()
    try:
        adapter = KernelAdapter(system, settings.probe_timeout_ms)
    except BaseException:
        system.close()
        raise
    reserve, per_vm, total = derive_byte_quotas(
        read_meminfo().total, settings.memory_reserve_bytes, settings.max_bytes_per_vm, settings.max_bytes_total
    )
    limits = Limits(
        max_vms=settings.max_vms,
        max_slots_per_vm=min(settings.max_slots_per_vm, adapter.host.max_memslots),
        max_bytes_per_vm=per_vm,
        max_bytes_total=total,
        memory_reserve_bytes=reserve,
        max_pending_per_vm=settings.max_pending_per_vm,
        max_probe_ops=settings.max_probe_ops,
        max_probes_per_second=settings.max_probes_per_second,
    )
    events = EventLog(
        max_events=settings.event_retention_count,
        max_bytes=settings.event_retention_bytes,
        encode_data=encode_event_data,
    )
    core = MemoryCore(adapter, limits=limits, events=events)
    core.on_close.append(adapter.close)
    core.shim_version = SHIM_VERSION
    return core
