"""Memslots: the seed's extended memslot (shared part + private part)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

import orjson
from fastapi import Query, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from ...core import MAX_BATCH_OPS, MAX_JSON_INT, Backing, BatchOp, SlotRequest, SlotView
from ..batch_body import BATCH_BODY
from ..body import check_charset, parse_json
from ..deps import CoreDep
from ..routing import DRY_RUN_HEADER
from ..schemas import BatchResponse, DirtyLog, MemslotCreate, MemslotList, MemslotRead
from ..views import slot_read
from ._common import DryRun, IfMatch, IfNoneMatch, SlotId, VMId, problems
from ._common import router as _router

router = _router("/v1/vms/{vm_id}/memslots", "memslots")
batch_router = _router("/v1/vms/{vm_id}", "memslots")

ERRORS = problems(400, 404, 409, 412, 422, 429, 503)


_BATCH_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/BatchRequest"}}},
    }
}


_BATCH_DESCRIPTION = f"""Up to {MAX_BATCH_OPS} creates and deletes, applied in order, all or nothing.

On the first failure every applied op is rolled back and the answer (problem+json
``BATCH_FAILED``, with the status of the failing op) names its ``index`` and ``cause``.
Events are emitted only for what finally stands, in op order, after the batch commits."""


@batch_router.post(
    "/memslots:batch",
    response_model=BatchResponse,
    responses=ERRORS,
    openapi_extra=_BATCH_BODY,
    description=_BATCH_DESCRIPTION,
)
async def batch(vm_id: VMId, request: Request, core: CoreDep, dry_run: DryRun = False) -> Any:
    # Thousands of ops: pydantic parses the JSON itself into plain dicts (batch_body), and the
    # result, built by the core in the documented shape, is not validated a second time.
    content_type = request.headers.get("content-type", "")
    if "json" not in content_type:
        raise RequestValidationError([{"type": "model_attributes_type", "loc": ("body",), "msg": "JSON body required"}])
    check_charset(content_type)
    body = _batch_body(await request.body())
    ops = [
        BatchOp("delete", op["slot"]) if op["op"] == "delete" else BatchOp("create", op.get("slot"), _slot_request(op))
        for op in body["ops"]
    ]
    results = await core.batch.apply(vm_id, ops, dry_run=dry_run)
    return Response(
        orjson.dumps({"results": results}),
        media_type="application/json",
        headers={DRY_RUN_HEADER: "true"} if dry_run else None,
    )


def _batch_body(raw: bytes) -> Any:
    """Fast path: pydantic parses the bytes itself. It keeps the last of duplicate keys, so the
    keys are counted: in a valid batch no string holds a ':' (ids and names have patterns), so
    the body has exactly one ':' per key. A mismatch, or any refusal, goes the slow way
    (api.body's parser, then the same rules), which names exactly what is wrong."""
    try:
        body = BATCH_BODY.validate_json(raw)
    except ValidationError:
        body = None
    if body is not None:
        ops: list[Any] = body["ops"]
        keys = 1 + sum(map(len, ops)) + sum(len(op.get("shared") or ()) + len(op.get("private") or ()) for op in ops)
        if raw.count(b":") == keys:
            return body
    parsed = parse_json(raw)
    try:
        return BATCH_BODY.validate_python(parsed)
    except ValidationError as exc:
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]) from None


def _request(body: MemslotCreate) -> SlotRequest:
    return _slot_request(body.model_dump())


def _slot_request(op: Mapping[str, Any]) -> SlotRequest:
    """The core's request from a slot body as a dict: a batch op (omitted fields take the
    documented defaults) or a dumped MemslotCreate."""
    shared, private, flags = op.get("shared"), op.get("private"), op.get("flags")
    return SlotRequest(
        op["guest_phys_addr"],
        op["memory_size"],
        tuple(sorted(set(flags))) if flags else (),
        Backing(shared["shared_memory_id"], shared.get("offset", 0)) if shared else None,
        Backing(private["guest_memfd_id"], private.get("offset", 0)) if private else None,
        op.get("address_space", 0),
    )


@router.put(
    "/{slot}",
    status_code=201,
    response_model=MemslotRead,
    responses={
        200: {
            "model": MemslotRead,
            "description": "An identical slot exists (idempotent), or a shared-only slot was moved",
        },
        **ERRORS,
    },
)
async def put_memslot(
    vm_id: VMId,
    slot: SlotId,
    body: MemslotCreate,
    core: CoreDep,
    response: Response,
    dry_run: DryRun = False,
    if_match: IfMatch = None,
    if_none_match: IfNoneMatch = None,
) -> Any:
    """Create slot ``slot`` (201), or no-op on an identical slot (200). A dry run answers 200 with
    the slot as it would stand (no ``Location``: nothing was created).

    A shared-only slot may be moved (new ``guest_phys_addr``) or have ``log_dirty_pages``
    toggled (200). A slot with a private part can only be deleted (409 ``SLOT_IMMUTABLE``).
    ``If-Match: <etag>`` acts only on the slot version you read; ``If-None-Match: *`` only creates.
    """
    view, created = await core.memslots.put(
        vm_id, slot, _request(body), dry_run=dry_run, if_match=if_match, if_none_match=if_none_match
    )
    return _slot_answer(vm_id, view, created, response, dry_run)


