"""Bounded under abuse: held-open connections and a stop under load."""

from __future__ import annotations

import os
import socket
import threading
import time

import httpx

from tests.e2e.test_security import ADMIN, free_port, token_file
from tests.helpers import patience, start_daemon

MiB = 1 << 20
HALF_SENT = b"GET /v1/healthz HTTP/1.1\r\nHost: x\r\n"  # ...and then nothing


def _open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_half_open_connections_never_lock_out_clients_or_kernel_objects(short_tmp):
    port = free_port()
    d = start_daemon(short_tmp, "--tcp", f"127.0.0.1:{port}", "--token-file", str(token_file(short_tmp)))
    held: list[socket.socket] = []
    try:
        for _ in range(700):
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(HALF_SENT)
            held.append(s)
        for _ in range(700):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(str(d.socket_path))
            s.sendall(HALF_SENT)
            held.append(s)
        started = time.monotonic()
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"authorization": f"Bearer {ADMIN}"},
                          timeout=patience(1.0)) as tcp:
            assert tcp.get("/v1/healthz").status_code == 200
        with d.client(timeout=patience(1.0)) as c:
            vm = c.post("/v1/vms", json={}).json()["id"]
            r = c.post(f"/v1/vms/{vm}/guest-memfds", json={"size": 2 * MiB})
            assert r.status_code == 201, r.text
        assert time.monotonic() - started < patience(4)  # each call above had 1 s (a generous deadline, not a timing)
        # the daemon holds at most its caps of them, not 1,400
        assert _open_fds(d.proc.pid) < 2 * 256 + 100
    finally:
        for s in held:
            s.close()
        d.stop()


def test_half_sent_requests_and_unauthenticated_tcp_connections_time_out(short_tmp):
    port = free_port()
    d = start_daemon(short_tmp, "--tcp", f"127.0.0.1:{port}", "--token-file", str(token_file(short_tmp)),
                     "--request-timeout-s", str(patience(0.5)), "--tcp-auth-timeout-s", str(patience(1)),
                     "--idle-timeout-s", str(patience(5)))
    try:
        half = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        half.connect(str(d.socket_path))
        half.sendall(HALF_SENT)
        silent = socket.create_connection(("127.0.0.1", port))
        unauth = socket.create_connection(("127.0.0.1", port))
        unauth.sendall(b"GET /v1/vms HTTP/1.1\r\nHost: x\r\n\r\n")  # answered 401, closed after 1 s (healthz is public)
        for s in (half, silent, unauth):
            s.settimeout(patience(10))
        started = time.monotonic()
        assert half.recv(1024) == b"" and time.monotonic() - started < patience(5)  # closed by the daemon
        assert silent.recv(1024) == b""
        data = b""
        while chunk := unauth.recv(65536):
            data += chunk
        assert data.startswith(b"HTTP/1.1 401") and time.monotonic() - started < patience(4)  # not the 5 s idle timeout
        for s in (half, silent, unauth):
            s.close()
    finally:
        d.stop()


def test_over_the_cap_busy_connections_are_answered_503_at_once(short_tmp):
    """When every connection of a peer is busy (long-polls), the next one gets 503 at once."""
    d = start_daemon(short_tmp, "--max-connections-per-peer", "4")
    clients = [d.client() for _ in range(4)]
    try:
        threads = [threading.Thread(target=c.get, args=("/v1/events",), kwargs={"params": {"wait": patience(3)}})
                   for c in clients]
        for t in threads:
            t.start()
        time.sleep(patience(0.5))
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(patience(5))
        s.connect(str(d.socket_path))
        data = s.recv(65536)
        s.close()
        assert data.startswith(b"HTTP/1.1 503") and b"TOO_MANY_CONNECTIONS" in data
        for t in threads:
            t.join(patience(10))
    finally:
        for c in clients:
            c.close()
        d.stop()


def test_after_sigterm_mutations_are_refused_and_every_vm_is_announced_deleted(short_tmp):
    """Concurrent creates on keep-alive connections while SIGTERM arrives: each create either
    made a VM the stream later announces deleted, or was refused 503 SHUTTING_DOWN."""
    import json

    from websockets.sync.client import unix_connect

    d = start_daemon(short_tmp)
    created: list[str] = []
    statuses: list[int] = []
    stop = threading.Event()

    def create_loop() -> None:
        with d.client(timeout=patience(10)) as c:
            while not stop.is_set():
                try:
                    r = c.post("/v1/vms", json={})
                except httpx.TransportError:
                    return
                statuses.append(r.status_code)
                if r.status_code == 201:
                    created.append(r.json()["id"])
                elif r.status_code == 503:
                    assert r.json()["code"] == "SHUTTING_DOWN" and r.headers["retry-after"], r.text
                    assert c.get("/v1/healthz").status_code == 200  # reads go on
                    return
                if len(created) > 40:  # keep under the VM quota (64): delete as we go
                    c.delete(f"/v1/vms/{created[-1]}")

    deleted: set[str] = set()
    with unix_connect(str(d.socket_path), "ws://memslotd/v1/events?since_seq=0", open_timeout=patience(10)) as ws:
        threads = [threading.Thread(target=create_loop) for _ in range(4)]
        for t in threads:
            t.start()
        time.sleep(patience(1.0))
        d.proc.send_signal(15)
        for t in threads:
            t.join(20)
        stop.set()
        try:
            while True:
                e = json.loads(ws.recv(patience(10)))
                if e.get("type") == "vm.deleted":
                    deleted.add(e["vm_id"])
        except Exception:
            pass  # the daemon closed the stream once every VM was deleted
    assert d.proc.wait(20) == 0
    assert created and set(created) <= deleted, set(created) - deleted
    assert 503 in statuses  # keep-alive connections were refused mutations, not served during the teardown
