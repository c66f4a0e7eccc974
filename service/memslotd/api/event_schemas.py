"""The event stream's wire models: the envelope, every event type's ``data``, and the frames
only streams carry (hello, bookmark, gone, error; the client's auth message).

They document what the core emits (openapi.yaml's ``Event`` and asyncapi.yaml are generated
from them; tests/e2e/test_events.py checks real events against them) and, like every response
model, ignore unknown fields, so a client keeps parsing a newer daemon's events.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import ConfigDict, Field, TypeAdapter, create_model

from .schemas import GPARangeRead, Response, State

__all__ = [
    "EVENT_DATA",
    "EVENT_MODELS",
    "EVENT",
    "STREAM_FRAMES",
    "Hello",
    "Bookmark",
    "Gone",
    "ErrorFrame",
    "AuthMessage",
    "EventEnvelope",
]

Enforcement = Literal["kernel", "daemon"]


class VMCreatedData(Response):
    type: str
    name: str | None
    enforcement: Enforcement = Field(description="who enforces private/shared for this VM (its type decides)")


class Empty(Response):
    """No fields (the envelope's ``vm_id`` says which VM)."""


class ObjectCreatedData(Response):
    id: str
    name: str | None = None
    size: int
    flags: list[str] | None = Field(None, description="guest_memfd only")
    hugepages: Literal["2M", "1G"] | None = Field(None, description="shared memory only")


class ObjectDeletedData(Response):
    id: str


class SlotPartData(Response):
    offset: int
    guest_memfd_id: str | None = None
    shared_memory_id: str | None = None


class SlotData(Response):
    slot: int
    guest_phys_addr: int
    memory_size: int
    flags: list[str]
    shared: SlotPartData | None
    private: SlotPartData | None
    batch: bool | None = Field(None, description="true when a memslots:batch made the change")


class SlotUpdatedData(SlotData):
    previous_guest_phys_addr: int


class SlotDeletedData(Response):
    slot: int
    reason: str | None = Field(None, description="vm_delete when the VM's deletion removed the slot")
    guest_phys_addr: int | None = None
    memory_size: int | None = None
    flags: list[str] | None = None
    shared: SlotPartData | None = None
    private: SlotPartData | None = None
    batch: bool | None = None


class InvalidationData(Response):
    """The guest_memfd (or shared memfd) range being discarded and the GPA ranges it maps."""

    reason: str = Field(
        description="slot_delete, punch_hole, convert_to_shared, convert_to_private, "
        "guest_memfd_close, vm_delete, memory_error"
    )
    guest_memfd_id: str | None = None
    shared_memory_id: str | None = None
    offset: int | None = Field(None, description="in the guest_memfd, or in the shared memfd for convert_to_private")
    length: int | None = None
    shared_offset: int | None = Field(None, description="slot_delete of a slot with a shared part: its memfd range")
    shared_length: int | None = None
    gpa_ranges: list[GPARangeRead]
    batch: bool | None = Field(None, description="true when a memslots:batch made the change")
    error: int | None = Field(None, description="invalidate_end only: the errno of the failed discard")
    cancelled: bool | None = Field(None, description="invalidate_end only: announced, never attempted")


class ConvertedData(Response):
    guest_phys_addr: int
    size: int
    slot: int
    from_: State = Field(alias="from")
    to: State
    enforcement: Enforcement
    discarded: bool

    model_config = ConfigDict(extra="ignore", populate_by_name=True, serialize_by_alias=True)


class AllocatedData(Response):
    guest_memfd_id: str
    offset: int
    length: int


class MemoryErrorData(InvalidationData):
    offset: int
    length: int
    kernel_errno: int | None
    kernel_errno_name: str | None
    injector: str
    action: str


class FaultData(Response):
    """A guest access KVM could not resolve (KVM_RUN failed with EFAULT or EHWPOISON)."""

    gpa: int | None
    size: int | None
    flags: int | None
    private: bool = Field(description="KVM_MEMORY_EXIT_FLAG_PRIVATE: the guest wanted the private side")
    errno: int | None
    errno_name: str | None
    exit_reason: Literal["memory_fault", "fault"] = Field(
        description="memory_fault: a KVM_EXIT_MEMORY_FAULT with gpa/size/flags from KVM; fault: KVM gave no "
        "details (gpa/size are the access's own range)"
    )
    source: str


class HostWriteData(Response):
    """The host wrote bytes of a backing object through the host view."""

    guest_memfd_id: str | None = None
    shared_memory_id: str | None = None
    offset: int
    length: int
    gpa_ranges: list[Annotated[dict[str, Any], Field(description="{slot, guest_phys_addr, size, state}")]]


class AttributesData(Response):
    """initial_state only: the VM's private/shared runs, up to 1000 per event."""

    ranges: list[Annotated[dict[str, Any], Field(description="{guest_phys_addr, size, state}")]]
    enforcement: Enforcement


#: every event type and the model of its ``data``
EVENT_DATA: dict[str, type[Response]] = {
    "vm.created": VMCreatedData,
    "vm.deleted": Empty,
    "guest_memfd.created": ObjectCreatedData,
    "guest_memfd.deleted": ObjectDeletedData,
    "shared_memory.created": ObjectCreatedData,
    "shared_memory.deleted": ObjectDeletedData,
    "memslot.created": SlotData,
    "memslot.updated": SlotUpdatedData,
    "memslot.deleted": SlotDeletedData,
    "memory.invalidate_start": InvalidationData,
    "memory.invalidate_end": InvalidationData,
    "memory.converted": ConvertedData,
    "memory.allocated": AllocatedData,
    "memory.error": MemoryErrorData,
    "memory.fault": FaultData,
    "memory.attributes": AttributesData,
    "memory.host_write": HostWriteData,
}


class EventEnvelope(Response):
    seq: int = Field(description="monotonic per boot; compare, never parse")
    boot_id: str
    time: float
    vm_id: str | None
    initial: bool | None = Field(None, description="true for the current-state events of initial_state=true")


def _event_model(type_: str, data: type[Response]) -> type[Response]:
    name = "".join(part.capitalize() for part in type_.replace("_", ".").split(".")) + "Event"
    kind: Any = Literal[type_]
    return create_model(
        name,
        __base__=EventEnvelope,
        __module__=__name__,
        __doc__=f"A ``{type_}`` event.",
        type=(kind, ...),
        data=(data, ...),
    )


EVENT_MODELS: dict[str, type[Response]] = {t: _event_model(t, d) for t, d in EVENT_DATA.items()}
# Union[...] of a tuple built at run time: the `X | Y` spelling cannot take one
_ANY_EVENT: Any = Annotated[Union[tuple(EVENT_MODELS.values())], Field(discriminator="type")]  # noqa: UP007
EVENT: TypeAdapter[Any] = TypeAdapter(_ANY_EVENT)


class Hello(Response):
    """The first frame of every WebSocket stream."""

    type: Literal["hello"]
    boot_id: str
    time: float
    seq: int = Field(description="the newest seq now")
    oldest_seq: int = Field(description="the oldest seq a cursor may resume after")
    version: str
    bookmark_interval_s: float
    enforcement: Enforcement


class Bookmark(Response):
    """Everything up to ``seq`` was delivered (or filtered out): the next ``since_seq``."""

    type: Literal["bookmark"]
    boot_id: str
    time: float
    seq: int
    initial_state_end: bool | None = Field(None, description="true after the initial_state events")


class Gone(Response):
    """The cursor cannot be served: re-list over REST, then resubscribe. Close code 4410 follows."""

    type: Literal["gone"]
    reason: str = Field(description="expired, boot_id_mismatch, cursor_in_future or subscriber_overflow")
    oldest_seq: int
    current_seq: int
    last_seq: int | None
    detail: str


class ErrorFrame(Response):
    """A refused subscription (close code 4400 follows): ``detail`` names the parameter and why."""

    type: Literal["error"]
    code: str
    detail: str


class AuthMessage(Response):
    """Client to server, first message on TCP when the token could go neither in a header nor
    in the subprotocol (within 5 s)."""

    type: Literal["auth"]
    token: str


#: frames a stream carries besides events
STREAM_FRAMES: tuple[type[Response], ...] = (Hello, Bookmark, Gone, ErrorFrame)
