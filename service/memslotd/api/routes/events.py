"""The event stream: WebSocket ``GET /v1/events`` and its NDJSON long-poll twin.

Resume contract: with ``since_seq`` every retained event after it is delivered exactly
once, then live events, with no gap and no duplicate at the seam. A cursor older than the
retained window, from another ``boot_id``, or a subscriber that fell behind gets ``gone``
(WebSocket close 4410, HTTP 410) — never a silent skip.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import fnmatch
import time
from collections.abc import Callable
from typing import Annotated, Any

import orjson
from fastapi import Query, Request, WebSocket
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ... import __version__
from ...core import EVENT_TYPES, STREAM_TYPES, VM_ID_PATTERN, CursorGone, Event, MemoryCore, Subscriber
from ..problems import describe_errors, problem_response
from ._common import problems
from ._common import router as _router

router = _router("/v1", "events")

SUBPROTOCOL = "memslotd.v1"
CLOSE_GONE = 4410
CLOSE_BAD_REQUEST = 4400
CLOSE_SERVICE_RESTART = 1012  # RFC 6455: the daemon stops; reconnect with since_seq
KNOWN_TYPES = set(EVENT_TYPES) | set(STREAM_TYPES)


class StreamQuery(BaseModel):
    """Query parameters shared by both transports (unknown ones are refused, as on every route)."""

    model_config = ConfigDict(extra="forbid")

    since_seq: Annotated[int, Field(ge=0, le=(1 << 63) - 1)] | None = None
    boot_id: Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")] | None = None
    vm_id: Annotated[str, Field(pattern=VM_ID_PATTERN)] | None = None
    types: Annotated[str, Field(max_length=1024, description="comma list; '*' globs, e.g. memory.*")] | None = None
    initial_state: bool = False

    def type_patterns(self) -> list[str]:
        patterns = [t.strip() for t in (self.types or "").split(",") if t.strip()]
        for p in patterns:
            if not any(fnmatch.fnmatchcase(t, p) for t in KNOWN_TYPES):
                raise ValueError(f"types: {p!r} matches no event type")
        return patterns

    def matcher(self) -> Callable[[str, str | None], bool]:
        patterns = self.type_patterns()

        def accept(type_: str, vm_id: str | None) -> bool:
            if self.vm_id is not None and vm_id != self.vm_id:
                return False
            return not patterns or any(fnmatch.fnmatchcase(type_, p) for p in patterns)

        return accept


def _gone(exc: CursorGone, last_seq: int | None = None) -> dict[str, Any]:
    return {
        "type": "gone",
        "reason": exc.reason,
        "oldest_seq": exc.oldest_seq,
        "current_seq": exc.current_seq,
        "last_seq": last_seq,
        "detail": "re-list the state over REST, then resubscribe (initial_state=true works)",
    }


def _json(obj: Any) -> str:
    return orjson.dumps(obj).decode()


def _frame(core: MemoryCore, type_: str, **fields: Any) -> str:
    return _json({"type": type_, "boot_id": core.events.boot_id, "time": time.time(), **fields})


class StreamState(enum.Enum):
    REPLAYING = "replaying"
    LIVE = "live"
    CLOSING = "closing"


class EventStream:
    """One WebSocket subscriber: replay, then live events, bookmarks, and the watchdog.

    It reads the shared event log through its own cursor (``Subscriber``): the backlog and
    any burst are sent from the log in pages, so no request is too large for a subscriber
    that keeps reading; one that stops is cut off when the log's window passes its cursor."""

    PAGE = 1000  # events per read from the log between sends

    def __init__(self, ws: WebSocket, core: MemoryCore, query: StreamQuery, bookmark_s: float):
        self.ws, self.core, self.query = ws, core, query
        self.accept = query.matcher()
        self.sub: Subscriber | None = None
        self.bookmark_s = bookmark_s
        self.state = StreamState.REPLAYING
        self.last_seq = query.since_seq or 0

    async def send(self, data: str) -> None:
        await self.ws.send_text(data)

    def start(self) -> tuple[list[str], int, list[str], CursorGone | None]:
        """Subscribe and compute what precedes live events, without awaiting (atomic with the
        subscription): the greeting, the seq the backlog ends at, and the initial state."""
        log = self.core.events
        hello = [
            _frame(
                self.core,
                "hello",
                seq=log.seq,
                oldest_seq=log.oldest_seq,
                version=__version__,
                bookmark_interval_s=self.bookmark_s,
                enforcement=self.core.host.enforcement,
            )
        ]
        if self.query.since_seq is not None:
            try:
                log.check_cursor(self.query.since_seq, self.query.boot_id)
            except CursorGone as exc:
                return hello + [_json(_gone(exc))], log.seq, [], exc
        accept = self.accept  # not ``self``: the subscriber must not point back at its stream
        self.sub = log.subscribe(lambda e: accept(e.type, e.vm_id), self.query.since_seq)
        state: list[str] = []
        if self.query.initial_state:
            now = time.time()
            for type_, vm_id, data in self.core.initial_state(self.query.vm_id):
                if self.accept(type_, vm_id):
                    state.append(
                        _json(
                            {
                                "seq": log.seq,
                                "boot_id": log.boot_id,
                                "time": now,
                                "type": type_,
                                "vm_id": vm_id,
                                "data": data,
                                "initial": True,
                            }
                        )
                    )
            state.append(_frame(self.core, "bookmark", seq=log.seq, initial_state_end=True))
        return hello, log.seq, state, None

    async def _send_events(self, batch: list[Event]) -> None:
        assert self.sub is not None
        for event in batch:
            await self.send(event.encoded)
            self.last_seq = event.seq
            self.sub.sent()

    async def pump(self, hello: list[str], backlog_end: int, state: list[str]) -> None:
        assert self.sub is not None
        for frame in hello:
            await self.send(frame)
        if state:  # the backlog up to the snapshot's seq, then the snapshot
            while batch := self.sub.drain(self.PAGE, until_seq=backlog_end):
                await self._send_events(batch)
            for frame in state:
                await self.send(frame)
            self.last_seq = backlog_end
        self.state = StreamState.LIVE
        while True:
            try:
                batch = await self.sub.next_batch(self.bookmark_s, self.PAGE)
            except OverflowError:
                return
            if not batch and self.sub.ended:  # shutdown, and every event was sent
                return
            if not batch:  # idle: everything up to now was delivered or filtered out
                self.last_seq = self.core.events.seq
                await self.send(_frame(self.core, "bookmark", seq=self.last_seq))
            await self._send_events(batch)

    async def drain_client(self) -> None:
        while (await self.ws.receive())["type"] != "websocket.disconnect":
            pass

    async def run(self) -> None:
        hello, backlog_end, state, gone = self.start()
        try:
            if gone is not None or self.sub is None:
                for frame in hello:
                    await self.send(frame)
                await self.ws.close(CLOSE_GONE, gone.reason if gone else "gone")
                return
            sub = self.sub
            tasks = [
                asyncio.create_task(c)
                for c in (self.pump(hello, backlog_end, state), self.drain_client(), sub.overflow_event.wait())
            ]
            done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for t in pending:
                t.cancel()
            for t in pending:
                with contextlib.suppress(BaseException):
                    await t
            for t in done:  # a send to a client that went away: nothing more to do
                if not t.cancelled() and t.exception() is not None and tasks[1] not in done:
                    raise t.exception()  # type: ignore[misc]
            if sub.ended and not sub.overflowed and tasks[1] not in done:
                # A closing handshake, not a dropped connection: the client reads every event
                # it was sent before the close (uvicorn's own close at shutdown drops the
                # socket at once, and a client whose close reply fails loses the last frames).
                self.state = StreamState.CLOSING
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.ws.close(CLOSE_SERVICE_RESTART, "shutting down"), 1.0)
            if sub.overflowed:
                self.state = StreamState.CLOSING
                exc = CursorGone("subscriber_overflow", self.core.events.oldest_seq, self.core.events.seq)
                with contextlib.suppress(Exception):  # the client may be stalled: bounded effort
                    await asyncio.wait_for(self.send(_json(_gone(exc, self.last_seq))), 1.0)
                    await asyncio.wait_for(self.ws.close(CLOSE_GONE, "subscriber_overflow"), 1.0)
        finally:
            if self.sub is not None:
                self.sub.close()


