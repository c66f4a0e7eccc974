"""Pure-ASGI middleware: body size limit and the ``Memslotd-Boot-Id`` header."""

from __future__ import annotations

from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .problems import send_problem

__all__ = ["LimitsAndHeaders"]


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
        await send_problem(send, 413, "BODY_TOO_LARGE", "Request body too large", f"request body exceeds {limit} bytes",
                           [self.state.boot_header])
