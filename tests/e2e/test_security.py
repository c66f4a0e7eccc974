"""Safe by default: sockets, read-only listener, TCP tokens and scopes, TLS, Origin, audit."""

from __future__ import annotations

import hashlib
import json
import os
import ssl
import subprocess
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect, unix_connect

from memslotd.client import Client
from tests.helpers import Daemon, patience, run_daemon, start_daemon

MiB = 1 << 20
ADMIN, READER = "admin-token-0123456789", "reader-token-0123456789"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def token_file(tmp: Path, mode: int = 0o600) -> Path:
    path = tmp / "tokens.toml"
    path.write_text(f'''
[[tokens]]
name = "orchestrator"
scopes = ["admin"]
token = "{ADMIN}"

[[tokens]]
name = "dashboard"
scopes = ["read", "events"]
sha256 = "{hashlib.sha256(READER.encode()).hexdigest()}"
''')
    path.chmod(mode)
    return path


def audit_lines(daemon) -> list[dict]:
    out = []
    for line in daemon.log().splitlines():
        if line.startswith("{") and '"memslotd.audit"' in line:
            out.append(json.loads(line))
    return out


def test_read_only_socket_serves_reads_and_events_but_refuses_mutations(short_tmp):
    ro = short_tmp / "ro" / "ro.sock"
    d = start_daemon(short_tmp, "--readonly-socket", str(ro))
    try:
        assert oct(ro.stat().st_mode & 0o777) == oct(0o660)
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(ro)), base_url="http://memslotd") as c:
            assert c.get("/v1/vms").status_code == 200
            r = c.post("/v1/vms", json={})
            assert r.status_code == 403 and r.json()["code"] == "READ_ONLY_LISTENER"
            assert c.get("/v1/events", params={"wait": 0}).status_code == 200
        with unix_connect(str(ro), "ws://memslotd/v1/events") as ws:
            assert json.loads(ws.recv(5))["type"] == "hello"
        with d.client() as c:
            assert c.post("/v1/vms", json={}).status_code == 201
        lines = audit_lines(d)
        denied = [a for a in lines if a["status"] == 403]
        assert denied and denied[0]["listener"] == "unix-ro" and denied[0]["uid"] == os.getuid() and "pid" in denied[0]
        created = [a for a in lines if a["status"] == 201]
        assert created and created[0]["listener"] == "unix" and created[0]["pid"] > 0
    finally:
        d.stop()
    assert not ro.exists()


def test_tcp_refuses_to_start_without_a_token_file(short_tmp):
    r = run_daemon("--socket", str(short_tmp / "s.sock"), "--tcp", f"127.0.0.1:{free_port()}")
    assert r.returncode != 0 and "needs --token-file" in r.stderr


def test_token_file_readable_by_others_is_refused(short_tmp):
    r = run_daemon(
        "--socket",
        str(short_tmp / "s.sock"),
        "--tcp",
        f"127.0.0.1:{free_port()}",
        "--token-file",
        str(token_file(short_tmp, 0o644)),
    )
    assert r.returncode != 0 and "chmod 600" in r.stderr


@pytest.fixture
def tcp_daemon(short_tmp):
    port = free_port()
    d = start_daemon(
        short_tmp,
        "--tcp",
        f"127.0.0.1:{port}",
        "--token-file",
        str(token_file(short_tmp)),
        "--allowed-origins",
        '["https://dash.example"]',
    )
    yield d, f"http://127.0.0.1:{port}", port
    d.stop()


def test_tcp_refuses_a_missing_token_401_a_missing_scope_or_a_foreign_origin_403_and_audits_each(tcp_daemon):
    d, url, _ = tcp_daemon
    with httpx.Client(base_url=url) as c:
        r = c.get("/v1/vms")
        assert (
            r.status_code == 401
            and r.json()["code"] == "UNAUTHORIZED"
            and "bearer" in r.headers["www-authenticate"].lower()
        )
        assert c.get("/v1/vms", headers={"authorization": "Bearer wrong-token-xxxxxxxx"}).status_code == 401
        reader = {"authorization": f"Bearer {READER}"}
        assert c.get("/v1/vms", headers=reader).status_code == 200
        r = c.post("/v1/vms", json={}, headers=reader)
        assert r.status_code == 403 and r.json()["code"] == "INSUFFICIENT_SCOPE"
        admin = {"authorization": f"Bearer {ADMIN}"}
        assert c.post("/v1/vms", json={}, headers=admin).status_code == 201
        r = c.get("/v1/vms", headers={**admin, "origin": "https://evil.example"})
        assert r.status_code == 403 and r.json()["code"] == "ORIGIN_NOT_ALLOWED"
        assert c.get("/v1/vms", headers={**admin, "origin": "https://dash.example"}).status_code == 200
    statuses = sorted(a["status"] for a in audit_lines(d))
    assert statuses.count(401) == 2 and statuses.count(403) == 2 and 201 in statuses
    assert any(a.get("token") == "orchestrator" and a["status"] == 201 for a in audit_lines(d))


