"""The event stream as an iterator that resumes by itself.

It remembers the last ``seq`` (bookmarks advance it too) and the ``boot_id``; after a
dropped connection it reconnects with ``since_seq`` and ``boot_id``, so every event
arrives exactly once. When the daemon cannot resume (close code 4410 / ``gone``) it
raises :class:`CursorGone`: the caller re-lists the state and subscribes again.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
import urllib.parse
from collections.abc import AsyncIterator, Iterator
from typing import Any

from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect, unix_connect
from websockets.typing import Subprotocol

from ._tls import tls_context
from .errors import BadRequest, CursorGone, TransportError, Unauthorized

__all__ = ["Event", "EventStream"]

Event = dict[str, Any]
SUBPROTOCOL = Subprotocol("memslotd.v1")
GONE = 4410
MAX_RETRY_S = 5.0


class EventStream:
    def __init__(
        self,
        socket: str | None,
        url: str | None,
        token: str | None,
        verify: ssl.SSLContext | str | bool = True,
        cert: tuple[str, str] | None = None,
        *,
        since_seq: int | None = None,
        boot_id: str | None = None,
        vm_id: str | None = None,
        types: list[str] | None = None,
        initial_state: bool = False,
        bookmarks: bool = False,
    ):
        self.socket, self.url, self.token = socket, url, token
        self.verify, self.cert = verify, cert
        self.cursor, self.boot_id = since_seq, boot_id
        self.vm_id, self.types, self.initial_state, self.bookmarks = vm_id, types, initial_state, bookmarks
        self.reconnects = 0
        self.connection: Any = None  # the current WebSocket (closing it makes the iterator reconnect)
        self._closed = False

    def close(self) -> None:
        """Stop: the iterator ends after the current message."""
        self._closed = True
        if self.connection is not None:
            self.connection.close()

    def _query(self) -> str:
        q: dict[str, Any] = {}
        if self.cursor is not None:
            q["since_seq"] = self.cursor
            if self.boot_id:
                q["boot_id"] = self.boot_id
        elif self.initial_state:
            q["initial_state"] = "true"
        if self.vm_id:
            q["vm_id"] = self.vm_id
        if self.types:
            q["types"] = ",".join(self.types)
        return "/v1/events" + ("?" + urllib.parse.urlencode(q) if q else "")

    def _connect(self) -> Any:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
        if self.url:
            base = self.url.replace("https://", "wss://").replace("http://", "ws://")
            ctx = tls_context(self.verify, self.cert) if base.startswith("wss://") else None
            return connect(
                base + self._query(),
                additional_headers=headers,
                ssl=ctx,
                subprotocols=[SUBPROTOCOL],
                open_timeout=10,
                max_size=None,
            )
        return unix_connect(
            self.socket,
            "ws://memslotd" + self._query(),
            additional_headers=headers,
            subprotocols=[SUBPROTOCOL],
            open_timeout=10,
            max_size=None,
        )

    def _handle(self, message: Event) -> Event | None:
        """Track the cursor; return what the caller should see (None: nothing)."""
        kind = message.get("type")
        if kind == "hello":
            if self.boot_id and message["boot_id"] != self.boot_id and self.cursor is not None:
                raise CursorGone("daemon restarted: re-list", status=410, code="CURSOR_GONE", problem=message)
            self.boot_id = message["boot_id"]
            if self.cursor is None and not self.initial_state:
                self.cursor = message["seq"]
            return None
        if kind == "gone":
            raise CursorGone(f"cursor gone: {message.get('reason')}", status=410, code="CURSOR_GONE", problem=message)
        if kind == "error":
            cls = BadRequest if message.get("code") == "VALIDATION_FAILED" else Unauthorized
            raise cls(message.get("detail", "refused"), code=message.get("code", ""), problem=message)
        if "seq" in message and not message.get("initial"):
            self.cursor = max(self.cursor or 0, int(message["seq"]))
        if kind == "bookmark":
            if message.get("initial_state_end"):
                self.initial_state = False
            return message if self.bookmarks else None
        return message

    def __iter__(self) -> Iterator[Event]:
        delay = 0.05
        while not self._closed:
            try:
                with self._connect() as ws:
                    self.connection = ws
                    delay = 0.05
                    for raw in ws:
                        event = self._handle(json.loads(raw))
                        if event is not None:
                            yield event
            except ConnectionClosed as exc:
                if exc.rcvd is not None and exc.rcvd.code == GONE:
                    raise CursorGone(f"cursor gone: {exc.rcvd.reason}", status=410, code="CURSOR_GONE") from exc
            except InvalidStatus as exc:
                raise Unauthorized(
                    f"event stream refused: HTTP {exc.response.status_code}",
                    status=exc.response.status_code,
                    code="EVENTS_REFUSED",
                ) from exc
            except OSError as exc:
                if self.reconnects > 50:
                    raise TransportError(f"event stream lost: {exc}", code="UNREACHABLE") from exc
            if self._closed:
                return
            self.reconnects += 1
            time.sleep(delay)
            delay = min(delay * 2, MAX_RETRY_S)

    async def aiter(self) -> AsyncIterator[Event]:
        """The same stream for asyncio callers (the blocking reads run in a thread)."""
        iterator = iter(self)
        sentinel = object()
        while True:
            event = await asyncio.to_thread(next, iterator, sentinel)
            if event is sentinel:
                return
            yield event  # type: ignore[misc]
