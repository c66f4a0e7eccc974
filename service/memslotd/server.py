"""The servers: uvicorn instances sharing one app and one event loop (imported after the
sockets are bound, see ``memslotd.daemon.serve``)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import socket
from collections.abc import Callable
from types import FrameType
from typing import Any

import uvicorn

from . import __version__
from .api.app import create_app
from .api.auth import TokenStore
from .connections import ConnectionGuard, GuardedWebSocket, fd_budget, protocols
from .kernel_adapter import build_core
from .settings import Settings
from .systemd import notify

__all__ = ["run"]

log = logging.getLogger("memslotd")


class _Server(uvicorn.Server):
    """One of the servers sharing the loop. A signal stops them all; uvicorn would also
    re-raise it after shutdown, killing the process before it removes its sockets."""

    def __init__(self, config: uvicorn.Config, group: list[_Server]):
        super().__init__(config)
        self.group = group
        self.teardown_done = asyncio.Event()
        group.append(self)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        for server in self.group:
            uvicorn.Server.handle_exit(server, sig, frame)
            server._captured_signals.clear()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """Graceful stop, in an order that lets every subscriber hear it: all servers stop
        accepting; the primary lets in-flight mutations finish (each VM's lock), deletes every VM
        (``vm.deleted`` events) and gives the streams a moment to flush; only then does any
        server close its connections."""
        for server in self.servers:
            server.close()
        primary = self.group[0]
        if self is primary:
            notify("STOPPING=1", "STATUS=stopping: deleting VMs")
            core = _core_of(self.config.loaded_app)
            try:
                if core is not None:
                    core.closing = True  # from here mutations answer 503 SHUTTING_DOWN; reads go on
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(core.vms.close_all(), self.config.timeout_graceful_shutdown or 10)
                    for _ in range(50):  # bounded: at most 0.5 s for subscribers to drain
                        if not core.events.any_pending():
                            break
                        await asyncio.sleep(0.01)
                    core.events.end()  # each stream sends what is left, then closes with 1012
            finally:
                self.teardown_done.set()
        else:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(primary.teardown_done.wait(), (self.config.timeout_graceful_shutdown or 10) + 1)
        await self._streams_closed(2.0)
        await super().shutdown(sockets)

    async def _streams_closed(self, timeout: float) -> None:
        """Wait (bounded) for this server's event streams to finish their closing handshakes."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline and any(isinstance(c, GuardedWebSocket) for c in self.server_state.connections):
            await asyncio.sleep(0.01)


def _core_of(app: Any) -> Any:
    """The MemoryCore behind uvicorn's middleware wrappers (None before the lifespan ran)."""
    while app is not None and not hasattr(app, "state"):
        app = getattr(app, "app", None)
    return getattr(getattr(app, "state", None), "core", None)


def _limits_of(server: uvicorn.Server, per_listener: int, fd_reserve: int, settings: Settings) -> dict[str, Any]:
    """What the ready line reports: the byte quotas as derived from this host, and the caps."""
    core = _core_of(server.config.loaded_app)
    limits: dict[str, Any] = {}
    if core is not None:
        limits.update(
            max_bytes_total=core.limits.max_bytes_total,
            max_bytes_per_vm=core.limits.max_bytes_per_vm,
            memory_reserve_bytes=core.limits.memory_reserve_bytes,
        )
    limits.update(
        max_connections=per_listener, max_connections_per_peer=settings.max_connections_per_peer, fd_reserve=fd_reserve
    )
    return limits


def _tune_garbage_collector() -> None:
    """What start-up made (modules, the app, the core) lives as long as the process: freeze it
    out of the collector's scans. And collect the young generation every 50,000 allocations
    instead of 700: a 4,096-op batch makes ~10 objects per op, and at the default threshold the
    collector's passes (which also walk the retained events) took 10 % of a batch's time.
    Memory cost: at most 50,000 young container objects (a few MiB) between passes."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)


def _address(sock: socket.socket) -> Any:
    name = sock.getsockname()
    return (name, None) if isinstance(name, str) else (str(name[0]), int(name[1]))


async def run(
    settings: Settings,
    unix: dict[socket.socket, str],
    tcp: socket.socket | None,
    tokens: TokenStore | None,
    early_stop: Callable[[], int | None] = lambda: None,
) -> None:
    """Serve until a signal. ``early_stop`` reports a signal that arrived before uvicorn's
    handlers were in place; it is handed to the servers once they are (after the first yield)."""
    listeners = {_address(s): kind for s, kind in unix.items()}
    if tcp is not None:
        listeners[_address(tcp)] = "tcp"
    app = create_app(settings, lambda: build_core(settings), listeners=listeners, default_listener="tcp", tokens=tokens)
    fd_reserve, per_listener = fd_budget(settings, len(listeners))
    guard = ConnectionGuard(per_listener, settings.max_connections_per_peer)
    app.state.connection_guard = guard
    http, ws = protocols(settings, guard)
    common: dict[str, Any] = dict(
        loop="uvloop",
        ws=ws,
        log_level=settings.log_level,
        access_log=False,
        timeout_graceful_shutdown=10,
        ws_ping_interval=settings.ws_ping_interval_s,
        ws_ping_timeout=settings.ws_ping_timeout_s,
        proxy_headers=False,
        log_config=None,
        timeout_keep_alive=settings.idle_timeout_s,
        http=http,
    )
    group: list[_Server] = []
    primary = _Server(uvicorn.Config(app, lifespan="on", **common), group)
    tasks = [asyncio.create_task(primary.serve(sockets=list(unix)))]

    def forward_early_stop() -> None:
        sig = early_stop()
        if sig is not None and not primary.should_exit:
            primary.handle_exit(sig, None)

    while not primary.started and not tasks[0].done():
        await asyncio.sleep(0.005)  # serve() has entered capture_signals once this returns
        forward_early_stop()
    forward_early_stop()
    if tcp is not None and primary.started:
        tls: dict[str, Any] = {}
        if settings.tls_cert:
            tls = {"ssl_certfile": str(settings.tls_cert), "ssl_keyfile": str(settings.tls_key)}
            if settings.tls_client_ca:
                import ssl

                tls.update(ssl_ca_certs=str(settings.tls_client_ca), ssl_cert_reqs=ssl.CERT_REQUIRED)
        secondary = _Server(uvicorn.Config(app, lifespan="off", **common, **tls), group)
        secondary.should_exit = primary.should_exit  # a signal before it joined the group
        tasks.append(asyncio.create_task(secondary.serve(sockets=[tcp])))
    if primary.started:
        _tune_garbage_collector()
        notify("READY=1", f"STATUS=serving on {', '.join(str(a[0]) for a in listeners)}", f"MAINPID={os.getpid()}")
        limits = _limits_of(primary, per_listener, fd_reserve, settings)
        log.info(
            "memslotd %s ready; %s",
            __version__,
            ", ".join(f"{k}={v}" for k, v in limits.items()),
            extra={"listeners": [f"{k}:{a[0]}" for a, k in listeners.items()], "limits": limits},
        )
    await asyncio.gather(*tasks)
