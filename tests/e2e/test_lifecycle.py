"""Operations: socket activation, sd_notify, graceful SIGTERM, fd exhaustion, configuration."""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest
from websockets.sync.client import unix_connect

from tests.helpers import Daemon, fd_count, patience, run_daemon, start_daemon

MiB = 1 << 20


def _wait_healthy(path, proc, timeout: float = 20) -> None:
    deadline = time.monotonic() + patience(timeout)
    while time.monotonic() < deadline:
        assert proc.poll() is None, "daemon exited"
        if not path.exists():  # httpcore leaks the socket of a failed Unix connect
            time.sleep(0.05)
            continue
        try:
            with httpx.Client(transport=httpx.HTTPTransport(uds=str(path)), base_url="http://m") as c:
                if c.get("/v1/healthz").status_code == 200:
                    return
        except httpx.TransportError:
            time.sleep(0.05)
    raise AssertionError("daemon did not become healthy")


@pytest.mark.skipif(shutil.which("systemd-socket-activate") is None, reason="systemd-socket-activate not installed")
def test_an_inherited_systemd_socket_is_served_instead_of_binding_one(short_tmp):
    path = short_tmp / "activated.sock"
    proc = subprocess.Popen(
        [
            "systemd-socket-activate",
            "-l",
            str(path),
            "--fdname=api",
            sys.executable,
            "-m",
            "memslotd.daemon",
            "--socket",
            str(short_tmp / "unused" / "x.sock"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(200):  # systemd-socket-activate binds first and starts the daemon on the first connection
            if path.exists():
                break
            time.sleep(0.05)
        _wait_healthy(path, proc)
        assert not (short_tmp / "unused" / "x.sock").exists()  # it adopted the fd instead of binding
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(patience(20))


def test_sd_notify_hears_ready_once_serving_and_stopping_on_sigterm(short_tmp):
    notify_path = short_tmp / "notify"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(notify_path))
    listener.settimeout(20)
    d = start_daemon(short_tmp, env={"NOTIFY_SOCKET": str(notify_path)})
    try:
        ready = listener.recv(4096).decode()
        assert "READY=1" in ready and "STATUS=serving on" in ready and f"MAINPID={d.proc.pid}" in ready
    finally:
        d.stop()
        assert "STOPPING=1" in listener.recv(4096).decode()
        listener.close()


def test_sigterm_announces_every_vm_deleted_then_closes(short_tmp):
    d = start_daemon(short_tmp)
    with d.client() as c:
        vms = {c.post("/v1/vms", json={}).json()["id"] for _ in range(3)}
        c.post(f"/v1/vms/{next(iter(vms))}/guest-memfds", json={"size": 2 * MiB})
    seen: list[dict] = []

    def listen() -> None:
        with unix_connect(str(d.socket_path), "ws://m/v1/events") as ws:
            try:
                while True:
                    seen.append(json.loads(ws.recv(20)))
            except Exception:
                pass

    t = threading.Thread(target=listen)
    t.start()
    time.sleep(0.3)
    assert d.stop(signal.SIGTERM) == 0
    t.join(patience(20))
    assert {e["vm_id"] for e in seen if e["type"] == "vm.deleted"} == vms
    assert any(e["type"] == "guest_memfd.deleted" for e in seen)
    assert not d.socket_path.exists()


def test_fd_exhaustion_is_503_with_errno_and_leaks_nothing(short_tmp):
    def low_nofile() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))

    log = short_tmp / "daemon.log"
    sock = short_tmp / "run" / "memslotd.sock"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "memslotd.daemon", "--socket", str(sock)],
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=low_nofile,
        )
    d = Daemon(sock, proc, log)
    try:
        _wait_healthy(sock, proc)
        with d.client() as c:
            vm = c.post("/v1/vms", json={}).json()["id"]
            before = fd_count(proc.pid)
            statuses = []
            for _ in range(80):
                r = c.post(f"/v1/vms/{vm}/guest-memfds", json={"size": 2 * MiB})
                statuses.append(r.status_code)
                if r.status_code == 503:
                    assert r.json()["code"] == "HOST_RESOURCES_EXHAUSTED" and r.json()["errno_name"] == "EMFILE"
                    break
            assert statuses[-1] == 503
            created = statuses.count(201)
            assert fd_count(proc.pid) == before + created  # the failed call left nothing behind
            gmems = c.get(f"/v1/vms/{vm}/guest-memfds").json()["items"]
            assert len(gmems) == created
            for g in gmems:
                c.delete(f"/v1/vms/{vm}/guest-memfds/{g['id']}")
            assert c.post(f"/v1/vms/{vm}/guest-memfds", json={"size": 2 * MiB}).status_code == 201  # recovered
            metrics = c.get("/metrics").text
            assert 'memslotd_kernel_errors_total{errno="EMFILE",ioctl="KVM_CREATE_GUEST_MEMFD"} 1.0' in metrics
    finally:
        d.stop()


def test_a_toml_configuration_file_sets_the_limits(short_tmp):
    cfg = short_tmp / "memslotd.toml"
    cfg.write_text('max_vms = 1\nlog_format = "text"\nws_ping_timeout_s = 45.0\n')
    d = start_daemon(short_tmp, "--config", str(cfg))
    try:
        with d.client() as c:
            assert c.post("/v1/vms", json={}).status_code == 201
            assert c.post("/v1/vms", json={}).json()["code"] == "VM_QUOTA"
            limits = c.get("/v1/limits").json()
            assert (limits["max_vms"], limits["ws_ping_timeout_s"], limits["ws_ping_interval_s"]) == (1, 45.0, 20.0)
    finally:
        d.stop()


def test_a_toml_value_of_the_wrong_type_stops_the_start_naming_the_option(short_tmp):
    bad = short_tmp / "bad.toml"
    bad.write_text("max_vms = 'many'\n")
    r = run_daemon("--config", str(bad), "--socket", str(short_tmp / "b.sock"))
    assert r.returncode != 0 and "max_vms" in r.stderr


def test_help_documents_every_option():
    r = run_daemon("--help")
    from memslotd.settings import Settings

    for name in Settings.model_fields:
        assert f"--{name.replace('_', '-')}" in r.stdout, name
    words = " ".join(r.stdout.split())  # argparse wraps to the terminal's width
    python = re.search(
        r"\{?\w*,?null\}?|list\[|\{Path|default factory|%%|\bFalse\b|\(default: [^)]*\) \(default", words
    )
    assert python is None, f"{python.group(0) if python else ''!r}: help speaks Python, not options"
    assert "--socket-mode MODE" in words and "(default: 0660)" in words and "--tcp HOST:PORT" in words


def test_probes_past_max_probes_per_second_are_429(short_tmp):
    d = start_daemon(short_tmp, "--max-probes-per-second", "1")
    try:
        with d.client() as c:
            vm = c.post("/v1/vms", json={}).json()["id"]
            op = {"ops": [{"op": "read", "guest_phys_addr": 1 << 32, "length": 8}]}
            codes = [c.post(f"/v1/vms/{vm}/probe", json=op).status_code for _ in range(3)]
            assert codes[0] == 200 and 429 in codes
    finally:
        d.stop()
    assert os.path.exists("/dev/kvm")
