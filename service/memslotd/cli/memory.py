"""``memslotctl caps|convert|attrs|probe|events|apply``: the host, guest memory, the stream, layouts."""

from __future__ import annotations

import json
import sys
from typing import Any

import click
from rich.console import Console
from rich.progress import Progress

from . import apply as apply_mod
from . import output
from ._common import SIZE, State, emit, emit_show, pass_state, resolve_vm
from .layout import load as load_layout

__all__ = ["caps", "convert", "attrs", "probe", "events", "apply_layout"]


@click.command()
@pass_state
def caps(state: State) -> None:
    """What this host's KVM offers (and what memslotd enforces itself).

    \b
    Example:
      memslotctl caps
    """
    emit_show(state, state.client.capabilities())


@click.command()
@click.argument("vm", metavar="VM")
@click.argument("gpa", type=SIZE, metavar="ADDR")
@click.argument("size", type=SIZE, metavar="SIZE")
@click.option("--to", type=click.Choice(["private", "shared"]), required=True, help="the state to convert to")
@click.option("--discard/--keep", default=True, show_default=True, help="discard the stale side")
@click.option(
    "--chunk",
    type=SIZE,
    default="64G",
    show_default=True,
    metavar="SIZE",
    help="split large ranges into requests of this size (progress shown)",
)
@pass_state
def convert(state: State, vm: str, gpa: int, size: int, to: str, discard: bool, chunk: int) -> None:
    """Make a GPA range private or shared (idempotent, so splitting into chunks is safe).

    \b
    Example:
      memslotctl convert demo 4G 64M --to private
    """
    vm_id = resolve_vm(state, vm)
    changed: list[Any] = []
    unchanged: list[Any] = []
    enforcement = "daemon"
    with Progress(console=Console(stderr=True), disable=state.json or size <= chunk, transient=True) as progress:
        task = progress.add_task(f"to {to}", total=size)
        for offset in range(0, size, chunk):
            n = min(chunk, size - offset)
            result = state.client.convert(vm_id, gpa + offset, n, to, discard)
            changed += output.plain(result.changed)
            unchanged += output.plain(result.unchanged)
            enforcement = result.enforcement
            progress.update(task, advance=n)
    if state.json:
        output.print_json({"changed": changed, "unchanged": unchanged, "enforcement": enforcement})
        return
    click.echo(f"enforcement: {enforcement} ({len(changed)} ranges changed, {len(unchanged)} already {to})")
    emit(state, changed, ["slot", "guest_phys_addr", "size", "from", "to"])


@click.command()
@click.argument("vm", metavar="VM")
@click.option("--gpa-start", type=SIZE, default=0, metavar="ADDR", help="from this GPA")
@click.option("--gpa-end", type=SIZE, metavar="ADDR", help="up to this GPA")
@pass_state
def attrs(state: State, vm: str, gpa_start: int, gpa_end: int | None) -> None:
    """Private/shared ranges of guest memory (run-length).

    \b
    Example:
      memslotctl attrs demo
    """
    result = state.client.attributes(resolve_vm(state, vm), gpa_start, gpa_end)
    if not state.json:
        click.echo(f"enforcement: {result.enforcement}")
    emit(state, result.ranges, ["guest_phys_addr", "size", "state"])


@click.command()
@click.argument("vm", metavar="VM")
@click.option("--read", "reads", multiple=True, metavar="ADDR[:LENGTH]", help="read LENGTH bytes (default 8)")
@click.option("--write", "writes", multiple=True, metavar="ADDR:HEX", help="write these bytes")
@pass_state
def probe(state: State, vm: str, reads: tuple[str, ...], writes: tuple[str, ...]) -> None:
    """Run the guest probe: what does a real vCPU see at these addresses? (writes run first)

    \b
    Example:
      memslotctl probe demo --write 4G:beef --read 4G:2
    """
    ops: list[dict[str, Any]] = []
    try:
        for w in writes:
            gpa, _, data = w.partition(":")
            ops.append(
                {
                    "op": "write",
                    "guest_phys_addr": SIZE.convert(gpa, None, None),
                    "length": len(data) // 2,
                    "data_hex": data,
                }
            )
        for r in reads:
            gpa, _, length = r.partition(":")
            ops.append(
                {
                    "op": "read",
                    "guest_phys_addr": SIZE.convert(gpa, None, None),
                    "length": SIZE.convert(length or "8", None, None),
                }
            )
    except click.BadParameter as exc:
        raise click.UsageError(exc.message) from None
    if not ops:
        raise click.UsageError("give at least one --read or --write")
    result = state.client.probe(resolve_vm(state, vm), ops)
    rows = output.plain(result.results)
    if not state.json:
        for row in rows:
            row["exit"] = (row.get("exit") or {}).get("reason")
    emit(state, rows, ["op", "guest_phys_addr", "length", "ok", "state", "data_hex", "exit"])


