"""memslotctl apply: validated, declarative, all or nothing, against the real daemon."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from memslotd.cli.layout import LayoutError, load, parse, schema
from tests.client.test_cli import ctl
from tests.helpers import start_daemon

ROOT = Path(__file__).resolve().parents[2]
LAYOUT = """
vm: layout-vm
guest_memfds:
  - {name: ram-private, size: 64M, flags: [mmap, init_shared]}
shared_memory:
  - {name: ram-shared, size: 16M}
memslots:
  - {slot: 0, guest_phys_addr: 0x1_0000_0000, memory_size: 64M, private: {guest_memfd: ram-private, offset: 0}}
  - {slot: 1, guest_phys_addr: 0, memory_size: 16M, shared: {shared_memory: ram-shared}}
"""


def apply(daemon, layout: Path, *args: str) -> tuple[int, dict]:
    r = ctl(daemon, "--json", "apply", "-f", str(layout), *args)
    return r.returncode, json.loads(r.stdout or r.stderr)


def actions(result: dict) -> set[tuple[str, str, str]]:
    return {(a["action"], a["kind"], a["name"]) for a in result["actions"]}


def slots(daemon) -> list[tuple[int, int]]:
    return [
        (s["slot"], s["guest_phys_addr"]) for s in json.loads(ctl(daemon, "--json", "slot", "list", "layout-vm").stdout)
    ]


def test_apply_converges_and_a_second_apply_changes_nothing(daemon, tmp_path):
    layout = tmp_path / "layout.yaml"
    layout.write_text(LAYOUT)
    rc, first = apply(daemon, layout)
    assert rc == 0 and first["changed"] and first["summary"]["create"] == 5
    assert ("create", "memslot", "0") in actions(first)
    rc, second = apply(daemon, layout)
    assert rc == 0 and not second["changed"] and second["summary"]["unchanged"] == 5
    layout.write_text(LAYOUT.replace("guest_phys_addr: 0, memory_size: 16M", "guest_phys_addr: 1G, memory_size: 16M"))
    rc, moved = apply(daemon, layout)
    change = next(a for a in moved["actions"] if a["action"] == "change")
    assert change["name"] == "1" and change["detail"].startswith("[0x40000000, 0x41000000) 16M")
    assert change["was"].startswith("[0x0, 0x1000000) 16M")
    assert slots(daemon) == [(1, 1 << 30), (0, 4 << 30)]
    human = ctl(daemon, "apply", "-f", str(layout), "--dry-run").stdout
    assert "= memslot 0" in human and "Nothing to do" in human and "True" not in human


def test_nothing_is_deleted_without_prune(daemon, tmp_path):
    layout = tmp_path / "layout.yaml"
    layout.write_text(LAYOUT)
    apply(daemon, layout)
    layout.write_text(LAYOUT.split("memslots:")[0] + "memslots: []\n")
    rc, kept = apply(daemon, layout)
    assert rc == 0 and not kept["changed"] and kept["summary"]["keep"] == 2
    assert slots(daemon) == [(1, 0), (0, 4 << 30)]
    human = ctl(daemon, "apply", "-f", str(layout)).stdout
    assert "! memslot 1" in human and "--prune deletes it" in human
    unnamed = [json.loads(ctl(daemon, "--json", "shm", "create", "layout-vm", "4K").stdout)["id"] for _ in range(2)]
    rc, pruned = apply(daemon, layout, "--prune", "--yes")
    assert rc == 0 and {a for a in actions(pruned) if a[0] == "delete"} == {
        ("delete", "memslot", "0"),
        ("delete", "memslot", "1"),
        *(("delete", "shared_memory", i) for i in unnamed),
    }
    assert slots(daemon) == []
    assert [m["name"] for m in json.loads(ctl(daemon, "--json", "shm", "list", "layout-vm").stdout)] == ["ram-shared"]


def test_a_misspelt_key_is_refused_naming_file_path_and_rule(daemon, tmp_path):
    layout = tmp_path / "layout.yaml"
    layout.write_text(LAYOUT)
    apply(daemon, layout)
    layout.write_text(LAYOUT.replace("memslots:", "memslot:"))  # used to delete every slot with exit 0
    r = ctl(daemon, "apply", "-f", str(layout), "--prune", "--yes")
    assert r.returncode == 6 and "Traceback" not in r.stderr
    assert (
        r.stderr == f"error: LAYOUT_INVALID: {layout}: memslot: unknown key (see docs/cli.md for the layout format)\n"
    )
    assert slots(daemon) == [(1, 0), (0, 4 << 30)]
    layout.write_text(LAYOUT.replace("shared: {shared_memory: ram-shared}", "private: {guest_memfd: nope}"))
    rc, err = apply(daemon, layout)
    assert rc == 6 and err["problems"] == [
        {
            "path": "memslots[1].private.guest_memfd",
            "rule": "'nope' is not declared in guest_memfds (declared: ram-private)",
        }
    ]


def test_dry_run_changes_nothing_and_asks_the_daemon(short_tmp):
    d = start_daemon(short_tmp, "--max-slots-per-vm", "1")
    try:
        layout = short_tmp / "layout.yaml"
        layout.write_text(LAYOUT.split("  - {slot: 1")[0])  # one slot: fits
        rc, planned = apply(d, layout, "--dry-run")
        assert rc == 0 and planned["dry_run"] and not planned["changed"]
        assert json.loads(ctl(d, "--json", "vm", "list").stdout) == []
        apply(d, layout)
        layout.write_text(LAYOUT)  # a second slot: only the daemon knows its quota
        r = ctl(d, "apply", "-f", str(layout), "--dry-run")
        assert (
            r.returncode == 9 and r.stderr.startswith("error: BATCH_FAILED: ") and "already has 1 memslots" in r.stderr
        )
        r = ctl(d, "apply", "-f", str(layout))  # the real apply is refused before it changes anything
        assert r.returncode == 9 and slots(d) == [(0, 4 << 30)]
    finally:
        d.stop()


def test_a_failing_apply_undoes_what_it_did_and_a_rerun_converges(short_tmp):
    """A step only the kernel can refuse: 2M hugetlb shared memory on a host with no huge pages
    reserved passes every dry run (the daemon cannot know before it maps) and fails for real."""
    if int(Path("/proc/sys/vm/nr_hugepages").read_text()) != 0:
        pytest.skip("this host reserves 2M huge pages: the refusal this test needs does not happen")
    d = start_daemon(short_tmp)
    try:
        layout = short_tmp / "layout.yaml"
        layout.write_text(LAYOUT.replace("size: 16M}", "size: 16M, hugepages: 2M}"))
        r = ctl(d, "apply", "-f", str(layout))
        assert r.returncode == 7 and "create shared memory ram-shared failed" in r.stderr, r.stderr
        assert "HUGEPAGES_NOT_RESERVED" in r.stderr
        assert "undone: create guest_memfd ram-private, create VM layout-vm" in r.stderr
        assert json.loads(ctl(d, "--json", "vm", "list").stdout) == [], "the VM is as it was: absent"
        layout.write_text(LAYOUT)
        rc, result = apply(d, layout)
        assert rc == 0 and result["changed"]
        rc, again = apply(d, layout)
        assert rc == 0 and not again["changed"]
    finally:
        d.stop()


def test_layout_schema_is_checked_in_and_the_example_follows_it():
    assert (ROOT / "docs/layout.schema.json").read_text() == schema(), (
        "docs/layout.schema.json is stale: memslotctl schema > docs/layout.schema.json"
    )
    example = ROOT / "docs/examples/layout.yaml"
    assert example.read_text().startswith("# yaml-language-server: $schema=../layout.schema.json\n")
    assert load(str(example)).memslots[1].guest_phys_addr == 4 << 30


def test_layout_rules_name_the_key_path():
    try:
        parse(
            "vm: v\nguest_memfds: [{name: g, size: 4K}, {name: g, size: 1X}]\n"
            "memslots: [{slot: 0, guest_phys_addr: 0, memory_size: 4K}]\n",
            "f.yaml",
        )
    except LayoutError as exc:
        assert exc.problems == [("guest_memfds[1].size", "not a size: '1X' (try 4096, 0x1000, 2M, 1G)")]
    try:
        parse(
            "vm: v\nguest_memfds: [{name: g, size: 4K}, {name: g, size: 4K}]\n"
            "memslots: [{slot: 0, guest_phys_addr: 0, memory_size: 4K, flags: [readonly],"
            " private: {guest_memfd: g}}]\n",
            "f.yaml",
        )
    except LayoutError as exc:
        assert [p for p, _ in exc.problems] == ["guest_memfds[1].name", "memslots[0].flags"]
        assert str(exc).startswith("f.yaml: guest_memfds[1].name: 'g' is declared twice")
