"""``Idempotency-Key`` for POSTs: a retried create gets the first answer, not a second object.

Keyed by caller (token name, or Unix peer uid) and key. The first answer (unless 5xx) is kept
for ``ttl`` seconds and replayed with ``Idempotent-Replayed: true`` for a request with the same
method, path, query and body. The cache is bounded in bytes (``max_bytes``, the answers'
bodies and headers plus a fixed overhead per key) and in keys; the oldest go first. An answer
larger than the whole cache is not kept: its key stays as a small marker and a retry is
refused (409 ``IDEMPOTENCY_ANSWER_NOT_KEPT``) rather than run twice. The same key with a
different request is refused (422 ``IDEMPOTENCY_KEY_REUSED``); while the first is still
running, 409 ``IDEMPOTENCY_KEY_IN_USE``. PUT needs none of this: it is idempotent by slot id.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .problems import send_problem

__all__ = ["IdempotencyKeys"]

TITLE = "Idempotency-Key conflict"


OVERHEAD = 512  # bytes per key beyond its answer: the key, the fingerprint, the objects


@dataclasses.dataclass
class _Entry:
    fingerprint: bytes
    created: float
    status: int = 0  # 0 while the first request runs
    headers: list[tuple[bytes, bytes]] = dataclasses.field(default_factory=list)
    body: bytes = b""
    kept: bool = True  # False: the answer was larger than the cache, only the key is kept

    @property
    def size(self) -> int:
        return OVERHEAD + len(self.body) + sum(len(k) + len(v) for k, v in self.headers)


class IdempotencyKeys:
    def __init__(
        self,
        app: ASGIApp,
        max_entries: int = 10_000,
        ttl: float = 24 * 3600,
        max_bytes: int = 32 << 20,
        state: Any = None,
    ):
        self.app = app
        if state is not None:
            state.idempotency = self  # for /metrics and tests
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.ttl = ttl
        self._entries: collections.OrderedDict[tuple[str, str], _Entry] = collections.OrderedDict()
        self.bytes = 0  # the sum of the entries' sizes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        key = self._key(scope) if scope["type"] == "http" and scope["method"] == "POST" else None
        if key is None:
            await self.app(scope, receive, send)
            return
        body = await self._read_body(receive)
        fingerprint = hashlib.sha256(
            b"\0".join((scope["path"].encode(), scope.get("query_string", b""), body))
        ).digest()
        self._expire()
        entry = self._entries.get(key)
        if entry is not None:
            if entry.fingerprint != fingerprint:
                await send_problem(
                    send, 422, "IDEMPOTENCY_KEY_REUSED", TITLE, "this Idempotency-Key was used for another request"
                )
            elif entry.status == 0:
                await send_problem(
                    send, 409, "IDEMPOTENCY_KEY_IN_USE", TITLE, "the request with this Idempotency-Key is still running"
                )
            elif not entry.kept:
                await send_problem(
                    send,
                    409,
                    "IDEMPOTENCY_ANSWER_NOT_KEPT",
                    TITLE,
                    f"the first answer to this Idempotency-Key was larger than the replay cache "
                    f"({self.max_bytes} bytes); it ran once and is not run again",
                )
            else:
                headers = [*entry.headers, (b"idempotent-replayed", b"true")]
                await send({"type": "http.response.start", "status": entry.status, "headers": headers})
                await send({"type": "http.response.body", "body": entry.body})
            return
        entry = self._entries[key] = _Entry(fingerprint, time.monotonic())
        self.bytes += entry.size
        self._evict()

        async def replay_receive() -> Message:
            return {"type": "http.request", "body": body, "more_body": False}

        answer_headers: list[tuple[bytes, bytes]] = []
        chunks: list[bytes] = []
        recorded = 0
        status = 0

        async def recording_send(message: Message) -> None:
            nonlocal recorded, status
            if message["type"] == "http.response.start":
                status = message["status"]
                answer_headers.extend(message.get("headers", []))
                recorded += sum(len(k) + len(v) for k, v in answer_headers)
            elif message["type"] == "http.response.body" and recorded <= self.max_bytes:
                chunk = message.get("body", b"")
                recorded += len(chunk)
                chunks.append(chunk)  # past the cache size the answer is not kept: stop copying it
            await send(message)

        try:
            await self.app(scope, replay_receive, recording_send)
        finally:
            self._finish(key, entry, status, answer_headers, chunks, recorded)

    def _finish(
        self,
        key: tuple[str, str],
        entry: _Entry,
        status: int,
        headers: list[tuple[bytes, bytes]],
        chunks: list[bytes],
        recorded: int,
    ) -> None:
        if self._entries.get(key) is not entry:
            return  # evicted while it ran
        self.bytes -= entry.size
        if status == 0 or status >= 500:  # not an answer worth replaying: allow a retry
            del self._entries[key]
            return
        entry.status = status
        if recorded + OVERHEAD <= self.max_bytes:
            entry.headers, entry.body = headers, b"".join(chunks)
        else:
            entry.kept = False
        self.bytes += entry.size
        self._evict(keep=key)

    def _evict(self, keep: tuple[str, str] | None = None) -> None:
        """Drop the oldest keys until the cache fits (never ``keep``, the answer just stored)."""
        for oldest in list(self._entries):
            if len(self._entries) <= self.max_entries and self.bytes <= self.max_bytes:
                return
            if oldest != keep:
                self.bytes -= self._entries.pop(oldest).size

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
            self.bytes -= self._entries.popitem(last=False)[1].size
