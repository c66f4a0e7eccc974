"""memslotctl as operators run it: a subprocess against the real daemon."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import click
import pytest

from memslotd.cli import app
from tests.helpers import Daemon, patience, start_daemon

MEMSLOTCTL = str(Path(sys.executable).parent / "memslotctl")
#: what a Python value looks like when it leaks into human output
REPR = re.compile(
    r"\b(True|False|None)\b|\{'|\['|\[\d+(, \d+)*\]|\(\)|<[\w.]+ object at|\w+(Read|List|Range|Part)\("
    r"|(?<![-\w])\d{7,}\b"
)


def ctl(daemon: Daemon, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [MEMSLOTCTL, "--socket", str(daemon.socket_path), *args],
        capture_output=True,
        text=True,
        timeout=patience(120),
        input=stdin,
    )


def test_the_cli_takes_sizes_and_names_and_answers_tables_or_json(daemon):
    assert ctl(daemon, "vm", "create", "--name", "demo").returncode == 0
    assert (
        ctl(
            daemon, "gmem", "create", "demo", "64M", "--flag", "mmap", "--flag", "init_shared", "--name", "ram"
        ).returncode
        == 0
    )
    put = ctl(daemon, "slot", "put", "demo", "0", "--gpa", "4G", "--size", "0x400_0000", "--gmem", "ram")
    assert put.returncode == 0 and re.search(r"^guest_backing: +guest_memfd$", put.stdout, re.M)
    listed = json.loads(ctl(daemon, "--json", "slot", "list", "demo").stdout)
    assert listed[0]["guest_phys_addr"] == 4 << 30 and listed[0]["memory_size"] == 64 << 20
    table = ctl(daemon, "slot", "list", "demo").stdout.splitlines()
    assert table[0].split() == ["SLOT", "GUEST_PHYS_ADDR", "MEMORY_SIZE", "FLAGS", "SHARED", "PRIVATE", "GUEST_BACKING"]
    assert table[1].split()[:3] == ["0", "0x100000000", "64M"]
    conv = json.loads(ctl(daemon, "--json", "convert", "demo", "4G", "64M", "--to", "private", "--chunk", "16M").stdout)
    assert len(conv["changed"]) == 4  # four chunks, each converted by its own request
    assert conv["enforcement"] == "daemon"
    attrs = json.loads(ctl(daemon, "--json", "attrs", "demo").stdout)
    assert attrs == [{"guest_phys_addr": 4 << 30, "size": 64 << 20, "state": "private"}]
    probe = json.loads(ctl(daemon, "--json", "probe", "demo", "--write", "0x100000000:abcd", "--read", "4G:2").stdout)
    assert probe[1]["data_hex"] == "abcd"
    events = ctl(daemon, "--json", "events", "--type", "memslot.*").stdout.splitlines()
    assert json.loads(events[0])["type"] == "memslot.created"
    assert re.search(r"^conversion_enforcement: +daemon$", ctl(daemon, "caps").stdout, re.M)


def test_exit_codes_distinguish_the_failure_and_every_error_has_its_code(daemon):
    assert ctl(daemon, "vm", "show", "vm-000000000000").returncode == 3  # not found
    ctl(daemon, "vm", "create", "--name", "x")
    ctl(daemon, "shm", "create", "x", "4M", "--name", "s")
    ctl(daemon, "slot", "put", "x", "0", "--gpa", "0", "--size", "4M", "--shm", "s")
    in_use = ctl(daemon, "shm", "delete", "x", "s")
    assert in_use.returncode == 4 and in_use.stderr.startswith("error: SHARED_MEMORY_IN_USE: ")  # conflict
    bad = ctl(daemon, "gmem", "create", "x", "4097")
    assert bad.returncode == 6 and bad.stderr.startswith("error: RANGE_NOT_ALIGNED: ")  # invalid request
    assert ctl(daemon, "vm", "create", "--type", "snp").returncode == 7  # capability missing
    assert ctl(daemon, "slot", "put", "x", "1", "--gpa", "0", "--size", "1X", "--shm", "s").returncode == 2  # usage
    missing_size = ctl(daemon, "slot", "put", "x", "1", "--gpa", "0", "--shm", "s")
    assert missing_size.returncode == 2 and "error: USAGE: Missing option '--size'" in missing_size.stderr
    stale = ctl(daemon, "slot", "put", "x", "0", "--gpa", "0", "--size", "4M", "--shm", "s", "--if-match", "bogus")
    assert stale.returncode == 4 and stale.stderr.startswith("error: PRECONDITION_FAILED: ")  # a lost race: conflict
    ctl(daemon, "gmem", "create", "x", "4M", "--name", "g")
    ctl(daemon, "slot", "put", "x", "2", "--gpa", "1G", "--size", "4M", "--gmem", "g")
    bound = ctl(daemon, "gmem", "delete", "x", "g")
    assert bound.returncode == 4 and REPR.search(bound.stderr) is None and " is bound to slots 2\n" in bound.stderr
    named = ctl(daemon, "vm", "show", "nope")
    assert named.returncode == 3 and named.stderr == "error: VM_NOT_FOUND: no VM named 'nope'\n"
    err = ctl(daemon, "--json", "vm", "show", "nope")
    assert err.returncode == 3 and json.loads(err.stderr)["error"] == "VM_NOT_FOUND"
    unreachable = subprocess.run(
        [MEMSLOTCTL, "--socket", "/nonexistent.sock", "vm", "list"],
        capture_output=True,
        text=True,
        timeout=patience(60),
    )
    assert unreachable.returncode == 5
    assert unreachable.stderr.startswith("error: UNREACHABLE: cannot reach memslotd at unix socket /nonexistent.sock")
    as_json = subprocess.run(
        [MEMSLOTCTL, "--socket", "/nonexistent.sock", "--json", "vm", "list"],
        capture_output=True,
        text=True,
        timeout=patience(60),
    )
    assert json.loads(as_json.stderr).keys() == {"error", "detail"}, "no HTTP status or problem: nothing answered"


# -- every command's human output -------------------------------------------------------------
@pytest.fixture(scope="module")
def demo() -> Iterator[Daemon]:
    tmp = Path(tempfile.mkdtemp(prefix="msd-"))
    d = start_daemon(tmp)
    try:
        for args in (
            ("vm", "create", "--name", "demo"),
            ("gmem", "create", "demo", "64M", "--flag", "mmap", "--flag", "init_shared", "--name", "ram"),
            ("shm", "create", "demo", "16M", "--name", "low"),
            ("slot", "put", "demo", "0", "--gpa", "4G", "--size", "64M", "--gmem", "ram"),
            ("slot", "put", "demo", "1", "--gpa", "0", "--size", "16M", "--shm", "low", "--flag", "log_dirty_pages"),
        ):
            assert ctl(d, *args).returncode == 0, args
        yield d
    finally:
        d.stop()
        shutil.rmtree(tmp, ignore_errors=True)


COMMANDS = [
    ("caps",),
    ("vm", "list"),
    ("vm", "show", "demo"),
    ("vm", "create", "--name", "other"),
    ("gmem", "list", "demo"),
    ("gmem", "show", "demo", "ram"),
    ("gmem", "create", "demo", "2M", "--name", "g2"),
    ("gmem", "allocate", "demo", "g2", "0", "1M"),
    ("gmem", "punch", "demo", "g2", "0", "1M"),
    ("gmem", "delete", "demo", "g2"),
    ("shm", "list", "demo"),
    ("shm", "show", "demo", "low"),
    ("shm", "create", "demo", "2M", "--name", "s2"),
    ("shm", "delete", "demo", "s2"),
    ("slot", "list", "demo"),
    ("slot", "show", "demo", "0"),
    ("slot", "dirty-log", "demo", "1"),
    ("slot", "put", "demo", "2", "--gpa", "8G", "--size", "2M", "--shm", "low", "--dry-run"),
    ("slot", "delete", "demo", "1", "--dry-run"),
    ("convert", "demo", "4G", "2M", "--to", "private"),
    ("attrs", "demo"),
    ("probe", "demo", "--write", "4G:beef", "--read", "4G:2", "--read", "0x200000000:1"),
    ("events", "--vm", "demo"),
    ("vm", "delete", "other"),
]


@pytest.mark.parametrize("args", COMMANDS, ids=[" ".join(a[:2]) for a in COMMANDS])
def test_human_output_has_no_python_repr_and_hex_addresses(demo, args):
    r = ctl(demo, *args)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip(), "prints something"
    leaked = REPR.search(r.stdout)
    assert leaked is None, f"{leaked.group(0)!r} in:\n{r.stdout}"
    assert not re.search(r"\b\d+\.\d{3,}\b", r.stdout), "times are ISO 8601, not epoch floats"


def test_output_says_what_happened_and_nothing_else(demo):
    dirty = ctl(demo, "slot", "dirty-log", "demo", "1").stdout
    assert dirty == "slot 1: 0 of 4096 pages dirty\n", "no empty table after the count"
    dry = ctl(demo, "slot", "put", "demo", "2", "--gpa", "8G", "--size", "2M", "--shm", "low", "--dry-run").stdout
    assert dry.startswith("Dry run: the daemon accepts memslot 2; nothing changed.")
    wide = ctl(demo, "vm", "list").stdout
    assert max(len(line) for line in wide.splitlines()) <= 120, wide


def test_show_is_key_value_and_times_are_iso_8601(demo):
    lines = ctl(demo, "slot", "show", "demo", "0").stdout.splitlines()
    fields = dict(re.split(r":\s+", line, maxsplit=1) for line in lines)
    assert fields["guest_phys_addr"] == "0x100000000" and fields["memory_size"] == "64M"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", fields["created_at"])
    assert max(len(line) for line in lines) < 80, "fits a terminal"


# -- help ---------------------------------------------------------------------------------------
def _commands(group: click.Group, prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    for name, command in group.commands.items():
        yield (*prefix, name), command
        if isinstance(command, click.Group):
            yield from _commands(command, (*prefix, name))


def test_every_command_has_a_help_line_an_example_and_plain_metavars():
    from click.testing import CliRunner

    runner = CliRunner()
    for path, command in _commands(app):
        text = runner.invoke(app, [*path, "--help"]).output
        assert command.get_short_help_str(), f"{path}: no help line"
        assert "Example:" in text and "memslotctl " in text.split("Example:")[1], f"{path}: no example"
        odd = re.search(r"<\w+(\[\w+\])?>|\{\w+\}|FileText|TEXT|INTEGER", text)
        assert odd is None, f"{path}: metavar {odd.group(0) if odd else ''} in\n{text}"


def test_shell_completion_is_installed_with_the_package():
    """The wheel carries the scripts as data files (share/...); an editable install does not."""
    import tomllib

    root = Path(__file__).resolve().parents[2]
    data_files = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["data-files"]
    shipped = {f for files in data_files.values() for f in files}
    for shell, rel in (
        ("bash", "completions/bash/memslotctl"),
        ("zsh", "completions/zsh/_memslotctl"),
        ("fish", "completions/fish/memslotctl.fish"),
    ):
        script = subprocess.run(
            [MEMSLOTCTL, "completion", shell], capture_output=True, text=True, timeout=patience(60)
        ).stdout
        assert (root / rel).read_text() == script, f"{rel} is stale: memslotctl completion {shell} > {rel}"
        assert rel in shipped, f"{rel} is not in pyproject's data-files"
    venv = Path(sys.executable).parent
    words = subprocess.run(
        [MEMSLOTCTL],
        env={
            "_MEMSLOTCTL_COMPLETE": "bash_complete",
            "COMP_WORDS": "memslotctl sl",
            "COMP_CWORD": "1",
            "PATH": str(venv),
        },
        capture_output=True,
        text=True,
        timeout=patience(60),
    ).stdout
    assert "plain,slot" in words.splitlines()  # bash_complete answers TYPE,VALUE lines


def test_a_batch_file_is_checked_by_a_dry_run_then_applied_whole(daemon, tmp_path):
    ctl(daemon, "vm", "create", "--name", "b")
    ctl(daemon, "shm", "create", "b", "64M", "--name", "s")
    shm = json.loads(ctl(daemon, "--json", "shm", "list", "b").stdout)[0]["id"]
    ops = [
        {
            "op": "create",
            "slot": i,
            "guest_phys_addr": f"{i * 2}M",
            "memory_size": "1M",
            "shared": {"shared_memory_id": shm, "offset": i * (1 << 20)},
        }
        for i in range(32)
    ]
    f = tmp_path / "ops.yaml"
    f.write_text(json.dumps(ops))
    checked = ctl(daemon, "--json", "slot", "batch", "b", "-f", str(f), "--dry-run")
    assert (
        json.loads(checked.stdout) == {"checked": 32}
        and json.loads(ctl(daemon, "--json", "slot", "list", "b").stdout) == []
    )
    r = ctl(daemon, "--json", "slot", "batch", "b", "-f", str(f))
    assert r.returncode == 0 and json.loads(r.stdout) == {"applied": 32}