@router.websocket("/events")
async def events_ws(websocket: WebSocket) -> None:
    core: MemoryCore = websocket.app.state.core
    settings = websocket.app.state.settings
    offered = websocket.scope.get("subprotocols") or []
    await websocket.accept(subprotocol=SUBPROTOCOL if SUBPROTOCOL in offered else None)
    try:
        query = StreamQuery.model_validate(dict(websocket.query_params))
        query.type_patterns()
    except ValidationError as exc:  # one sentence per parameter, never pydantic's dump
        await _refuse(websocket, describe_errors(exc.errors()))
        return
    except ValueError as exc:
        await _refuse(websocket, str(exc))
        return
    if websocket.scope.get("memslotd.auth_pending") and not await _first_message_auth(websocket):
        return
    stream = EventStream(websocket, core, query, settings.event_bookmark_interval_s)
    await stream.run()


async def _refuse(websocket: WebSocket, detail: str) -> None:
    await websocket.send_text(_json({"type": "error", "code": "VALIDATION_FAILED", "detail": detail}))
    await websocket.close(CLOSE_BAD_REQUEST, "bad query")


async def _first_message_auth(websocket: WebSocket) -> bool:
    """TCP clients that could put the token neither in a header nor in the subprotocol
    send ``{"type": "auth", "token": "…"}`` first (within 5 s)."""
    tokens = websocket.app.state.tokens
    try:
        message = orjson.loads(await asyncio.wait_for(websocket.receive_text(), 5.0))
        token = tokens.verify(message.get("token")) if message.get("type") == "auth" else None
    except Exception:
        token = None
    if token is None or not token.allows("events"):
        await websocket.close(4401 if token is None else 4403, "unauthorized")
        return False
    return True


