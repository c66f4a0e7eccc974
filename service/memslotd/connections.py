"""Connections cannot be held open for free: caps, deadlines and the fds kept for the kernel.

Every listener and every peer (Unix uid, TCP address) has a cap on open connections. At a cap
the oldest connection of that group that is *idle* (no request being handled: never sent one,
sent only part of one, or between keep-alive requests) is closed to make room; when every one
of them is busy the new connection is answered 503 and closed at once. A request's headers and
body must arrive within ``request_timeout_s`` (also a new connection's first request), a TCP
connection must present a valid token within ``tcp_auth_timeout_s``, and an idle keep-alive
connection is closed after ``idle_timeout_s``. The caps leave ``fd_reserve`` descriptors to
VMs, guest_memfds and memfds, so kernel objects never lose to idle sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import socket
import struct
from typing import Any

import orjson
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from .api.problems import PROBLEM_MEDIA_TYPE, problem_body
from .http_protocol import BoundedHttpTools
from .settings import Settings

__all__ = ["ConnectionGuard", "protocols", "fd_budget"]

log = logging.getLogger("memslotd")


def fd_budget(settings: Settings, listeners: int) -> tuple[int, int]:
    """Raise the soft fd limit to the hard one; return (reserve, connections per listener)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    reserve = settings.fd_reserve if settings.fd_reserve is not None else soft // 2
    per_listener = min(settings.max_connections, max((soft - reserve) // max(listeners, 1), 4))
    if per_listener < settings.max_connections:
        log.warning(
            "max_connections lowered to %d per listener: RLIMIT_NOFILE %d minus a reserve of %d fds",
            per_listener,
            soft,
            reserve,
        )
    return reserve, per_listener


class _Entry:
    """One accepted connection as the guard sees it (it outlives the HTTP -> WebSocket switch)."""

    __slots__ = ("transport", "listener", "peer", "protocol")

    def __init__(self, transport: asyncio.Transport, listener: Any, peer: Any, protocol: Any):
        self.transport, self.listener, self.peer, self.protocol = transport, listener, peer, protocol

    def busy(self) -> bool:
        return bool(self.protocol.busy())


class ConnectionGuard:
    def __init__(self, max_per_listener: int, max_per_peer: int):
        self.max_per_listener = max_per_listener
        self.max_per_peer = max_per_peer
        # insertion order = age: the first idle one found is the oldest
        self._listeners: dict[Any, dict[_Entry, None]] = {}
        self._peers: dict[Any, dict[_Entry, None]] = {}
        self.evicted = 0
        self.refused = 0

    def admit(self, entry: _Entry) -> bool:
        for groups, key, cap in (
            (self._listeners, entry.listener, self.max_per_listener),
            (self._peers, entry.peer, self.max_per_peer),
        ):
            group = groups.get(key, {})
            while len(group) >= cap:
                victim = next((e for e in group if not e.busy()), None)
                if victim is None:
                    self.refused += 1
                    return False
                self.release(victim)
                victim.transport.close()
                self.evicted += 1
        self._listeners.setdefault(entry.listener, {})[entry] = None
        self._peers.setdefault(entry.peer, {})[entry] = None
        return True

    def release(self, entry: _Entry) -> None:
        for groups, key in ((self._listeners, entry.listener), (self._peers, entry.peer)):
            group = groups.get(key)
            if group is not None:
                group.pop(entry, None)
                if not group:
                    del groups[key]

    @property
    def open(self) -> int:
        return sum(len(g) for g in self._listeners.values())


REFUSED = orjson.dumps(
    problem_body(
        503,
        "TOO_MANY_CONNECTIONS",
        "Too many connections",
        "every connection this listener or peer may open is busy; retry later",
    )
)
REFUSED_RESPONSE = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: "
    + PROBLEM_MEDIA_TYPE.encode()
    + b"\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: "
    + str(len(REFUSED)).encode()
    + b"\r\n\r\n"
    + REFUSED
)


class GuardedWebSocket(WebSocketsSansIOProtocol):
    """A WebSocket connection stays counted until it ends; it is always busy (a subscriber).

    When it ends, the reference cycles it was made of are cut, so that its objects (the
    websockets protocol, its zlib state, buffers, the stream) are freed right away: left to
    the cyclic collector, which this daemon runs rarely (see ``server._tune_garbage_collector``),
    hundreds of dead connections piled up between its passes and fragmented the heap."""

    guard_entry: _Entry | None = None
    guard: ConnectionGuard | None = None

    def busy(self) -> bool:
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self.guard is not None and self.guard_entry is not None:
            self.guard.release(self.guard_entry)
        self.guard_entry = None  # the entry points back at this protocol
        # websockets' parser is a generator suspended on ``self.conn`` until EOF, which uvicorn
        # never feeds it: close it (no data can arrive on a lost connection)
        self.conn.parser.close()


class GuardedHttp(BoundedHttpTools):
    """HTTP/1.1 with the guard, the deadlines and, on Unix sockets, the peer's SO_PEERCRED
    (pid, uid, gid) in every request's scope."""

    guard: ConnectionGuard
    request_timeout_s = 10.0
    auth_timeout_s = 5.0
    peer: tuple[int, int, int] | None = None
    _entry: _Entry | None = None
    _deadline: asyncio.TimerHandle | None = None
    _auth_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        sock = transport.get_extra_info("socket")
        tcp = sock is not None and sock.family != socket.AF_UNIX
        if sock is not None and not tcp:
            with contextlib.suppress(OSError):
                self.peer = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
        listener = transport.get_extra_info("sockname")
        peer_key = (
            ("tcp", (transport.get_extra_info("peername") or ("?",))[0])
            if tcp
            else ("uid", self.peer[1] if self.peer else None)
        )
        self._entry = _Entry(transport, listener, peer_key, self)
        if not self.guard.admit(self._entry):
            self._entry = None
            transport.write(REFUSED_RESPONSE)
            transport.close()
            return
        self._arm_request_deadline()
        if tcp:
            self._auth_deadline = self.loop.call_later(self.auth_timeout_s, self._expire_unauthenticated)

    def busy(self) -> bool:
        """A request is being handled (its headers are in and its answer is not finished)."""
        return self.cycle is not None and not self.cycle.response_complete and self._deadline is None

    def _arm_request_deadline(self) -> None:
        if self._deadline is None:
            self._deadline = self.loop.call_later(self.request_timeout_s, self._expire)

    def _expire(self) -> None:
        if not self.transport.is_closing():
            self.transport.close()

    def _expire_unauthenticated(self) -> None:
        self._auth_deadline = None
        if self.scope is None or self.scope.get("memslotd.token") is None:  # no request ever passed auth
            self._expire()

    def _cancel_timers(self) -> None:
        for timer in (self._deadline, self._auth_deadline):
            if timer is not None:
                timer.cancel()
        self._deadline = self._auth_deadline = None

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self.peer is not None:
            self.scope["memslotd.peer"] = self.peer  # type: ignore[typeddict-unknown-key]
        self._arm_request_deadline()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._auth_deadline is not None and self.scope.get("memslotd.token") is not None:
            self._auth_deadline.cancel()  # authenticated: the connection may stay (idle_timeout_s still applies)
            self._auth_deadline = None

    def handle_websocket_upgrade(self) -> None:
        self._cancel_timers()  # the stream has its own rules (first-message auth within 5 s, pings)
        super().handle_websocket_upgrade()
        ws = self.transport.get_protocol()
        if self._entry is not None and isinstance(ws, GuardedWebSocket):
            ws.guard, ws.guard_entry, self._entry.protocol = self.guard, self._entry, ws
            self._entry = None
        self.parser = None  # type: ignore[assignment]  # it holds our callbacks; its last request is parsed

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        if self._entry is not None:
            self.guard.release(self._entry)
            self._entry = None
        super().connection_lost(exc)


def protocols(settings: Settings, guard: ConnectionGuard) -> tuple[type[GuardedHttp], type[GuardedWebSocket]]:
    """The protocol classes for one set of servers (class attributes carry the configuration)."""
    http = type(
        "MemslotdHttp",
        (GuardedHttp,),
        {
            "guard": guard,
            "request_timeout_s": settings.request_timeout_s,
            "auth_timeout_s": settings.tcp_auth_timeout_s,
        },
    )
    return http, GuardedWebSocket
