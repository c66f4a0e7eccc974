"""Pure-ASGI middleware: body size limit, the ``Memslotd-Boot-Id`` header, and CORS."""

from __future__ import annotations

from typing import Any

from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .problems import send_problem

__all__ = ["LimitsAndHeaders", "AllowedOriginsCORS"]


class BodyTooLarge(Exception):
    pass


class LimitsAndHeaders:
    """Rejects bodies above ``max_body_bytes`` with 413 (declared or streamed) and stamps
    every response with the daemon's boot id, so a client can tell a restart."""

    def __init__(self, app: ASGIApp, max_body_bytes: int, state: Any, max_batch_body_bytes: int = 1 << 20):
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_batch_body_bytes = max_batch_body_bytes
        self.state = state  # app.state; the lifespan sets ``boot_header`` once the core exists

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_batch_body_bytes if scope["path"].endswith(":batch") else self.max_body_bytes
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                await self._reject(send, limit)
                return
        received = 0
        started = overflowed = False

        async def limited_receive() -> Message:
            nonlocal received, overflowed
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    overflowed = True
                    raise BodyTooLarge()
            return message

        async def stamped_send(message: Message) -> None:
            nonlocal started
            if overflowed:
                return  # whatever a layer made of the cut-off body (a parse error): the answer is 413
            if message["type"] == "http.response.start":
                started = True
                message["headers"] = [*message.get("headers", []), self.state.boot_header]
            await send(message)

        try:
            await self.app(scope, limited_receive, stamped_send)
        except BodyTooLarge:
            pass
        if overflowed and not started:
            await self._reject(send, limit)

    async def _reject(self, send: Send, limit: int) -> None:
        await send_problem(
            send,
            413,
            "BODY_TOO_LARGE",
            "Request body too large",
            f"request body exceeds {limit} bytes",
            [self.state.boot_header],
        )


class AllowedOriginsCORS(CORSMiddleware):
    """CORS for the origins in ``--allowed-origins`` only (outermost, so a preflight needs no token
    and even a 401 carries ``Access-Control-Allow-Origin``); any other origin passes through
    untouched, and the access control refuses it on TCP (403 ``ORIGIN_NOT_ALLOWED``)."""

    EXPOSED = [
        "ETag",
        "Location",
        "memslotd-boot-id",
        "memslotd-dry-run",
        "Idempotent-Replayed",
        "Retry-After",
        "Allow",
    ]
    REQUEST_HEADERS = ["Authorization", "Content-Type", "If-Match", "If-None-Match", "Idempotency-Key"]

    def __init__(self, app: ASGIApp, origins: list[str]):
        super().__init__(
            app,
            allow_origins=origins,
            allow_methods=["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS"],
            allow_headers=self.REQUEST_HEADERS,
            expose_headers=self.EXPOSED,
            max_age=600,
        )
        self.origins = frozenset(origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            origin = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"origin"), None)
            if origin in self.origins:
                await super().__call__(scope, receive, send)
                return
        await self.app(scope, receive, send)
