"""The ``memslotd`` process: one process, one event loop, uvicorn servers sharing one app.

VM ioctls must come from the process that created the VM (kernel rule G1), so there
are no worker processes and no fork. Listeners:

* the API socket (Unix, 0660, in a 0750 directory) — bound here or inherited from systemd;
* optionally a read-only Unix socket (GETs and event subscriptions);
* optionally TCP, only with a token file, with TLS when configured (a second server in
  the same loop, so TLS never applies to the Unix sockets).
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import logging
import os
import signal
import socket
import stat
import struct
import sys
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from . import __version__
from .adapter import build_core
from .api.app import create_app
from .api.auth import TokenStore
from .logs import configure_logging
from .settings import Settings
from .systemd import inherited_sockets, notify

__all__ = ["main", "bind_unix_socket", "serve"]

log = logging.getLogger("memslotd")


def bind_unix_socket(path: Path, mode: int = 0o660, group: str | None = None) -> socket.socket:
    """Bind ``path`` with ``mode`` already applied (umask during bind: no chmod race).

    The parent directory is created 0750. A stale socket (nobody listening) is
    replaced; a live one is an error.
    """
    path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
    if path.exists() or path.is_symlink():
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise SystemExit(f"memslotd: {path} exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
            raise SystemExit(f"memslotd: another daemon is listening on {path}")
        except (ConnectionRefusedError, FileNotFoundError):
            path.unlink()
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o777 & ~mode)
    try:
        sock.bind(str(path))
    finally:
        os.umask(old_umask)
    if group is not None:
        os.chown(path, -1, grp.getgrnam(group).gr_gid)
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def bind_tcp(address: str) -> socket.socket:
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, int(port)))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


class PeerCredHttp(HttpToolsProtocol):
    """Adds the Unix peer's (pid, uid, gid) from SO_PEERCRED to every request's scope."""

    peer: tuple[int, int, int] | None = None

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family == socket.AF_UNIX:
            with contextlib.suppress(OSError):
                self.peer = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self.peer is not None:
            self.scope["memslotd.peer"] = self.peer  # type: ignore[typeddict-unknown-key]


class _Server(uvicorn.Server):
    """One of the servers sharing the loop. A signal stops them all; uvicorn would also
    re-raise it after shutdown, killing the process before it removes its sockets."""

    def __init__(self, config: uvicorn.Config, group: list["_Server"]):
        super().__init__(config)
        self.group = group
        group.append(self)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        for server in self.group:
            uvicorn.Server.handle_exit(server, sig, frame)
            server._captured_signals.clear()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """Graceful stop, in an order that lets subscribers hear it: stop accepting, let
        in-flight mutations finish (each VM's lock), delete every VM (``vm.deleted``
        events), give the streams a moment to flush, then close connections."""
        if self is self.group[0]:
            notify("STOPPING=1", "STATUS=stopping: deleting VMs")
            for server in self.servers:
                server.close()
            core = _core_of(self.config.loaded_app)
            if core is not None:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(core.registry.close_all(), self.config.timeout_graceful_shutdown or 10)
                for _ in range(50):  # bounded: at most 0.5 s for subscribers to drain
                    if not core.events.any_pending():
                        break
                    await asyncio.sleep(0.01)
        await super().shutdown(sockets)


def _core_of(app: Any) -> Any:
    """The MemoryCore behind uvicorn's middleware wrappers (None before the lifespan ran)."""
    while app is not None and not hasattr(app, "state"):
        app = getattr(app, "app", None)
    return getattr(getattr(app, "state", None), "core", None)


def _address(sock: socket.socket) -> Any:
    name = sock.getsockname()
    return (name, None) if isinstance(name, str) else (str(name[0]), int(name[1]))


