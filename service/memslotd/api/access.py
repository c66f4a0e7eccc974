"""Access control, audit, request logs and metrics: one pure-ASGI middleware.

Listener kinds (by the socket the request arrived on):
``unix``     full access; the peer's uid/gid/pid (SO_PEERCRED) is recorded;
``unix-ro``  GETs and event subscriptions only (mutations -> 403);
``tcp``      a bearer token with the needed scope; browsers' ``Origin`` must be allowed.
Every mutating call, and every refusal, leaves one audit line.
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..logs import RequestLog
from .auth import TokenStore, required_scope
from .problems import send_problem

__all__ = ["AccessControl", "REQUEST_SECONDS"]


REQUEST_SECONDS = Histogram(
    "memslotd_request_duration_seconds",
    "API request latency",
    ["method", "route", "status"],
    buckets=(1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 0.1, 0.5, 2.5, 10),
)
DENIED = Counter("memslotd_requests_denied_total", "requests refused by access control", ["reason"])
TOKEN_SUBPROTOCOL = "memslotd.token."


class AccessControl:
    def __init__(self, app: ASGIApp, state: Any):
        self.app = app
        self.state = state  # app.state: listeners, tokens, allowed_origins, boot_header (set by the daemon/lifespan)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        server = scope.get("server")
        kind = self.state.listeners.get(tuple(server) if server else None, self.state.default_listener)
        scope["memslotd.listener"] = kind
        method = scope.get("method", "WS")
        need = required_scope(scope["type"], method, scope["path"])
        who = self._who(scope, kind)
        denial = self._check(scope, kind, need, who)
        recorded = False

        def record(status: int) -> None:
            nonlocal recorded
            if not recorded:
                recorded = True
                self._record(scope, method, who, kind, need, status, started)

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                record(message["status"])  # audited before the caller sees the answer
            await send(message)

        if denial is not None:
            status, code, detail = denial
            DENIED.labels(code).inc()
            record(status)
            await self._deny(scope, send, status, code, detail)
            return
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            record(101 if scope["type"] == "websocket" else 500)  # a stream's end, or a crash before any answer

    @staticmethod
    def _header(scope: Scope, name: bytes) -> str | None:
        for key, value in scope.get("headers", ()):
            if key == name:
                return value.decode("latin-1")
        return None

    def _bearer(self, scope: Scope) -> str | None:
        auth = self._header(scope, b"authorization")
        return auth[7:].strip() if auth and auth.lower().startswith("bearer ") else None

    def _same_origin(self, scope: Scope, origin: str) -> bool:
        """The dashboard served by this daemon calls its own API: Origin matches Host."""
        host = self._header(scope, b"host")
        scheme = "https" if scope.get("scheme") in ("https", "wss") else "http"
        return host is not None and origin == f"{scheme}://{host}"

    def _who(self, scope: Scope, kind: str) -> dict[str, Any]:
        peer = scope.get("memslotd.peer")
        if peer is not None:
            return {"pid": peer[0], "uid": peer[1], "gid": peer[2]}
        client = scope.get("client")
        return {"addr": f"{client[0]}:{client[1]}"} if client else {"listener": kind}

    def _check(self, scope: Scope, kind: str, need: str, who: dict[str, Any]) -> tuple[int, str, str] | None:
        if kind == "unix-ro" and need not in ("read", "events", "public"):
            return 403, "READ_ONLY_LISTENER", "this socket is read-only: GETs and event subscriptions only"
        if kind != "tcp":
            return None
        if need == "public":  # a valid token still identifies the caller (healthz then says more)
            token = self.state.tokens.verify(self._bearer(scope)) if self.state.tokens else None
            if token is not None:
                scope["memslotd.token"] = token
            return None
        origin = self._header(scope, b"origin")
        if origin is not None and origin not in self.state.allowed_origins and not self._same_origin(scope, origin):
            return 403, "ORIGIN_NOT_ALLOWED", f"Origin {origin!r} is not allowed"
        presented = self._bearer(scope)
        if presented is None and scope["type"] == "websocket":
            for proto in scope.get("subprotocols", []):
                if proto.startswith(TOKEN_SUBPROTOCOL):
                    presented = proto[len(TOKEN_SUBPROTOCOL) :]
            if presented is None:
                scope["memslotd.auth_pending"] = True  # the stream reads {"type":"auth","token":…} first
                return None
        tokens: TokenStore = self.state.tokens
        token = tokens.verify(presented)
        if token is None:
            return 401, "UNAUTHORIZED", "a valid bearer token is required on TCP"
        who["token"] = token.name
        scope["memslotd.token"] = token
        if not token.allows(need):
            return 403, "INSUFFICIENT_SCOPE", f"token {token.name!r} lacks the {need!r} scope"
        return None

    async def _deny(self, scope: Scope, send: Send, status: int, code: str, detail: str) -> None:
        if scope["type"] == "websocket":  # refusing the handshake answers with HTTP 403
            await send({"type": "websocket.close", "code": 4401 if status == 401 else 4403, "reason": code})
            return
        headers = [self.state.boot_header]
        if status == 401:
            headers.append((b"www-authenticate", b'Bearer realm="memslotd"'))
        await send_problem(send, status, code, "Unauthorized" if status == 401 else "Forbidden", detail, headers)

    def _record(
        self, scope: Scope, method: str, who: dict[str, Any], kind: str, need: str, status: int, started: float
    ) -> None:
        duration = time.perf_counter() - started
        route_obj = scope.get("route")
        route = getattr(route_obj, "path", None) or ("unmatched" if status == 404 else scope["path"][:64])
        if scope["type"] == "http":
            REQUEST_SECONDS.labels(method, route, str(status)).observe(duration)
        request_log: RequestLog = self.state.request_log
        # host-view reads too: reading guest memory is as sensitive as writing it
        audit = need in ("mutate", "admin") or status in (401, 403) or scope["path"].endswith("/bytes")
        if request_log.enabled or audit:
            request_log.write(
                audit,
                {
                    "method": method,
                    "route": route,
                    "path": scope["path"],
                    "status": status,
                    "duration_ms": round(duration * 1e3, 3),
                    "listener": kind,
                    **who,
                },
            )