@router.get(
    "/events",
    responses={
        200: {
            "content": {"application/x-ndjson": {}},
            "description": "one event envelope per line, then a bookmark line",
        },
        **problems(410, 422),
    },
)
async def events_longpoll(
    request: Request,
    since_seq: Annotated[int | None, Query(ge=0, le=(1 << 63) - 1, description="resume after this seq")] = None,
    boot_id: Annotated[str | None, Query(pattern=r"^[0-9a-f]{32}$")] = None,
    vm_id: Annotated[str | None, Query(pattern=VM_ID_PATTERN)] = None,
    types: Annotated[str | None, Query(max_length=1024)] = None,
    wait: Annotated[float, Query(ge=0, le=60, description="seconds to wait when nothing is pending")] = 25.0,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> Response:
    """NDJSON long-poll for curl and proxies that block WebSocket: same envelope, same gone
    semantics (410). The last line is a ``bookmark`` whose ``seq`` is the next ``since_seq``."""
    core: MemoryCore = request.app.state.core
    log = core.events
    query = StreamQuery(since_seq=since_seq, boot_id=boot_id, vm_id=vm_id, types=types)
    start = log.seq if since_seq is None else since_seq
    try:
        accept = query.matcher()
        pending = any(accept(e.type, e.vm_id) for e in log.since(start, boot_id))
    except ValueError as exc:
        return problem_response(422, "VALIDATION_FAILED", "Invalid request", str(exc), request)
    except CursorGone as exc:
        return _gone_response(exc, request)
    if not pending and wait > 0:
        # The subscription is only a wake-up; the events are read from the log afterwards, so
        # a burst larger than any queue (a batch) is paged by ``limit``, never dropped.
        sub = log.subscribe(lambda e: accept(e.type, e.vm_id), start)
        try:
            with contextlib.suppress(OverflowError):
                await sub.next_batch(wait, 1)  # the first accepted event, or the deadline
        finally:
            sub.close()
    try:
        events: list[Event] = [e for e in log.since(start, boot_id) if accept(e.type, e.vm_id)]
    except CursorGone as exc:  # the window moved past the cursor while we waited
        return _gone_response(exc, request)
    if len(events) > limit:
        events = events[:limit]
        bookmark = events[-1].seq
    else:
        bookmark = log.seq
    lines = [e.encoded for e in events] + [_frame(core, "bookmark", seq=bookmark)]
    return Response("\n".join(lines) + "\n", media_type="application/x-ndjson")


def _gone_response(exc: CursorGone, request: Request) -> Response:
    gone = _gone(exc)
    return problem_response(
        410, "CURSOR_GONE", "Cursor gone", gone.pop("detail"), request, **{k: v for k, v in gone.items() if k != "type"}
    )