def test_a_browser_websocket_authenticates_by_subprotocol_or_first_message_and_a_foreign_origin_is_refused(tcp_daemon):
    _, _, port = tcp_daemon
    ws_url = f"ws://127.0.0.1:{port}/v1/events"
    # token in the subprotocol (browsers cannot set headers), Origin checked
    with connect(ws_url, subprotocols=["memslotd.v1", f"memslotd.token.{READER}"], origin="https://dash.example") as ws:
        assert ws.subprotocol == "memslotd.v1" and json.loads(ws.recv(5))["type"] == "hello"
    # token in the first message
    with connect(ws_url, origin="https://dash.example") as ws:
        ws.send(json.dumps({"type": "auth", "token": READER}))
        assert json.loads(ws.recv(5))["type"] == "hello"
    with connect(ws_url) as ws:
        ws.send(json.dumps({"type": "auth", "token": "nope-nope-nope-nope"}))
        with pytest.raises(ConnectionClosed):
            ws.recv(5)
        assert ws.close_code == 4401
    with pytest.raises(InvalidStatus):  # cross-site WebSocket hijacking
        connect(ws_url, subprotocols=[f"memslotd.token.{READER}"], origin="https://evil.example")


def _make_certs(tmp: Path) -> dict[str, Path]:
    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=tmp)

    run(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=memslotd-test-ca",
    )
    for name, cn in (("server", "127.0.0.1"), ("client", "rig")):
        run(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
            "-subj",
            f"/CN={cn}",
        )
        (tmp / f"{name}.ext").write_text("subjectAltName=IP:127.0.0.1\n")
        run(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            f"{name}.pem",
            "-days",
            "2",
            "-extfile",
            f"{name}.ext",
        )
    return {n: tmp / n for n in ("ca.pem", "server.pem", "server.key", "client.pem", "client.key")}


def start_mtls_daemon(tmp: Path) -> tuple[Daemon, int, dict[str, Path]]:
    """A daemon on TCP with tokens and mutual TLS (and 0.2 s bookmarks): (daemon, port, certs)."""
    certs = _make_certs(tmp)
    port = free_port()
    tls = ["--tls-cert", str(certs["server.pem"]), "--tls-key", str(certs["server.key"])]
    tls += ["--tls-client-ca", str(certs["ca.pem"])]
    tcp = ["--tcp", f"127.0.0.1:{port}", "--token-file", str(token_file(tmp))]
    return start_daemon(tmp, *tcp, *tls, "--event-bookmark-interval-s", "0.2"), port, certs


def test_tls_tcp_needs_a_client_certificate_refuses_plain_http_and_the_unix_socket_stays_plain(short_tmp):
    d, port, certs = start_mtls_daemon(short_tmp)
    try:
        ctx = ssl.create_default_context(cafile=str(certs["ca.pem"]))
        ctx.load_cert_chain(str(certs["client.pem"]), str(certs["client.key"]))
        with httpx.Client(base_url=f"https://127.0.0.1:{port}", verify=ctx) as c:
            assert c.get("/v1/vms", headers={"authorization": f"Bearer {READER}"}).status_code == 200
        no_client_cert = ssl.create_default_context(cafile=str(certs["ca.pem"]))
        with httpx.Client(base_url=f"https://127.0.0.1:{port}", verify=no_client_cert) as c:
            with pytest.raises(httpx.TransportError):
                c.get("/v1/vms", headers={"authorization": f"Bearer {READER}"})
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as c:  # plain HTTP to a TLS port
            with pytest.raises(httpx.TransportError):
                c.get("/v1/vms")
        with d.client() as c:  # the Unix socket stays plain
            assert c.get("/v1/healthz").status_code == 200
        # memslotd.client, REST and event stream alike: the CA's path, or verify=False (as httpx)
        client_cert = (str(certs["client.pem"]), str(certs["client.key"]))
        for verify in (str(certs["ca.pem"]), False):
            with Client(url=f"https://127.0.0.1:{port}", token=READER, verify=verify, cert=client_cert) as cl:
                assert cl.list_vms().items == []
                stream = cl.events(bookmarks=True)
                first = next(iter(stream))
                stream.close()
                assert first["type"] == "bookmark" and stream.reconnects == 0
    finally:
        d.stop()


def test_the_socket_belongs_to_the_configured_group(short_tmp):
    import grp

    group = grp.getgrgid(os.getgroups()[-1] if os.getgroups() else os.getgid()).gr_name
    d = start_daemon(short_tmp, "--socket-group", group)
    try:
        assert d.socket_path.stat().st_gid == grp.getgrnam(group).gr_gid
    finally:
        d.stop()


