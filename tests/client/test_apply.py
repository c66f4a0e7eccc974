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


def test_a_dry_run_of_a_new_vm_checks_the_daemons_limits_and_shows_the_plan(short_tmp):
    """On a VM the plan creates, the daemon cannot dry-run the slot batch (its objects do not
    exist yet): memslotctl checks the slot count and the byte quota against ``GET /v1/limits``,
    so that what the dry run approves the real apply does not refuse half-way."""
    d = start_daemon(short_tmp, "--max-slots-per-vm", "1")
    try:
        layout = short_tmp / "layout.yaml"
        layout.write_text(LAYOUT.replace("size: 16M}", "size: 1P}"))
        r = ctl(d, "apply", "-f", str(layout), "--dry-run")
        assert r.returncode == 6 and r.stdout.startswith("Plan for VM layout-vm:\n"), "the plan comes first"
        assert r.stderr.splitlines() == [
            f"error: LAYOUT_INVALID: {layout}: memslots: the VM would have 2 memslots; the daemon allows 1 per VM",
            f"error: LAYOUT_INVALID: {layout}: shared_memory[0].size: 1P exceeds the daemon's byte quota of "
            + r.stderr.split("byte quota of ")[-1].split()[0]
            + " per VM",
        ]
        assert ctl(d, "apply", "-f", str(layout)).returncode == 6
        assert json.loads(ctl(d, "--json", "vm", "list").stdout) == [], "nothing was made"
    finally:
        d.stop()


def test_prune_without_a_terminal_needs_yes(daemon, tmp_path):
    layout = tmp_path / "layout.yaml"
    layout.write_text(LAYOUT)
    apply(daemon, layout)
    layout.write_text(LAYOUT.split("memslots:")[0] + "memslots: []\n")
    r = ctl(daemon, "apply", "-f", str(layout), "--prune", stdin="")
    assert r.returncode == 2 and "error: USAGE: --prune would delete 2 slot(s)/object(s)" in r.stderr
    assert slots(daemon) == [(1, 0), (0, 4 << 30)], "nothing was deleted"


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


def test_layout_rules_name_the_key_path_and_are_reported_in_one_run():
    with pytest.raises(LayoutError) as caught:
        parse(
            "vm: v\nguest_memfds: [{name: g, size: 4K}, {name: g, size: 1X}]\n"
            "memslots: [{slot: 0, guest_phys_addr: 0, memory_size: 4K}]\n",
            "f.yaml",
        )
    assert caught.value.problems == [
        ("guest_memfds[1].size", "not a size: '1X' (try 4096, 0x1000, 2M, 1G)"),
        ("guest_memfds[1].name", "'g' is declared twice"),
        ("memslots[0]", "a memslot needs a shared part, a private part, or both"),
    ]
    with pytest.raises(LayoutError) as caught:
        parse(
            "vm: v\nguest_memfds: [{name: g, size: 4K}, {name: g, size: 4K}]\n"
            "memslots: [{slot: 0, guest_phys_addr: 0, memory_size: 4K, flags: [readonly],"
            " private: {guest_memfd: g}}]\n",
            "f.yaml",
        )
    assert [p for p, _ in caught.value.problems] == ["guest_memfds[1].name", "memslots[0].flags"]
    assert str(caught.value).startswith("f.yaml: guest_memfds[1].name: 'g' is declared twice")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("vm: a\nvm: b\n", ("line 2, column 1", "not valid YAML: key 'vm' is given twice")),
        (
            "vm: a\nmemslots: [\n",
            (
                "line 3, column 1",
                "not valid YAML: expected the node content, but found '<stream end>' (while parsing a flow node)",
            ),
        ),
        (
            "vm: a\nguest_memfds: [{name: g, size: true}]\n",
            ("guest_memfds[0].size", "not a size: true (try 4096, 0x1000, 2M, 1G)"),
        ),
        (
            "vm: a\nguest_memfds: [{name: g, size: 1.5}]\n",
            ("guest_memfds[0].size", "not a size: 1.5 (try 4096, 0x1000, 2M, 1G)"),
        ),
        (
            "vm: a\nshared_memory: [{name: s, size: 4M}]\n"
            "memslots: [{slot: '3', guest_phys_addr: 0, memory_size: 4M, shared: {shared_memory: s}}]\n",
            ("memslots[0].slot", "must be a valid integer; got '3'"),
        ),
        (
            "vm: a\nshared_memory: [{name: s, size: 4M}]\n"
            "memslots: [{slot: 1, guest_phys_addr: 0, memory_size: 4M, flags: [yes], shared: {shared_memory: s}}]\n",
            ("memslots[0].flags[0]", "must be one of 'log_dirty_pages', 'readonly'; got true"),
        ),
        (
            "vm: a\n? [1]\n: 2\n",
            ("line 2, column 3", "not valid YAML: found unhashable key (while constructing a mapping)"),
        ),
    ],
    ids=[
        "duplicate_key",
        "broken_yaml",
        "bool_as_size",
        "float_as_size",
        "string_as_slot_id",
        "unknown_flag",
        "list_as_key",
    ],
)
def test_a_layout_value_is_taken_only_as_written(text, problem):
    """YAML keeps the last of two equal keys and reads ``true`` where pydantic would see 1:
    both would apply something the file does not say."""
    with pytest.raises(LayoutError) as caught:
        parse(text, "f.yaml")
    assert caught.value.problems == [problem]


def test_a_merge_key_is_not_a_duplicate_and_its_keys_may_be_overridden():
    layout = parse("vm: a\nguest_memfds:\n  - &g {name: g, size: 4K}\n  - <<: *g\n    name: h\n")
    assert [(g.name, g.size) for g in layout.guest_memfds] == [("g", 4096), ("h", 4096)]
