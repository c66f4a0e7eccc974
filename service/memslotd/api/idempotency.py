"""``Idempotency-Key`` for POSTs: a retried create gets the first answer, not a second object.

Keyed by caller (token name, or Unix peer uid) and key. The first answer (unless 5xx) is kept
in a bounded LRU for ``ttl`` seconds and replayed with ``Idempotent-Replayed: true`` for a
request with the same method, path, query and body. The same key with a different request is
refused (422 ``IDEMPOTENCY_KEY_REUSED``); while the first is still running, 409
``IDEMPOTENCY_KEY_IN_USE``. PUT needs none of this: it is idempotent by slot id.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .problems import send_problem

__all__ = ["IdempotencyKeys"]

TITLE = "Idempotency-Key conflict"


@dataclasses.dataclass
class _Entry:
    fingerprint: bytes
    created: float
    status: int = 0  # 0 while the first request runs
    headers: list[tuple[bytes, bytes]] = dataclasses.field(default_factory=list)
    body: bytes = b""


class IdempotencyKeys:
    def __init__(self, app: ASGIApp, max_entries: int = 10_000, ttl: float = 24 * 3600):
        self.app = app
        self.max_entries = max_entries
        self.ttl = ttl
        self._entries: collections.OrderedDict[tuple[str, str], _Entry] = collections.OrderedDict()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        key = self._key(scope) if scope["type"] == "http" and scope["method"] == "POST" else None
        if key is None:
            await self.app(scope, receive, send)
            return
        body = await self._read_body(receive)
        fingerprint = hashlib.sha256(b"\0".join((scope["path"].encode(), scope.get("query_string", b""), body))).digest()
        self._expire()
        entry = self._entries.get(key)
        if entry is not None:
            if entry.fingerprint != fingerprint:
                await send_problem(send, 422, "IDEMPOTENCY_KEY_REUSED", TITLE, "this Idempotency-Key was used for another request")
            elif entry.status == 0:
                await send_problem(send, 409, "IDEMPOTENCY_KEY_IN_USE", TITLE,
                                   "the request with this Idempotency-Key is still running")
            else:
                headers = [*entry.headers, (b"idempotent-replayed", b"true")]
                await send({"type": "http.response.start", "status": entry.status, "headers": headers})
                await send({"type": "http.response.body", "body": entry.body})
            return
        entry = self._entries[key] = _Entry(fingerprint, time.monotonic())
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

        async def replay_receive() -> Message:
            return {"type": "http.request", "body": body, "more_body": False}

        async def recording_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                entry.status = message["status"]
                entry.headers = list(message.get("headers", []))
            elif message["type"] == "http.response.body":
                entry.body += message.get("body", b"")
            await send(message)

        try:
            await self.app(scope, replay_receive, recording_send)
        finally:
            if entry.status == 0 or entry.status >= 500:  # not an answer worth replaying: allow a retry
                self._entries.pop(key, None)

    @staticmethod
    def _key(scope: Scope) -> tuple[str, str] | None:
        for name, value in scope.get("headers", ()):
            if name == b"idempotency-key":
                token = scope.get("memslotd.token")
                peer = scope.get("memslotd.peer")
                who = f"token:{token.name}" if token is not None else f"uid:{peer[1]}" if peer else "local"
                return who, value.decode("latin-1")[:255]
        return None

    @staticmethod
    async def _read_body(receive: Receive) -> bytes:
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                return b"".join(chunks)

    def _expire(self) -> None:
        now = time.monotonic()
        while self._entries:
            oldest = next(iter(self._entries.values()))
            if now - oldest.created < self.ttl:
                return
            self._entries.popitem(last=False)
