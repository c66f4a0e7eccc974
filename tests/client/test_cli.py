"""memslotctl as operators run it: a subprocess against the real daemon."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

MEMSLOTCTL = str(Path(sys.executable).parent / "memslotctl")


def ctl(daemon, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([MEMSLOTCTL, "--socket", str(daemon.socket_path), *args], capture_output=True, text=True,
                          timeout=60, input=stdin)


def test_walkthrough_with_sizes_names_tables_and_json(daemon):
    assert ctl(daemon, "vm", "create", "--name", "demo").returncode == 0
    assert ctl(daemon, "gmem", "create", "demo", "64M", "--flag", "mmap", "--flag", "init_shared", "--name", "ram").returncode == 0
    put = ctl(daemon, "slot", "put", "demo", "0", "--gpa", "4G", "--size", "0x4000000", "--gmem", "ram")
    assert put.returncode == 0 and "guest_memfd" in put.stdout
    listed = json.loads(ctl(daemon, "--json", "slot", "list", "demo").stdout)
    assert listed[0]["guest_phys_addr"] == 4 << 30 and listed[0]["memory_size"] == 64 << 20
    table = ctl(daemon, "slot", "list", "demo").stdout
    assert "0x100000000" in table and "64M" in table
    conv = json.loads(ctl(daemon, "--json", "convert", "demo", "4G", "64M", "--to", "private", "--chunk", "16M").stdout)
    assert len(conv["changed"]) == 4  # four chunks, each converted by its own request
    assert conv["enforcement"] == "daemon"
    attrs = json.loads(ctl(daemon, "--json", "attrs", "demo").stdout)
    assert attrs == [{"guest_phys_addr": 4 << 30, "size": 64 << 20, "state": "private"}]
    probe = json.loads(ctl(daemon, "--json", "probe", "demo", "--write", "0x100000000:abcd", "--read", "4G:2").stdout)
    assert probe[1]["data_hex"] == "abcd"
    events = ctl(daemon, "--json", "events", "--type", "memslot.*").stdout.splitlines()
    assert json.loads(events[0])["type"] == "memslot.created"
    assert "conversion_enforcement" in ctl(daemon, "caps").stdout


def test_exit_codes_distinguish_the_failure(daemon):
    assert ctl(daemon, "vm", "show", "vm-000000000000").returncode == 3  # not found
    ctl(daemon, "vm", "create", "--name", "x")
    ctl(daemon, "shm", "create", "x", "4M", "--name", "s")
    ctl(daemon, "slot", "put", "x", "0", "--gpa", "0", "--size", "4M", "--shm", "s")
    assert ctl(daemon, "shm", "delete", "x", "s").returncode == 4  # conflict: in use
    assert ctl(daemon, "gmem", "create", "x", "4097").returncode == 6  # invalid request
    assert ctl(daemon, "vm", "create", "--type", "snp").returncode == 7  # capability missing
    assert ctl(daemon, "slot", "put", "x", "1", "--gpa", "0", "--size", "1X").returncode == 2  # usage
    err = ctl(daemon, "--json", "vm", "show", "nope")
    assert err.returncode == 3 and json.loads(err.stderr)["error"] == "VM_NOT_FOUND"
    unreachable = subprocess.run([MEMSLOTCTL, "--socket", "/nonexistent.sock", "vm", "list"], capture_output=True,
                                 text=True, timeout=60)
    assert unreachable.returncode == 5


LAYOUT = """
vm: layout-vm
guest_memfds:
  - {name: ram-private, size: 64M, flags: [mmap, init_shared]}
shared_memory:
  - {name: ram-shared, size: 16M}
memslots:
  - {slot: 0, guest_phys_addr: 4G, size: 64M, private: {guest_memfd: ram-private, offset: 0}}
  - {slot: 1, guest_phys_addr: 0, size: 16M, shared: {shared_memory: ram-shared}}
"""


def test_apply_is_declarative_and_idempotent(daemon, tmp_path):
    layout = tmp_path / "layout.yaml"
    layout.write_text(LAYOUT)
    first = json.loads(ctl(daemon, "--json", "apply", "-f", str(layout)).stdout)
    assert first["changed"] and first["create"] == {"guest_memfds": 1, "shared_memory": 1, "memslots": 2}
    second = json.loads(ctl(daemon, "--json", "apply", "-f", str(layout)).stdout)
    assert not second["changed"] and second["unchanged"] == 4
    layout.write_text(LAYOUT.replace("guest_phys_addr: 0, size: 16M", "guest_phys_addr: 1G, size: 16M"))
    moved = json.loads(ctl(daemon, "--json", "apply", "-f", str(layout)).stdout)
    assert moved["delete"]["memslots"] == 1 and moved["create"]["memslots"] == 1
    slots = json.loads(ctl(daemon, "--json", "slot", "list", "layout-vm").stdout)
    assert [(s["slot"], s["guest_phys_addr"]) for s in slots] == [(1, 1 << 30), (0, 4 << 30)]
    layout.write_text(LAYOUT.split("memslots:")[0] + "memslots: []\n")
    pruned = json.loads(ctl(daemon, "--json", "apply", "-f", str(layout)).stdout)
    assert pruned["delete"]["memslots"] == 2
    assert json.loads(ctl(daemon, "--json", "slot", "list", "layout-vm").stdout) == []


def test_batch_file_with_progress(daemon, tmp_path):
    ctl(daemon, "vm", "create", "--name", "b")
    ctl(daemon, "shm", "create", "b", "64M", "--name", "s")
    shm = json.loads(ctl(daemon, "--json", "shm", "list", "b").stdout)[0]["id"]
    ops = [{"op": "create", "slot": i, "guest_phys_addr": f"{i * 2}M", "memory_size": "1M",
            "shared": {"shared_memory_id": shm, "offset": i * (1 << 20)}} for i in range(32)]
    f = tmp_path / "ops.yaml"
    f.write_text(json.dumps(ops))
    checked = ctl(daemon, "--json", "slot", "batch", "b", "-f", str(f), "--dry-run")
    assert json.loads(checked.stdout) == {"checked": 32} and json.loads(ctl(daemon, "--json", "slot", "list", "b").stdout) == []
    r = ctl(daemon, "--json", "slot", "batch", "b", "-f", str(f))
    assert r.returncode == 0 and json.loads(r.stdout) == {"applied": 32}