async def _serve(settings: Settings, unix: dict[socket.socket, str], tcp: socket.socket | None,
                 tokens: TokenStore | None) -> None:
    listeners = {_address(s): kind for s, kind in unix.items()}
    if tcp is not None:
        listeners[_address(tcp)] = "tcp"
    app = create_app(settings, lambda: build_core(settings), listeners=listeners, default_listener="tcp", tokens=tokens)
    common: dict[str, Any] = dict(loop="uvloop", ws="websockets-sansio", log_level=settings.log_level, access_log=False,
                                  timeout_graceful_shutdown=10, ws_ping_interval=20.0, ws_ping_timeout=20.0, proxy_headers=False,
                                  log_config=None)
    group: list[_Server] = []
    primary = _Server(uvicorn.Config(app, http=PeerCredHttp, lifespan="on", **common), group)
    tasks = [asyncio.create_task(primary.serve(sockets=list(unix)))]
    while not primary.started and not tasks[0].done():
        await asyncio.sleep(0.005)
    if tcp is not None and primary.started:
        tls: dict[str, Any] = {}
        if settings.tls_cert:
            tls = {"ssl_certfile": str(settings.tls_cert), "ssl_keyfile": str(settings.tls_key)}
            if settings.tls_client_ca:
                import ssl

                tls.update(ssl_ca_certs=str(settings.tls_client_ca), ssl_cert_reqs=ssl.CERT_REQUIRED)
        secondary = _Server(uvicorn.Config(app, http="httptools", lifespan="off", **common, **tls), group)
        tasks.append(asyncio.create_task(secondary.serve(sockets=[tcp])))
    if primary.started:
        notify("READY=1", f"STATUS=serving on {', '.join(str(a[0]) for a in listeners)}", f"MAINPID={os.getpid()}")
        log.info("memslotd %s ready", __version__, extra={"listeners": [f"{k}:{a[0]}" for a, k in listeners.items()]})
    await asyncio.gather(*tasks)


def _exit_on_signal(sig: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def serve(settings: Settings) -> None:
    # Until uvicorn installs its handlers (and after it restores them), a SIGTERM must still
    # unwind through the finally below, or the socket would be left behind.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _exit_on_signal)
    inherited = inherited_sockets()
    tokens = TokenStore.load(settings.token_file) if settings.token_file else None
    owned: list[Path] = []
    unix: dict[socket.socket, str] = {}
    try:
        if "api" in inherited:
            unix[inherited["api"]] = "unix"
        else:
            unix[bind_unix_socket(settings.socket, settings.socket_mode, settings.socket_group)] = "unix"
            owned.append(settings.socket)
        if "api-ro" in inherited:
            unix[inherited["api-ro"]] = "unix-ro"
        elif settings.readonly_socket is not None:
            unix[bind_unix_socket(settings.readonly_socket, settings.socket_mode, settings.socket_group)] = "unix-ro"
            owned.append(settings.readonly_socket)
        tcp = bind_tcp(settings.tcp) if settings.tcp else None
        asyncio.run(_serve(settings, unix, tcp, tokens))
    finally:
        for path in owned:  # sockets systemd handed us are systemd's to remove
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        log.info("memslotd stopped; socket removed")


def _export_config_path(args: list[str]) -> None:
    """The TOML file must be known before the other sources are read: hand it over by env."""
    for i, arg in enumerate(args):
        if arg.startswith("--config="):
            os.environ["MEMSLOTD_CONFIG"] = arg.split("=", 1)[1]
        elif arg == "--config" and i + 1 < len(args):
            os.environ["MEMSLOTD_CONFIG"] = args[i + 1]


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    _export_config_path(args)
    try:
        settings = Settings(_cli_parse_args=args, _cli_prog_name="memslotd")  # type: ignore[call-arg]
        if settings.token_file:
            TokenStore.load(settings.token_file)
    except SystemExit:
        raise
    except Exception as exc:  # pydantic ValidationError, bad TOML, unreadable or unsafe token file
        raise SystemExit(f"memslotd: invalid configuration:\n{exc}") from None
    configure_logging(settings.log_level, settings.log_format)
    if not os.path.exists("/dev/kvm"):
        raise SystemExit("memslotd: /dev/kvm is missing: load kvm (or kvm_pvm) first")
    serve(settings)


if __name__ == "__main__":
    main()
