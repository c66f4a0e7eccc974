"""The ``memslotd`` process: one process, one event loop, one uvicorn server.

VM ioctls must come from the process that created the VM (kernel rule G1), so
there are no worker processes and no fork. The daemon binds its Unix socket
itself (mode 0660 from the start, in a 0750 directory) or adopts a listening
socket handed over by systemd.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import logging
import os
import socket
import stat
import sys
from pathlib import Path
from types import FrameType

import uvicorn

from . import __version__
from .adapter import build_core
from .api.app import create_app
from .settings import Settings

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


class _Server(uvicorn.Server):
    """uvicorn re-raises SIGTERM/SIGINT after a graceful shutdown, which would kill the
    process before it removes its socket; a clean exit (status 0) is what systemd expects."""

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        self._captured_signals.clear()


def serve(settings: Settings, sock: socket.socket) -> None:
    app = create_app(settings, lambda: build_core(settings))
    config = uvicorn.Config(app, loop="uvloop", http="httptools", ws="websockets-sansio", lifespan="on",
                            log_level=settings.log_level, access_log=False, timeout_graceful_shutdown=10,
                            ws_ping_interval=20.0, ws_ping_timeout=20.0)
    server = _Server(config)
    asyncio.run(server.serve(sockets=[sock]))


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
    except Exception as exc:  # pydantic ValidationError, bad TOML, unreadable file
        raise SystemExit(f"memslotd: invalid configuration:\n{exc}") from None
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not os.path.exists("/dev/kvm"):
        raise SystemExit("memslotd: /dev/kvm is missing: load kvm (or kvm_pvm) first")
    sock = bind_unix_socket(settings.socket, settings.socket_mode, settings.socket_group)
    log.info("memslotd %s listening on %s", __version__, settings.socket)
    try:
        serve(settings, sock)
    finally:
        sock.close()
        with contextlib.suppress(FileNotFoundError):
            settings.socket.unlink()
        log.info("memslotd stopped; socket removed")


if __name__ == "__main__":
    main()
