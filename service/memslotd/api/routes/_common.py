"""Shared pieces of the routers: documented error responses, path parameters."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Header, Path, Query

from ..schemas import Problem

VMId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^vm-[0-9a-f]{1,32}$")]
ObjectIdPath = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[a-z]+-[0-9a-f]{1,32}$")]
SlotId = Annotated[int, Path(ge=0, le=65535, description="slot id (0 .. max_memslots-1)")]
DryRun = Annotated[bool, Query(description="check every rule and answer as if done; the kernel is not touched")]
IfMatch = Annotated[str | None, Header(description="the slot's ETag (or *): act only if it still matches")]
IfNoneMatch = Annotated[str | None, Header(description="* : create only, never replace")]

_DESCRIPTIONS = {
    412: "If-Match / If-None-Match precondition failed",
    400: "Malformed JSON", 403: "Forbidden (feature disabled or not permitted)", 404: "Unknown VM or object", 409: "Conflict with existing state",
    410: "Cursor gone (expired, other boot_id): re-list, then resubscribe", 413: "Request body too large",
    415: "Body is not JSON", 422: "Request breaks a validation or kernel rule", 429: "Queue full or quota",
    501: "Capability missing on this host", 503: "Host resources exhausted (ENOMEM/EMFILE)", 507: "Byte quota exceeded",
}


def problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for the given problem+json statuses."""
    return {s: {"model": Problem, "description": _DESCRIPTIONS[s],
                "content": {"application/problem+json": {}}} for s in statuses}
