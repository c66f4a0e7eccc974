"""Test helpers shared by the layers: fd counting and the daemon subprocess."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.kernel_facts import in_lab

#: How much slower than this machine class the tests run: 1 natively, 15 inside the KVM lab
#: (QEMU TCG runs this suite 11-20x slower). Every functional deadline of a test is multiplied by
#: it, so a deadline means "something hangs", never "this machine is slow".
SLOWDOWN = float(os.environ.get("MEMSLOTD_TEST_SLOWDOWN") or (15 if in_lab() else 1))


def patience(seconds: float) -> float:
    """A functional deadline of ``seconds`` on this machine class, scaled for where the test runs."""
    return seconds * SLOWDOWN


def run_daemon(*args: str) -> subprocess.CompletedProcess[str]:
    """memslotd run to its end with ``args`` (a start it must refuse, or ``--help``): exit code and output."""
    return subprocess.run(
        [sys.executable, "-m", "memslotd.daemon", *args], capture_output=True, text=True, timeout=patience(30)
    )


def fd_count(pid: int | str = "self") -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


class Daemon:
    """memslotd as a subprocess on a temporary Unix socket."""

    def __init__(self, socket_path: Path, proc: subprocess.Popen[bytes], log_path: Path):
        self.socket_path = socket_path
        self.proc = proc
        self.log_path = log_path

    def client(self, **kw: object) -> httpx.Client:
        kw.setdefault("timeout", patience(30))
        return httpx.Client(transport=httpx.HTTPTransport(uds=str(self.socket_path)), base_url="http://memslotd", **kw)  # type: ignore[arg-type]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                return self.proc.wait(patience(timeout))
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def start_daemon(tmp: Path, *args: str, env: dict[str, str] | None = None, wait: bool = True) -> Daemon:
    socket_path = tmp / "run" / "memslotd.sock"
    log_path = tmp / "daemon.log"
    full_env = {**os.environ, **(env or {})}
    full_env.pop("MEMSLOTD_SOCKET", None)
    with log_path.open("wb") as log_file:  # the child keeps its own copy of the fd
        proc = subprocess.Popen(
            [sys.executable, "-m", "memslotd.daemon", "--socket", str(socket_path), *args],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=full_env,
        )
    daemon = Daemon(socket_path, proc, log_path)
    if wait:
        deadline = time.monotonic() + patience(20)
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"daemon exited with {proc.returncode}:\n{daemon.log()}")
            if socket_path.exists():
                try:
                    with daemon.client() as c:
                        if c.get("/v1/healthz").status_code == 200:
                            return daemon
                except httpx.TransportError:
                    pass
            time.sleep(0.02)
        daemon.stop(signal.SIGKILL)
        raise RuntimeError(f"daemon did not start:\n{daemon.log()}")
    return daemon


def guest_memory_mappings(pid: int | str = "self") -> int:
    """Mappings of daemon memfds and guest_memfds in a process (for leak checks)."""
    maps = Path(f"/proc/{pid}/maps").read_text()
    return sum(
        1 for line in maps.splitlines() if "memfd:memslotd" in line or "kvm-gmem" in line or "guest_memfd" in line
    )
