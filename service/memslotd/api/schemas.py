"""Wire models (pydantic v2): strict types, unknown fields rejected, bytes everywhere.

Families: ``<Thing>Create`` (request), ``<Thing>Read`` (response), ``<Thing>List``,
``<Thing>Plan`` (the answer of a dry-run create: the Read without what only creation makes).
Every size, offset and address is an integer number of bytes in [0, 2^53-1].

Requests (``Strict``) forbid unknown fields; responses (``Response``) ignore them, at every
depth: a response model never embeds a request model (tests/api/test_response_models.py).
"""

from __future__ import annotations

import copy
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

# the core's limits, re-exported for the client and the CLI (which never import the core)
from ..core import ID_PATTERN as ID_PATTERN
from ..core import MAX_BATCH_OPS as MAX_BATCH_OPS
from ..core import MAX_JSON_INT as MAX_JSON_INT

U53 = Annotated[int, Field(ge=0, le=MAX_JSON_INT)]
Size = Annotated[int, Field(gt=0, le=MAX_JSON_INT)]
ObjectId = Annotated[str, Field(min_length=1, max_length=64, pattern=ID_PATTERN)]
Name = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")]
VMType = Literal["default", "sw_protected", "sev", "sev_es", "snp", "tdx"]
GmemFlag = Literal["mmap", "init_shared"]
SlotFlag = Literal["log_dirty_pages", "readonly"]
State = Literal["private", "shared"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class Response(BaseModel):
    # Responses ignore unknown fields (QMP's rule): a client built on these models keeps
    # working against a newer daemon that adds fields. Requests forbid them.
    model_config = ConfigDict(extra="ignore")


# -- errors -----------------------------------------------------------------------------
class FieldError(Response):
    loc: list[str | int]
    msg: str
    type: str


class Problem(Response):
    """RFC 9457 problem details plus a stable ``code`` (and ``errno`` for kernel errors)."""

    type: str
    title: str
    status: int
    detail: str
    code: str
    instance: str | None = None
    errno: int | None = None
    errno_name: str | None = None
    ioctl: str | None = None
    errors: list[FieldError] | None = None
    extra: dict[str, Any] | None = None


# -- host -------------------------------------------------------------------------------
class ReservedRange(Response):
    guest_phys_addr: int
    size: int
    purpose: str


class VMTypeCapabilities(Response):
    """What a VM of one type offers, asked of a throw-away VM of that type at start."""

    vm_type: str = Field(description="the VM type (a newer daemon may know types this client does not)")
    memory_attributes: list[Literal["private"]] = Field(description="KVM_CAP_MEMORY_ATTRIBUTES on such a VM, decoded")
    memory_attributes_ioctl: bool = Field(description="KVM_SET_MEMORY_ATTRIBUTES exists for such a VM")
    guest_memfd_flags: list[GmemFlag] = Field(description="KVM_CAP_GUEST_MEMFD_FLAGS on such a VM")
    conversion_enforcement: Literal["kernel", "daemon"] = Field(
        description="who enforces private/shared on VMs of this type: 'kernel' (KVM routes each guest fault by "
        "attribute) or 'daemon' (only memslotd's attribute map)"
    )


class Capabilities(Response):
    api_version: int = Field(description="KVM_GET_API_VERSION")
    kernel_release: str
    arch: str
    page_size: int
    vm_types: list[str]
    max_memslots: int = Field(description="KVM_CAP_NR_MEMSLOTS: user slot ids are 0..max_memslots-1")
    user_memory2: bool
    guest_memfd: bool
    guest_memfd_flags: list[GmemFlag]
    memory_attributes: list[Literal["private"]] = Field(description="KVM_CAP_MEMORY_ATTRIBUTES, decoded")
    memory_attributes_ioctl: bool = Field(description="KVM_SET_MEMORY_ATTRIBUTES exists (ENOTTY when compiled out)")
    memory_fault_info: bool
    pre_fault_memory: bool
    conversion_enforcement: Literal["kernel", "daemon"] = Field(
        description="for default VMs (see per_vm_type): 'kernel': KVM enforces private/shared; "
        "'daemon': only memslotd's attribute map does"
    )
    per_vm_type: list[VMTypeCapabilities] = Field(
        description="every VM type this host can create, with its own answers: private memory is a property "
        "of the VM type (e.g. sw_protected has KVM-enforced attributes where default VMs have none)"
    )
    memory_failure: bool = Field(description="the kernel handles hardware memory errors (CONFIG_MEMORY_FAILURE)")
    memory_error_injection: bool = Field(description="the test-rig memory-error endpoint is enabled (by configuration)")
    reserved_gpa_ranges: list[ReservedRange]
    max_guest_phys_addr: int = Field(description="exclusive upper bound for memslot GPAs")
    max_probe_ops: int
    max_probe_bytes: int
    guest_memfd_only_honoured: bool | None = Field(
        description="asked of the kernel at start: guest faults in a slot whose guest_memfd has mmap are served from "
        "the guest_memfd (TDP) rather than from userspace_addr (shadow paging, e.g. PVM); null if unknown"
    )


class LimitsRead(Response):
    """The limits in force, as configured or derived from this host at start."""

    max_vms: int
    max_slots_per_vm: int
    max_bytes_per_vm: int = Field(
        description="bytes one VM may commit (populate) in its guest_memfds and shared memory"
    )
    max_bytes_total: int = Field(description="bytes the daemon may commit; by default MemTotal - memory_reserve_bytes")
    memory_reserve_bytes: int = Field(
        description="left to the host: populating is refused (503 HOST_MEMORY_LOW) when "
        "MemAvailable would fall below it"
    )
    committed_bytes: int = Field(description="what the daemon counts as committed now (an upper bound)")
    host_mem_total: int = Field(description="MemTotal of /proc/meminfo, in bytes")
    host_mem_available: int = Field(description="MemAvailable of /proc/meminfo now, in bytes")
    max_pending_per_vm: int
    max_probe_ops: int
    max_probes_per_second: float
    max_body_bytes: int
    max_batch_body_bytes: int
    max_connections: int = Field(description="open connections per listener")
    max_connections_per_peer: int = Field(description="open connections per Unix uid or TCP address")
    request_timeout_s: float
    tcp_auth_timeout_s: float
    idle_timeout_s: float
    ws_ping_interval_s: float = Field(description="seconds between an event stream's keepalive pings")
    ws_ping_timeout_s: float = Field(description="seconds a subscriber has to answer one before it is closed (1011)")
    idempotency_cache_bytes: int
    event_retention_count: int
    event_retention_bytes: int


class Health(Response):
    status: Literal["ok"]
    boot_id: str
    vms: int | None = Field(None, description="absent on TCP without a token (liveness only)")


class Version(Response):
    version: str
    api: str
    boot_id: str
    shim_version: int | None


# -- VMs --------------------------------------------------------------------------------
class VMCreate(Strict):
    type: VMType = "default"
    name: Name | None = None


class SlotBudget(Response):
    used: int
    free: int
    max: int


class VMRead(Response):
    id: str
    type: VMType
    name: str | None
    created_at: float
    memslots: SlotBudget
    guest_memfds: int
    shared_memory_regions: int
    guest_memfd_bytes: int
    shared_memory_bytes: int
    slot_bytes: int
    private_bytes: int
    conversion_enforcement: Literal["kernel", "daemon"]


class VMList(Response):
    items: list[VMRead]


def _plan_of(model: type[Response], name: str) -> type[Response]:
    """``model`` without ``id`` and ``created_at``: what a dry-run create answers (nothing exists)."""
    fields: dict[str, Any] = {
        k: (f.annotation, copy.copy(f)) for k, f in model.model_fields.items() if k not in ("id", "created_at")
    }
    doc = f"What a dry-run create would make: a {model.__name__} without id and created_at."
    return create_model(name, __base__=Response, __doc__=doc, __module__=__name__, **fields)


VMPlan = _plan_of(VMRead, "VMPlan")


class VMRelease(Response):
    """What deleting the VM releases (the answer of a dry-run delete)."""

    vm_id: str
    memslots: list[int]
    guest_memfds: list[str]
    shared_memory: list[str]
    slot_bytes: int
    guest_memfd_bytes: int
    shared_memory_bytes: int
    invalidations: list[Invalidation]


# -- guest_memfd ------------------------------------------------------------------------
class GuestMemfdCreate(Strict):
    size: Size
    flags: Annotated[list[GmemFlag], Field(max_length=2)] = []
    name: Name | None = Field(None, description="unique within the VM (declarative tools find objects by it)")


class Binding(Response):
    slot: int
    offset: int
    size: int
    guest_phys_addr: int


class GuestMemfdRead(Response):
    id: str
    name: str | None = None
    size: int
    flags: list[GmemFlag]
    created_at: float
    bindings: list[Binding]


class GuestMemfdList(Response):
    items: list[GuestMemfdRead]


GuestMemfdPlan = _plan_of(GuestMemfdRead, "GuestMemfdPlan")


class FileRange(Strict):
    offset: U53
    length: Size


class GPARangeRead(Response):
    slot: int
    guest_phys_addr: int
    size: int


class Invalidation(Response):
    """A discard: the guest_memfd file range and the GPA range of every slot bound to it."""

    reason: str
    guest_memfd_id: str
    offset: int
    length: int
    gpa_ranges: list[GPARangeRead]


# -- shared memory ----------------------------------------------------------------------
class SharedMemoryCreate(Strict):
    size: Size
    hugepages: Literal["2M", "1G"] | None = None
    name: Name | None = Field(None, description="unique within the VM (declarative tools find objects by it)")


class SharedMemoryRead(Response):
    id: str
    name: str | None = None
    size: int
    hugepages: Literal["2M", "1G"] | None
    page_size: int
    created_at: float
    used_by_slots: list[int]


class SharedMemoryList(Response):
    items: list[SharedMemoryRead]


SharedMemoryPlan = _plan_of(SharedMemoryRead, "SharedMemoryPlan")


# -- memslots ---------------------------------------------------------------------------
class SharedPart(Strict):
    shared_memory_id: ObjectId
    offset: U53 = 0


class PrivatePart(Strict):
    guest_memfd_id: ObjectId
    offset: U53 = 0


class MemslotCreate(Strict):
    address_space: Annotated[int, Field(ge=0, le=1)] = 0
    guest_phys_addr: U53
    memory_size: Size
    flags: Annotated[list[SlotFlag], Field(max_length=2)] = []
    shared: SharedPart | None = None
    private: PrivatePart | None = None


class SharedPartRead(Response):
    shared_memory_id: str
    offset: int


class PrivatePartRead(Response):
    guest_memfd_id: str
    offset: int


class MemslotRead(Response):
    slot: int
    address_space: int
    guest_phys_addr: int
    memory_size: int
    flags: list[SlotFlag]
    shared: SharedPartRead | None
    private: PrivatePartRead | None
    guest_backing: Literal["shared_memory", "guest_memfd", "per_attribute", "none"] = Field(
        description="the backing the guest's accesses really reach on this host: per_attribute = the guest_memfd "
        "while private, the shared part while shared (kernel-enforced VMs); none = no backing (MMIO exit). "
        "Derived from what the kernel does (see capabilities.guest_memfd_only_honoured)"
    )
    userspace_addr_source: Literal["shared_memory", "guest_memfd_mmap", "none"]
    immutable: bool
    created_at: float
    generation: int


class MemslotList(Response):
    items: list[MemslotRead]
    next_cursor: str | None = Field(description="pass as ?cursor= for the next page; null on the last page")
    total: int


# -- conversion and attributes ------------------------------------------------------------
class ConvertRequest(Strict):
    guest_phys_addr: U53
    size: Size
    to: State
    discard: bool = Field(True, description="discard the stale side (punch the guest_memfd or the shared memfd)")


class GPARange(Response):
    guest_phys_addr: int
    size: int


class ChangedRange(Response):
    guest_phys_addr: int
    size: int
    slot: int
    from_: State = Field(alias="from")
    to: State

    model_config = ConfigDict(extra="ignore", populate_by_name=True, serialize_by_alias=True)


class DiscardedRange(Response):
    guest_phys_addr: int
    size: int
    reason: str
    offset: int = Field(description="offset in the discarded file (guest_memfd or shared memfd)")
    length: int
    guest_memfd_id: str | None = None
    shared_memory_id: str | None = None


class ConvertResult(Response):
    changed: list[ChangedRange]
    unchanged: list[GPARange]
    discarded: list[DiscardedRange]
    discarded_bytes: int = Field(0, description="bytes whose contents the discard dropped (would drop, in a dry run)")
    enforcement: Literal["kernel", "daemon"] = Field(
        description="'daemon': this host has no KVM_SET_MEMORY_ATTRIBUTES, only memslotd's map records the state"
    )


class AttributeRange(Response):
    guest_phys_addr: int
    size: int
    state: State


class AttributeList(Response):
    ranges: list[AttributeRange]
    enforcement: Literal["kernel", "daemon"]
    next_cursor: str | None = Field(description="pass as ?cursor= for the next page; null on the last page")


# -- probe ------------------------------------------------------------------------------
class ProbeOpRequest(Strict):
    op: Literal["read", "write"]
    guest_phys_addr: U53
    length: Annotated[int, Field(gt=0, le=64 << 10)]
    data_hex: Annotated[str, Field(max_length=128 << 10, pattern=r"^([0-9a-fA-F]{2})*$")] | None = None


class ProbeRequest(Strict):
    ops: Annotated[list[ProbeOpRequest], Field(min_length=1, max_length=1024)]


class ProbeExit(Response):
    reason: str = Field(description="hlt is success; mmio = no memslot there; memory_fault = KVM_EXIT_MEMORY_FAULT")
    gpa: int | None
    size: int | None
    flags: int | None
    is_write: bool | None
    errno: int | None
    errno_name: str | None


class ProbeResult(Response):
    op: Literal["read", "write"]
    guest_phys_addr: int
    length: int
    ok: bool
    state: State | None = Field(description="the attribute map's state at guest_phys_addr (null outside memslots)")
    data_hex: str | None = None
    exit: ProbeExit | None = None


class ProbeResponse(Response):
    results: list[ProbeResult]
    enforcement: Literal["kernel", "daemon"]


class HostWriteRequest(Strict):
    offset: U53
    data_hex: Annotated[str, Field(min_length=2, max_length=128 << 10, pattern=r"^([0-9a-fA-F]{2})*$")]


class BackedRange(Response):
    slot: int
    guest_phys_addr: int
    size: int
    state: State = Field(description="the attribute map's state of this guest-physical run")


class HostBytes(Response):
    offset: int
    length: int
    data_hex: str | None = Field(default=None, description="the bytes read (absent for a write)")
    backs: list[BackedRange] = Field(description="the guest-physical ranges these bytes back, with their state")


class InjectErrorRequest(Strict):
    offset: U53


class MemoryErrorRead(Response):
    reason: str
    guest_memfd_id: str
    offset: int
    length: int
    gpa_ranges: list[GPARangeRead]
    kernel_errno: int | None = Field(description="EBUSY on 6.18 (MF_DELAYED is treated as failure), null when 0")
    kernel_errno_name: str | None
    injector: Literal["madvise", "sigbus"]
    action: str


# -- batch ------------------------------------------------------------------------------
class BatchCreate(MemslotCreate):
    op: Literal["create"]
    slot: Annotated[int, Field(ge=0, le=65535)] | None = Field(None, description="omit for the lowest free id")


class BatchDelete(Strict):
    op: Literal["delete"]
    slot: Annotated[int, Field(ge=0, le=65535)]


class BatchRequest(Strict):
    ops: Annotated[
        list[Annotated[BatchCreate | BatchDelete, Field(discriminator="op")]],
        Field(min_length=1, max_length=MAX_BATCH_OPS),
    ]


class BatchResult(Response):
    op: Literal["create", "delete"]
    slot: int
    result: Literal["created", "deleted", "unchanged"]


class BatchResponse(Response):
    results: list[BatchResult]


class DirtyLog(Response):
    """Pages written since the previous fetch (fetching re-arms tracking)."""

    slot: int
    page_size: int
    pages: int
    dirty_pages: int
    ranges: list[GPARange]


VMRelease.model_rebuild()