@click.command()
@click.option("--vm", "vm", metavar="VM", help="only this VM's events")
@click.option("--type", "types", multiple=True, metavar="GLOB", help="event type or glob, e.g. memory.* (repeatable)")
@click.option("--since", type=click.IntRange(0), metavar="SEQ", help="resume after this seq")
@click.option("--initial-state", is_flag=True, help="first the current state (with --follow)")
@click.option("-f", "--follow", is_flag=True, help="keep streaming (resumes by itself)")
@pass_state
def events(
    state: State, vm: str | None, types: tuple[str, ...], since: int | None, initial_state: bool, follow: bool
) -> None:
    """Print events: SEQ TIME TYPE VM DATA, or one JSON object per line with --json.

    \b
    Example:
      memslotctl events --follow --type 'memory.*'
    """
    vm_id = resolve_vm(state, vm) if vm else None
    if not follow:
        text = state.client.events_page(since if since is not None else 0, vm_id=vm_id, types=list(types) or None)
        for line in text.splitlines():
            _print_event(state, json.loads(line))
        return
    for event in state.client.events(
        since_seq=since, vm_id=vm_id, types=list(types) or None, initial_state=initial_state
    ):
        _print_event(state, event)


def _print_event(state: State, event: dict[str, Any]) -> None:
    if state.json:
        sys.stdout.write(json.dumps(event) + "\n")
    else:
        data = event.get("data") or {
            k: v for k, v in event.items() if k not in ("type", "boot_id", "time", "seq", "vm_id")
        }
        when = output.iso_time(event["time"]) if isinstance(event.get("time"), (int, float)) else "-"
        fields = " ".join(f"{k}={output.cell(k, v)}" for k, v in data.items())
        sys.stdout.write(
            f"{event.get('seq', '-')} {when} {event['type']} {event.get('vm_id') or '-'} {fields}".rstrip() + "\n"
        )
    sys.stdout.flush()


SYMBOLS = {"create": "+", "change": "~", "delete": "-", "unchanged": "=", "keep": "!"}


@click.command("apply")
@click.option("-f", "--file", "file", required=True, metavar="FILE", help="layout YAML (- reads stdin)")
@click.option("--dry-run", is_flag=True, help="print the plan and have the daemon check it; change nothing")
@click.option("--prune", is_flag=True, help="also delete slots and objects the layout does not declare")
@click.option("--yes", "-y", is_flag=True, help="do not ask before --prune deletes anything")
@pass_state
def apply_layout(state: State, file: str, dry_run: bool, prune: bool, yes: bool) -> None:
    """Converge a VM to a layout file: guest_memfds, shared memory, memslots.

    The plan is printed first (+ create, ~ change, - delete, = unchanged, ! kept: not in the
    layout, --prune deletes it). Nothing is deleted without --prune; --prune asks on a
    terminal and needs --yes elsewhere. A failure undoes what this apply did. Format: docs/cli.md.

    \b
    Example:
      memslotctl apply -f layout.yaml --dry-run
      memslotctl apply -f layout.yaml --prune --yes
    """
    layout = load_layout(file)
    p = apply_mod.plan(state.client, layout, prune=prune)
    if not state.json:  # first, so that a check that fails is read against what was planned
        _print_plan(p)
    apply_mod.check(state.client, p, layout, file)
    if dry_run and not state.json:
        _print_checks(p)
    deletes = p.counts()["delete"]
    if not dry_run and deletes and not yes:  # terraform's rule: a deletion is confirmed, or refused
        if not sys.stdin.isatty():
            raise click.UsageError(
                f"--prune would delete {deletes} slot(s)/object(s) and there is no terminal to ask: add --yes"
            )
        if not click.confirm(f"Delete {deletes} slot(s)/object(s) not in {file}?", err=True):
            raise click.Abort("nothing changed")
    vm_id = p.vm.id if p.vm else None
    if not dry_run and not p.empty:
        vm_id = apply_mod.execute(state.client, p)
    if state.json:
        output.print_json(
            {
                "vm": p.vm_name,
                "vm_id": vm_id,
                "dry_run": dry_run,
                "changed": not p.empty and not dry_run,
                "summary": p.counts(),
                "actions": [a.as_dict() for a in p.actions],
                "checked_by_daemon": p.checked_by_daemon,
                "checked_by_memslotctl": p.checked_here,
            }
        )
    elif not p.empty:
        click.echo("Dry run: nothing changed." if dry_run else f"Applied to VM {vm_id}.")


def _print_plan(p: apply_mod.Plan) -> None:
    width = max(len(f"{a.kind} {a.name}") for a in p.actions)
    click.echo(f"Plan for VM {p.vm_name}:")
    for a in p.actions:
        line = f"  {SYMBOLS[a.action]} {f'{a.kind} {a.name}':<{width}}  {a.action:<9}"
        line += f"  {a.detail}" if a.detail else ""
        line += f" ({a.id})" if a.id and a.kind != "memslot" else ""
        line += "  not in the layout: --prune deletes it" if a.action == "keep" else ""
        click.echo(line.rstrip())
        if a.was:  # on a line of its own under the new value, so that both read at 100 columns
            click.echo(f"    {'':<{width}}  {'was':<9}  {a.was}")
    counts = p.counts()
    click.echo(
        f"Plan: {counts['create']} to create, {counts['change']} to change, {counts['delete']} to delete, "
        f"{counts['unchanged']} unchanged" + (f", {counts['keep']} kept" if counts["keep"] else "") + "."
    )
    if p.empty:
        click.echo("Nothing to do: the VM matches the layout.")


def _print_checks(p: apply_mod.Plan) -> None:
    for label in p.checked_by_daemon:
        click.echo(f"  checked by the daemon (dry run): {label}")
    for label in p.checked_here:
        click.echo(f"  checked by memslotctl: {label}")
