"""The daemon as users run it: a subprocess serving a Unix socket."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time

import pytest

from tests.helpers import fd_count, guest_memory_mappings, patience, run_daemon, start_daemon

MiB, GiB = 1 << 20, 1 << 30


def test_the_socket_is_0660_in_a_0750_directory(daemon):
    assert stat.S_IMODE(daemon.socket_path.stat().st_mode) == 0o660
    assert stat.S_ISSOCK(daemon.socket_path.stat().st_mode)
    assert stat.S_IMODE(daemon.socket_path.parent.stat().st_mode) == 0o750


@pytest.mark.parametrize("written", ["0640", "640", "0o640"])
def test_socket_mode_is_read_as_octal_as_chmod_reads_it(short_tmp, written):
    """Read as decimal, 0440 was 0o670: group-writable, the opposite of what was asked."""
    d = start_daemon(short_tmp, "--socket-mode", written)
    try:
        assert stat.S_IMODE(d.socket_path.stat().st_mode) == 0o640
    finally:
        d.stop()


def test_walkthrough_and_vm_delete_releases_fds(daemon):
    pid = daemon.proc.pid
    with daemon.client() as c:
        c.get("/v1/healthz")  # open the keep-alive connection before counting
        idle_fds, idle_maps = fd_count(pid), guest_memory_mappings(pid)
        vm = c.post("/v1/vms", json={"name": "walk"}).json()["id"]
        g = c.post(f"/v1/vms/{vm}/guest-memfds", json={"size": 64 * MiB, "flags": ["mmap", "init_shared"]}).json()["id"]
        s = c.post(f"/v1/vms/{vm}/shared-memory", json={"size": 16 * MiB}).json()["id"]
        r = c.put(
            f"/v1/vms/{vm}/memslots/0",
            json={"guest_phys_addr": 4 * GiB, "memory_size": 64 * MiB, "private": {"guest_memfd_id": g, "offset": 0}},
        )
        assert r.status_code == 201, r.text
        r = c.post(
            f"/v1/vms/{vm}/memslots",
            json={"guest_phys_addr": 0, "memory_size": 16 * MiB, "shared": {"shared_memory_id": s, "offset": 0}},
        )
        assert r.status_code == 201 and r.json()["slot"] == 1
        assert [i["slot"] for i in c.get(f"/v1/vms/{vm}/memslots").json()["items"]] == [1, 0]
        assert fd_count(pid) == idle_fds + 3  # VM, guest_memfd, memfd
        assert c.delete(f"/v1/vms/{vm}").status_code == 204
        assert fd_count(pid) == idle_fds
        assert guest_memory_mappings(pid) == idle_maps


def test_sigterm_closes_everything_and_removes_the_socket(short_tmp):
    d = start_daemon(short_tmp)
    with d.client() as c:
        vm = c.post("/v1/vms", json={}).json()["id"]
        c.post(f"/v1/vms/{vm}/guest-memfds", json={"size": 2 * MiB})
    assert d.stop(signal.SIGTERM) == 0
    assert not d.socket_path.exists()
    assert f"removed {d.socket_path}" in d.log()


def _spawn_on(path, *, timeout: float = 10) -> subprocess.Popen[bytes]:
    """memslotd on ``path`` (given by environment), returned once the socket exists."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "memslotd.daemon"],
        env={**os.environ, "MEMSLOTD_SOCKET": str(path)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + patience(timeout)
    while not path.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    return proc


def _stop(proc: subprocess.Popen[bytes], timeout: float = 15) -> int | None:
    """SIGTERM, then the exit status; None (after a kill) if the daemon ignored it."""
    proc.terminate()
    try:
        return proc.wait(patience(timeout))
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return None


def test_memslotd_socket_in_the_environment_sets_the_socket_path(short_tmp):
    path = short_tmp / "env" / "api.sock"
    proc = _spawn_on(path)
    try:
        assert path.exists()
    finally:
        assert _stop(proc) == 0
    assert not path.exists()


@pytest.mark.parametrize("delay", [0, 0.03, 0.1, 0.2, 0.4])
def test_a_stop_at_any_point_of_start_up_is_honoured(short_tmp, delay):
    """The socket exists before the web stack is imported and before uvicorn's handlers are in
    place; a SIGTERM in those windows must still stop the daemon and remove the socket."""
    path = short_tmp / "api.sock"
    proc = _spawn_on(path)
    assert path.exists()
    time.sleep(delay)
    assert _stop(proc) == 0
    assert not path.exists()


def test_invalid_configuration_fails_at_start(short_tmp):
    r = run_daemon("--socket", "relative.sock")
    assert r.returncode != 0 and "invalid configuration" in r.stderr


def test_a_socket_directory_others_can_write_is_refused(short_tmp):
    shared = short_tmp / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # e.g. planted in /tmp by another user: they could swap the socket
    r = run_daemon("--socket", str(shared / "api.sock"))
    assert r.returncode != 0 and "not writable by group or others" in r.stderr
    assert not (shared / "api.sock").exists()


def test_second_daemon_on_a_live_socket_refuses(daemon):
    r = run_daemon("--socket", str(daemon.socket_path))
    assert r.returncode != 0 and "another daemon is listening" in r.stderr
    assert "removed" not in r.stdout + r.stderr and daemon.socket_path.exists()  # it removed nothing