def _slot_answer(vm_id: str, view: SlotView, created: bool, response: Response, dry_run: bool) -> Any:
    response.status_code = 201 if created and not dry_run else 200
    if dry_run:
        response.headers[DRY_RUN_HEADER] = "true"
    else:
        response.headers["Location"] = f"/v1/vms/{vm_id}/memslots/{view.slot.slot_id}"
        response.headers["ETag"] = view.slot.etag
    return slot_read(view)


@router.post(
    "",
    status_code=201,
    response_model=MemslotRead,
    responses={
        200: {"model": MemslotRead, "description": "dry run: every rule held; the slot that would be created"},
        **ERRORS,
    },
)
async def post_memslot(
    vm_id: VMId, body: MemslotCreate, core: CoreDep, response: Response, dry_run: DryRun = False
) -> Any:
    """Create a slot with the lowest free slot id (a dry run answers 200 with the slot it would create)."""
    view, _ = await core.memslots.put(vm_id, None, _request(body), dry_run=dry_run)
    return _slot_answer(vm_id, view, True, response, dry_run)


@router.get("", response_model=MemslotList, responses=problems(404, 422))
async def list_memslots(
    vm_id: VMId,
    core: CoreDep,
    gpa_start: Annotated[int, Query(ge=0, le=MAX_JSON_INT, description="only slots ending after this GPA")] = 0,
    gpa_end: Annotated[
        int, Query(ge=1, le=MAX_JSON_INT + 1, description="only slots starting before this GPA")
    ] = MAX_JSON_INT + 1,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[
        str | None, Query(pattern=r"^[0-9a-f]{1,16}$", description="next_cursor of the previous page")
    ] = None,
) -> Any:
    """Slots in GPA order, a page at a time (O(log n + limit))."""
    page = core.memslots.list(vm_id, gpa_start, gpa_end, int(cursor, 16) if cursor else None, limit)
    return {
        "items": [slot_read(s) for s in page.items],
        "next_cursor": f"{page.next_gpa:x}" if page.next_gpa is not None else None,
        "total": page.total,
    }


@router.post(
    "/{slot}/dirty-log",
    response_model=DirtyLog,
    responses={
        200: {
            "content": {"application/octet-stream": {}},
            "description": "with ?format=bitmap: KVM's bitmap, bit i = page i",
        },
        **problems(404, 409, 429),
    },
)
async def fetch_dirty_log(
    vm_id: VMId, slot: SlotId, core: CoreDep, format: Annotated[Literal["ranges", "bitmap"], Query()] = "ranges"
) -> Any:
    """Collect and reset the slot's dirty log (KVM_GET_DIRTY_LOG): the pages the guest wrote since
    the previous fetch. The slot needs the ``log_dirty_pages`` flag (409 ``DIRTY_LOGGING_OFF``)."""
    log = await core.memslots.fetch_dirty_log(vm_id, slot, ranges=format == "ranges")
    if log.ranges is None:
        return Response(log.bitmap, media_type="application/octet-stream", headers={"memslotd-pages": str(log.pages)})
    return {
        "slot": log.slot,
        "page_size": log.page_size,
        "pages": log.pages,
        "dirty_pages": sum(n for _, n in log.ranges) // log.page_size,
        "ranges": [{"guest_phys_addr": g, "size": n} for g, n in log.ranges],
    }


@router.get("/{slot}", response_model=MemslotRead, responses=problems(404))
async def get_memslot(vm_id: VMId, slot: SlotId, core: CoreDep, response: Response) -> Any:
    """The slot, with its ``ETag`` for conditional PUT/DELETE."""
    view = core.memslots.get(vm_id, slot)
    response.headers["ETag"] = view.slot.etag
    return slot_read(view)


@router.delete("/{slot}", status_code=204, responses=problems(404, 412, 429))
async def delete_memslot(
    vm_id: VMId, slot: SlotId, core: CoreDep, response: Response, dry_run: DryRun = False, if_match: IfMatch = None
) -> None:
    """KVM_SET_USER_MEMORY_REGION2 with size 0, bracketed by invalidate events."""
    await core.memslots.delete(vm_id, slot, dry_run=dry_run, if_match=if_match)
    if dry_run:
        response.headers[DRY_RUN_HEADER] = "true"
