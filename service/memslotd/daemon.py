"""The ``memslotd`` process: configuration, sockets, then the servers (``memslotd.server``).

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
import sys
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from .logs import configure_logging
from .settings import Settings, command_line
from .systemd import inherited_sockets

__all__ = ["main", "bind_unix_socket", "serve"]

log = logging.getLogger("memslotd")


def bind_unix_socket(path: Path, mode: int = 0o660, group: str | None = None) -> socket.socket:
    """Bind ``path`` with ``mode`` already applied (umask during bind: no chmod race).

    The parent directory is created 0750; an existing one must belong to us (or root) and be
    writable by nobody else, or another user could swap the socket (e.g. the /tmp fallback).
    A stale socket (nobody listening) is replaced; a live one is an error.
    """
    path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
    parent = path.parent.lstat()
    if not stat.S_ISDIR(parent.st_mode) or parent.st_uid not in (os.geteuid(), 0) or parent.st_mode & 0o022:
        raise SystemExit(
            f"memslotd: {path.parent} must be a directory owned by this user or root and not "
            "writable by group or others"
        )
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


class EarlySignal:
    """Records a SIGTERM/SIGINT that arrives while uvicorn's own handlers are not installed
    (imports and loop start-up before them, clean-up after them).

    The handler only records. Raising SystemExit from it was tried and hangs the daemon now and
    then: the exception can surface inside C code that reports it as "Exception ignored in …" and
    carries on, so the stop is lost. ``serve`` and ``memslotd.server.run`` act on the record at
    points where acting is safe.
    """

    def __init__(self) -> None:
        self.received: int | None = None

    def __call__(self, sig: int, frame: FrameType | None) -> None:
        self.received = sig


def _event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - a dependency; the stdlib loop still works
        return asyncio.new_event_loop
    return uvloop.new_event_loop


def serve(settings: Settings) -> None:
    """Bind (or adopt) the sockets first, then import and start the web stack: a client that
    connects during start-up is queued by the kernel instead of refused, as with socket activation."""
    # Until uvicorn installs its handlers (and after it restores them), a SIGTERM must still
    # stop the daemon through the finally below, or the socket would be left behind.
    early = EarlySignal()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, early)
    inherited = inherited_sockets()
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
        from .api.auth import TokenStore
        from .server import run

        tokens = TokenStore.load(settings.token_file) if settings.token_file else None
        if early.received is None:  # a stop during the imports needs no server at all
            # uvloop, not the stdlib loop: uvicorn's ``loop=`` setting applies only to loops it
            # creates itself, and here the servers share the one made for them.
            with asyncio.Runner(loop_factory=_event_loop_factory()) as runner:
                runner.run(run(settings, unix, tcp, tokens, early_stop=lambda: early.received))
    finally:
        removed = []
        for path in owned:  # sockets systemd handed us are systemd's to remove
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed.append(str(path))
        log.info("memslotd stopped" + (f"; removed {', '.join(removed)}" if removed else ""))


def _export_config_path(args: list[str]) -> None:
    """The TOML file must be known before the other sources are read: hand it over by env."""
    for i, arg in enumerate(args):
        if arg.startswith("--config="):
            os.environ["MEMSLOTD_CONFIG"] = arg.split("=", 1)[1]
        elif arg == "--config" and i + 1 < len(args):
            os.environ["MEMSLOTD_CONFIG"] = args[i + 1]


def _config_problem(exc: Exception) -> str:
    """One sentence per problem, in the command line's terms (never pydantic's dump)."""
    import tomllib

    from pydantic import ValidationError

    if isinstance(exc, tomllib.TOMLDecodeError):  # only --config is parsed by pydantic-settings
        return f"{os.environ.get('MEMSLOTD_CONFIG', '--config')}: not valid TOML: {exc}"
    if not isinstance(exc, ValidationError):
        return str(exc)
    parts = []
    for error in exc.errors():
        msg = str(error.get("msg", "invalid")).removeprefix("Value error, ")
        loc = [str(p) for p in error.get("loc", ())]
        if not loc:  # a rule across options: its message names them
            parts.append(msg)
            continue
        option = f"{loc[0]} (--{loc[0].replace('_', '-')})"  # the TOML/env key and the flag
        got = error.get("input")
        shown = f" (got {got!r})" if isinstance(got, (str, int, float)) else ""
        parts.append(
            f"{option}: {msg}{shown}" if error.get("type") != "extra_forbidden" else f"unknown option {loc[0]!r}"
        )
    return "; ".join(parts)


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    _export_config_path(args)
    try:
        settings = Settings(_cli_settings_source=command_line()(args=args))  # type: ignore[call-arg]
        if settings.token_file:
            from .api.auth import TokenStore

            TokenStore.load(settings.token_file)
    except SystemExit:
        raise
    except Exception as exc:  # pydantic ValidationError, bad TOML, unreadable or unsafe token file
        raise SystemExit(f"memslotd: invalid configuration: {_config_problem(exc)}") from None
    configure_logging(settings.log_level, settings.log_format)
    if not os.path.exists("/dev/kvm"):
        raise SystemExit("memslotd: /dev/kvm is missing: load kvm (or kvm_pvm) first")
    serve(settings)


if __name__ == "__main__":
    main()
