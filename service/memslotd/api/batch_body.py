"""The batch body, parsed as TypedDicts rather than models.

Same rules as ``schemas.BatchRequest`` (which documents it in OpenAPI; tests/test_openapi.py
checks the two JSON schemas are the same), but pydantic builds dicts instead of up to
4,096 model instances: 1.0 us instead of 2.6 us per create op on this machine, which is
a tenth of the kernel's own cost for the op.
"""

from __future__ import annotations

from typing import Annotated, Literal, NotRequired

from pydantic import ConfigDict, Field, TypeAdapter, with_config
from typing_extensions import TypedDict

from .schemas import MAX_BATCH_OPS, U53, ObjectId, Size, SlotFlag

__all__ = ["BATCH_BODY", "BatchCreate", "BatchDelete", "BatchRequest", "PrivatePart", "SharedPart"]

_STRICT = ConfigDict(extra="forbid", strict=True)
SlotNumber = Annotated[int, Field(ge=0, le=65535)]


@with_config(_STRICT)
class SharedPart(TypedDict):
    shared_memory_id: ObjectId
    offset: NotRequired[U53]


@with_config(_STRICT)
class PrivatePart(TypedDict):
    guest_memfd_id: ObjectId
    offset: NotRequired[U53]


@with_config(_STRICT)
class BatchCreate(TypedDict):
    address_space: NotRequired[Annotated[int, Field(ge=0, le=1)]]
    guest_phys_addr: U53
    memory_size: Size
    flags: NotRequired[Annotated[list[SlotFlag], Field(max_length=2)]]
    shared: NotRequired[SharedPart | None]
    private: NotRequired[PrivatePart | None]
    op: Literal["create"]
    slot: NotRequired[SlotNumber | None]


@with_config(_STRICT)
class BatchDelete(TypedDict):
    op: Literal["delete"]
    slot: SlotNumber


@with_config(_STRICT)
class BatchRequest(TypedDict):
    ops: Annotated[
        list[Annotated[BatchCreate | BatchDelete, Field(discriminator="op")]],
        Field(min_length=1, max_length=MAX_BATCH_OPS),
    ]


BATCH_BODY: TypeAdapter[BatchRequest] = TypeAdapter(BatchRequest)
