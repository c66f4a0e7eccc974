"""Shared pieces of the routers: documented error responses, path and query parameters.

Path ids are looked up, never pattern-checked: an id that is not well-formed names nothing,
so it is 404 with the resource's ``*_NOT_FOUND`` code (as Docker, Kubernetes and Stripe answer),
and an orchestrator that treats 404 on DELETE as "already gone" stays right. The documented
pattern says what real ids look like.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Query

from ...core import ID_PATTERN, VM_ID_PATTERN
from ..routing import ApiRoute
from ..schemas import Problem

__all__ = ["VMId", "ObjectIdPath", "SlotId", "DryRun", "IfMatch", "IfNoneMatch", "problems", "router"]

_ANY_ID = "; any other value is an id that does not exist (404)"
VMId = Annotated[
    str, Path(description="a VM id" + _ANY_ID, json_schema_extra={"pattern": VM_ID_PATTERN, "maxLength": 64})
]
ObjectIdPath = Annotated[
    str,
    Path(
        description="a guest_memfd or shared-memory id" + _ANY_ID,
        json_schema_extra={"pattern": ID_PATTERN, "maxLength": 64},
    ),
]
SlotId = Annotated[
    str,
    Path(
        description="slot id (0 .. max_memslots-1)" + _ANY_ID,
        json_schema_extra={"type": "integer", "minimum": 0, "maximum": 65535},
    ),
]
DryRun = Annotated[bool, Query(description="check every rule and answer what would happen; nothing changes")]
IfMatch = Annotated[str | None, Header(description="the slot's ETag (or *): act only if it still matches")]
IfNoneMatch = Annotated[str | None, Header(description="* : create only, never replace")]


def router(prefix: str, tag: str) -> APIRouter:
    return APIRouter(prefix=prefix, tags=[tag], route_class=ApiRoute)


_DESCRIPTIONS = {
    412: "If-Match / If-None-Match precondition failed",
    400: "Malformed JSON",
    403: "Forbidden (feature disabled or not permitted)",
    404: "Unknown VM or object",
    409: "Conflict with existing state",
    410: "Cursor gone (expired, other boot_id): re-list, then resubscribe",
    413: "Request body too large",
    415: "Body is not JSON",
    422: "Request breaks a validation or kernel rule",
    429: "Queue full or quota",
    501: "Capability missing on this host",
    503: "Host resources exhausted (ENOMEM/EMFILE)",
    507: "Byte quota exceeded",
}


def problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for the given problem+json statuses."""
    return {
        s: {"model": Problem, "description": _DESCRIPTIONS[s], "content": {"application/problem+json": {}}}
        for s in statuses
    }