def multi_gib_within_reach() -> int:
    """Up to 6 GiB (a punch that long is surely in flight at SIGTERM), scaled down to a quarter
    of what this machine (or the lab guest) has available, so the test never OOMs a small one."""
    meminfo = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    available = int(meminfo["MemAvailable"].split()[0]) * 1024
    return max(256 << 20, min(6 << 30, available // 4)) & ~((2 << 20) - 1)


def test_tcp_subscribers_also_hear_the_graceful_stop(short_tmp):
    """A mutation is in flight at SIGTERM (a multi-GiB punch), so the VM teardown and its
    vm.deleted necessarily come later than the TCP server's own shutdown would close its
    WebSockets: they must stay open until the primary's teardown is done."""
    import signal
    import threading
    import time

    port = free_port()
    d = start_daemon(short_tmp, "--tcp", f"127.0.0.1:{port}", "--token-file", str(token_file(short_tmp)))
    size = multi_gib_within_reach()
    with d.client() as c:
        vm = c.post("/v1/vms", json={}).json()["id"]
        g = c.post(f"/v1/vms/{vm}/guest-memfds", json={"size": size}).json()["id"]
        c.post(f"/v1/vms/{vm}/guest-memfds/{g}/allocate", json={"offset": 0, "length": size})
        c.put(
            f"/v1/vms/{vm}/memslots/0",
            json={"guest_phys_addr": 1 << 40, "memory_size": size, "private": {"guest_memfd_id": g}},
        )
    seen: list[str] = []
    ready = threading.Event()

    def listen() -> None:
        with connect(
            f"ws://127.0.0.1:{port}/v1/events", additional_headers={"Authorization": f"Bearer {READER}"}
        ) as ws:
            ready.set()
            try:
                while True:
                    seen.append(json.loads(ws.recv(30))["type"])
            except Exception:
                pass

    def convert() -> None:
        with d.client() as c:
            c.post(f"/v1/vms/{vm}/memory/convert", json={"guest_phys_addr": 1 << 40, "size": size, "to": "shared"})

    listener = threading.Thread(target=listen)
    listener.start()
    ready.wait(patience(10))
    converter = threading.Thread(target=convert)
    converter.start()
    while "memory.invalidate_start" not in seen:  # the punch has started
        time.sleep(0.001)
    assert d.stop(signal.SIGTERM) == 0
    converter.join(patience(30))
    listener.join(patience(30))
    assert seen.index("memory.converted") < seen.index("vm.deleted"), seen  # in-flight work finished first


def test_healthz_answers_on_tcp_without_a_token_and_reveals_no_state(tcp_daemon):
    _, url, _ = tcp_daemon
    with httpx.Client(base_url=url) as c:
        c.post("/v1/vms", json={}, headers={"authorization": f"Bearer {ADMIN}"})
        anonymous = c.get("/v1/healthz")
        assert anonymous.status_code == 200 and set(anonymous.json()) == {"status", "boot_id"}
        assert c.head("/v1/healthz").status_code == 200
        assert c.get("/v1/healthz", headers={"authorization": f"Bearer {READER}"}).json()["vms"] == 1
        assert c.get("/v1/version").status_code == 401  # everything else still needs a token


def test_cors_preflight_needs_no_token_and_responses_carry_cors_headers(tcp_daemon):
    _, url, _ = tcp_daemon
    origin = {"origin": "https://dash.example"}
    with httpx.Client(base_url=url) as c:
        pre = c.options(
            "/v1/vms",
            headers={
                **origin,
                "access-control-request-method": "POST",
                "access-control-request-headers": "authorization, content-type",
            },
        )
        assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == "https://dash.example"
        assert "POST" in pre.headers["access-control-allow-methods"]
        assert "authorization" in pre.headers["access-control-allow-headers"].lower()
        r = c.get("/v1/vms", headers={**origin, "authorization": f"Bearer {READER}"})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://dash.example"
        assert "memslotd-boot-id" in r.headers["access-control-expose-headers"].lower()
        denied = c.get("/v1/vms", headers=origin)  # a browser can read why it was refused
        assert denied.status_code == 401 and denied.headers["access-control-allow-origin"] == "https://dash.example"
        evil = c.options("/v1/vms", headers={"origin": "https://evil.example", "access-control-request-method": "GET"})
        assert "access-control-allow-origin" not in evil.headers and evil.status_code in (401, 403)
        plain = c.options("/v1/vms", headers={"authorization": f"Bearer {READER}"})
        assert plain.status_code == 204 and plain.headers["allow"] == "GET, HEAD, OPTIONS, POST"
