"""systemd integration without libsystemd: sd_notify and socket activation."""

from __future__ import annotations

import os
import socket

__all__ = ["notify", "inherited_sockets"]

SD_LISTEN_FDS_START = 3


def notify(*assignments: str) -> bool:
    """Send ``READY=1``, ``STOPPING=1``, ``STATUS=…`` to $NOTIFY_SOCKET; False when not under systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
        s.sendto("\n".join(assignments).encode(), address)
    return True


def inherited_sockets() -> dict[str, socket.socket]:
    """Listening sockets passed by systemd (LISTEN_PID/LISTEN_FDS/LISTEN_FDNAMES), by name.

    Unnamed sockets are called ``api`` (the first) and ``fd<N>``. The variables are
    removed so that children never see them.
    """
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        return {}
    count = int(os.environ.get("LISTEN_FDS", "0"))
    names = [n for n in os.environ.get("LISTEN_FDNAMES", "").split(":") if n]
    for var in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(var, None)
    out: dict[str, socket.socket] = {}
    for i in range(count):
        fd = SD_LISTEN_FDS_START + i
        os.set_inheritable(fd, False)
        name = names[i] if i < len(names) else ("api" if i == 0 else f"fd{fd}")
        sock = socket.socket(fileno=fd)
        sock.setblocking(False)
        out[name] = sock
    return out
