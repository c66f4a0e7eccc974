"""Bounded under abuse: held-open connections, a stop under load, connection churn."""

from __future__ import annotations

import contextlib
import os
import resource
import socket
import threading
import time

import httpx
import pytest
from websockets.exceptions import ConnectionClosed

from tests.e2e.test_security import ADMIN, free_port, token_file
from tests.helpers import Daemon, patience, start_daemon

MiB = 1 << 20
HALF_SENT = b"GET /v1/healthz HTTP/1.1\r\nHost: x\r\n"  # ...and then nothing


def _open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _allow_open_files(count: int) -> None:
    """Raise this process's soft fd limit to ``count`` (the lab's init leaves it at 1024, which
    the 1,400 held sockets below exceed); skip, with the reason, where the hard limit forbids it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= count:
        return
    if hard != resource.RLIM_INFINITY and hard < count:
        pytest.skip(f"the test holds {count} fds, RLIMIT_NOFILE allows {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (count, hard))


def test_half_open_connections_never_lock_out_clients_or_kernel_objects(short_tmp):
    _allow_open_files(1400 + 256)  # the half-open sockets, and room for the test's own
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
        with httpx.Client(
            base_url=f"http://127.0.0.1:{port}", headers={"authorization": f"Bearer {ADMIN}"}, timeout=patience(1.0)
        ) as tcp:
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
    d = start_daemon(
        short_tmp,
        "--tcp",
        f"127.0.0.1:{port}",
        "--token-file",
        str(token_file(short_tmp)),
        "--request-timeout-s",
        str(patience(0.5)),
        "--tcp-auth-timeout-s",
        str(patience(1)),
        "--idle-timeout-s",
        str(patience(5)),
    )
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
        threads = [
            threading.Thread(target=c.get, args=("/v1/events",), kwargs={"params": {"wait": patience(3)}})
            for c in clients
        ]
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


# httpcore leaves the socket of a refused Unix-socket connect unclosed (connect_unix_socket has no
# close on error): a client reconnecting after the servers closed trips a ResourceWarning here.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_after_sigterm_mutations_are_refused_and_every_vm_is_announced_deleted(short_tmp):
    """Concurrent creates on keep-alive connections while SIGTERM arrives: each create either
    made a VM the stream later announces deleted, or was refused 503 SHUTTING_DOWN.

    Deterministic under load: the subscriber reads all along (a stalled reader is a different
    test), SIGTERM comes once VMs exist (not after a fixed sleep), and the stream is read to
    its end however long the teardown takes."""
    import json

    from websockets.sync.client import unix_connect

    d = start_daemon(short_tmp)
    created: list[str] = []
    statuses: list[int] = []
    errors: list[BaseException] = []
    enough = threading.Event()  # VMs exist: time to stop the daemon

    def create_loop() -> None:
        try:
            with d.client(timeout=patience(60)) as c:
                while True:
                    try:
                        r = c.post("/v1/vms", json={})
                    except httpx.TransportError:
                        return  # the daemon closed the keep-alive connection at the end
                    statuses.append(r.status_code)
                    if r.status_code == 201:
                        created.append(r.json()["id"])
                        if len(created) >= 8:
                            enough.set()
                    elif r.status_code == 503:
                        assert r.json()["code"] == "SHUTTING_DOWN" and r.headers["retry-after"], r.text
                        with contextlib.suppress(httpx.ConnectError):  # unless the servers closed since
                            assert c.get("/v1/healthz").status_code == 200  # reads go on
                        return
                    else:
                        raise AssertionError(r.text)
                    if len(created) > 40:  # keep under the VM quota (64): delete as we go
                        c.delete(f"/v1/vms/{created[-1]}")
        except BaseException as exc:  # surfaced below: an assert in a thread fails the test
            errors.append(exc)

    events: list[dict] = []
    with unix_connect(str(d.socket_path), "ws://memslotd/v1/events?since_seq=0", open_timeout=patience(30)) as ws:

        def read() -> None:
            with contextlib.suppress(ConnectionClosed):
                while True:
                    events.append(json.loads(ws.recv()))

        reader = threading.Thread(target=read)
        reader.start()
        threads = [threading.Thread(target=create_loop) for _ in range(4)]
        for t in threads:
            t.start()
        assert enough.wait(patience(60)), statuses
        d.proc.send_signal(15)
        for t in threads:
            t.join(patience(60))
        reader.join(patience(60))  # the daemon closes the stream once every VM was deleted and sent
        assert not reader.is_alive()
    assert d.proc.wait(patience(30)) == 0
    assert not errors, errors
    deleted = {e["vm_id"] for e in events if e.get("type") == "vm.deleted"}
    assert created and set(created) <= deleted, set(created) - deleted
    assert 503 in statuses  # keep-alive connections were refused mutations, not served during the teardown


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def _websocket_churn(d: Daemon, cycles: int, clients: int = 4) -> None:
    """``cycles`` WebSocket connect/close cycles with zero events, ``clients`` at a time."""
    from websockets.sync.client import unix_connect

    def one(count: int) -> None:
        for _ in range(count):
            with unix_connect(str(d.socket_path), "ws://memslotd/v1/events", open_timeout=patience(30)) as ws:
                ws.recv(patience(30))  # hello

    threads = [threading.Thread(target=one, args=(cycles // clients,)) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def _gc_collected(d: Daemon) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    with d.client() as c:
        text = c.get("/metrics").text
    return sum(
        s.value
        for f in text_string_to_metric_families(text)
        if f.name == "python_gc_objects_collected"
        for s in f.samples
        if s.name.endswith("_total")
    )


def test_a_closed_websocket_leaves_nothing_for_the_garbage_collector(short_tmp):
    """Every object of a closed stream is freed when it closes, none is left in a reference
    cycle: the daemon runs the cyclic collector rarely (every 50,000 allocations), so dead
    connections in cycles piled up between its passes (about 140 objects each, zlib state
    included) and fragmented the heap."""
    d = start_daemon(short_tmp)
    try:
        _websocket_churn(d, 200)
        before = _gc_collected(d)
        _websocket_churn(d, 2000)
        collected = _gc_collected(d) - before
        assert collected < 2000, f"{collected:.0f} objects collected from cycles after 2,000 closed streams"
    finally:
        d.stop()


def test_websocket_connect_close_churn_does_not_grow_memory(short_tmp):
    """10,000 WebSocket connect/close cycles (4 clients at a time, zero events) cost <= 20 MiB
    of the daemon's RSS, with no collection forced."""
    d = start_daemon(short_tmp)
    try:
        _websocket_churn(d, 1000)  # warm-up: the allocator's pools, caches
        before = _rss_kib(d.proc.pid)
        _websocket_churn(d, 10_000)
        growth_mib = (_rss_kib(d.proc.pid) - before) / 1024
        with d.client() as c:
            assert c.get("/v1/healthz").status_code == 200
        assert growth_mib <= 20, growth_mib
    finally:
        d.stop()
