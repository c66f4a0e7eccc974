"""``memslotctl``: every memslotd operation from a terminal (typer + rich).

Human tables by default, ``--json`` for scripts. Sizes as ``4096``, ``0x1000``, ``2M``, ``1G``.
VMs and memory objects may be named instead of id'd. Exit codes:
0 ok, 1 other error, 2 usage, 3 not found, 4 conflict, 5 server or host error / unreachable,
6 invalid request, 7 capability missing, 8 unauthorized, 9 quota, 10 cursor gone.
"""

from __future__ import annotations

import json
import re
import sys
from typing import Annotated, Any, NoReturn, Optional

import typer
import yaml
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from ..client import Client
from ..client import errors as E
from . import apply as apply_mod
from .sizes import format_size, parse_size

__all__ = ["app", "main", "EXIT_CODES"]

EXIT_CODES: dict[type[E.MemslotdError], int] = {
    E.NotFound: 3, E.Conflict: 4, E.ServerError: 5, E.TransportError: 5, E.BadRequest: 6, E.CapabilityMissing: 7,
    E.Unauthorized: 8, E.QuotaExceeded: 9, E.CursorGone: 10,
}

app = typer.Typer(help="Control memslotd: VMs, guest_memfds, shared memory, memslots, conversion, events.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
vm_app = typer.Typer(help="VMs", no_args_is_help=True)
gmem_app = typer.Typer(help="guest_memfds (the private part)", no_args_is_help=True)
shm_app = typer.Typer(help="shared memory (the userspace_addr part)", no_args_is_help=True)
slot_app = typer.Typer(help="memslots", no_args_is_help=True)
for sub, name in ((vm_app, "vm"), (gmem_app, "gmem"), (shm_app, "shm"), (slot_app, "slot")):
    app.add_typer(sub, name=name)

out = Console()
err = Console(stderr=True)


class State:
    socket: str | None = None
    url: str | None = None
    token: str | None = None
    json: bool = False
    client: Client | None = None


state = State()


@app.callback()
def _global(
    socket: Annotated[Optional[str], typer.Option(help="Unix socket [env MEMSLOTD_SOCKET]")] = None,
    url: Annotated[Optional[str], typer.Option(help="TCP URL, e.g. https://host:8443 [env MEMSLOTD_URL]")] = None,
    token: Annotated[Optional[str], typer.Option(help="bearer token for TCP [env MEMSLOTD_TOKEN]")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="machine-readable JSON output")] = False,
) -> None:
    state.socket, state.url, state.token, state.json = socket, url, token, json_output


def client() -> Client:
    if state.client is None:
        state.client = Client(state.socket, url=state.url, token=state.token)
    return state.client


def size_arg(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


Size = Annotated[str, typer.Argument(help="bytes: 4096, 0x1000, 2M, 1G")]


def emit(value: Any, columns: list[str] | None = None, title: str | None = None) -> None:
    """Print a model (or list of models) as JSON or as a table."""
    def plain(v: Any) -> Any:
        return v.model_dump(mode="json", by_alias=True) if hasattr(v, "model_dump") else v

    data = [plain(v) for v in value] if isinstance(value, list) else plain(value)
    if state.json:
        out.print_json(json.dumps(data))
        return
    rows = data if isinstance(data, list) else [data]
    if not rows:
        out.print("(none)")
        return
    cols = columns or list(rows[0].keys())
    table = Table(title=title)
    for c in cols:
        table.add_column(c, overflow="fold")  # fold, never hide part of an id or address
    for row in rows:
        table.add_row(*(_cell(c, row.get(c)) for c in cols))
    out.print(table)


def _cell(column: str, value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, int) and not isinstance(value, bool) and column in ("size", "memory_size", "length", "offset"):
        return format_size(value)
    if isinstance(value, int) and not isinstance(value, bool) and "addr" in column:
        return hex(value)
    if isinstance(value, dict):
        return ", ".join(f"{k}={_cell(k, v)}" for k, v in value.items())
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)


def resolve_vm(ref: str) -> str:
    if re.fullmatch(r"vm-[0-9a-f]+", ref):
        return ref
    for vm in client().list_vms().items:
        if vm.name == ref:
            return str(vm.id)
    raise E.NotFound(f"no VM named {ref!r}", status=404, code="VM_NOT_FOUND")


def resolve_object(vm_id: str, ref: str, kind: str) -> str:
    if re.fullmatch(r"(gmem|shm)-[0-9a-f]+", ref):
        return ref
    items = (client().list_guest_memfds(vm_id) if kind == "gmem" else client().list_shared_memory(vm_id)).items
    for obj in items:
        if obj.name == ref:
            return str(obj.id)
    raise E.NotFound(f"no {kind} named {ref!r}", status=404, code="NOT_FOUND")


# -- host -------------------------------------------------------------------------------------
@app.command()
def caps() -> None:
    """What this host's KVM offers (and what memslotd enforces itself)."""
    c = client().capabilities()
    if state.json:
        emit(c)
        return
    for key, value in c.model_dump().items():
        out.print(f"[bold]{key}[/bold]: {value}")


# -- VMs --------------------------------------------------------------------------------------
VM_COLUMNS = ["id", "name", "type", "memslots", "guest_memfds", "shared_memory_regions", "conversion_enforcement"]


@vm_app.command("create")
def vm_create(name: Annotated[Optional[str], typer.Option()] = None, type: str = "default") -> None:
    emit(client().create_vm(name=name, type=type), VM_COLUMNS)


@vm_app.command("list")
def vm_list() -> None:
    emit(client().list_vms().items, VM_COLUMNS, "VMs")


@vm_app.command("show")
def vm_show(vm: str) -> None:
    emit(client().get_vm(resolve_vm(vm)))


@vm_app.command("delete")
def vm_delete(vm: str) -> None:
    client().delete_vm(resolve_vm(vm))


# -- guest_memfd ------------------------------------------------------------------------------
GMEM_COLUMNS = ["id", "name", "size", "flags", "bindings"]


@gmem_app.command("create")
def gmem_create(vm: str, size: Size, flag: Annotated[list[str], typer.Option(help="mmap, init_shared")] = [],
                name: Annotated[Optional[str], typer.Option()] = None) -> None:
    emit(client().create_guest_memfd(resolve_vm(vm), size_arg(size), flag, name=name), GMEM_COLUMNS)


@gmem_app.command("list")
def gmem_list(vm: str) -> None:
    emit(client().list_guest_memfds(resolve_vm(vm)).items, GMEM_COLUMNS, "guest_memfds")


@gmem_app.command("show")
def gmem_show(vm: str, gmem: str) -> None:
    vm_id = resolve_vm(vm)
    emit(client().get_guest_memfd(vm_id, resolve_object(vm_id, gmem, "gmem")))


@gmem_app.command("delete")
def gmem_delete(vm: str, gmem: str) -> None:
    vm_id = resolve_vm(vm)
    client().delete_guest_memfd(vm_id, resolve_object(vm_id, gmem, "gmem"))


@gmem_app.command("allocate")
def gmem_allocate(vm: str, gmem: str, offset: Size, length: Size) -> None:
    vm_id = resolve_vm(vm)
    client().allocate(vm_id, resolve_object(vm_id, gmem, "gmem"), size_arg(offset), size_arg(length))


@gmem_app.command("punch")
def gmem_punch(vm: str, gmem: str, offset: Size, length: Size) -> None:
    vm_id = resolve_vm(vm)
    emit(client().punch_hole(vm_id, resolve_object(vm_id, gmem, "gmem"), size_arg(offset), size_arg(length)))


# -- shared memory ----------------------------------------------------------------------------
SHM_COLUMNS = ["id", "name", "size", "hugepages", "used_by_slots"]


@shm_app.command("create")
def shm_create(vm: str, size: Size, hugepages: Annotated[Optional[str], typer.Option(help="2M or 1G")] = None,
               name: Annotated[Optional[str], typer.Option()] = None) -> None:
    emit(client().create_shared_memory(resolve_vm(vm), size_arg(size), hugepages, name=name), SHM_COLUMNS)


@shm_app.command("list")
def shm_list(vm: str) -> None:
    emit(client().list_shared_memory(resolve_vm(vm)).items, SHM_COLUMNS, "shared memory")


@shm_app.command("show")
def shm_show(vm: str, shm: str) -> None:
    vm_id = resolve_vm(vm)
    emit(client().get_shared_memory(vm_id, resolve_object(vm_id, shm, "shm")))


@shm_app.command("delete")
def shm_delete(vm: str, shm: str) -> None:
    vm_id = resolve_vm(vm)
    client().delete_shared_memory(vm_id, resolve_object(vm_id, shm, "shm"))


# -- memslots ---------------------------------------------------------------------------------
SLOT_COLUMNS = ["slot", "guest_phys_addr", "memory_size", "flags", "shared", "private", "guest_backing"]


@slot_app.command("put")
def slot_put(vm: str, slot: Annotated[Optional[int], typer.Argument(help="slot id (omit: lowest free)")] = None,
             gpa: Annotated[str, typer.Option(help="guest-physical address")] = "0",
             size: Annotated[str, typer.Option(help="memory size")] = "0",
             shm: Annotated[Optional[str], typer.Option(help="shared memory id or name")] = None,
             shm_offset: str = "0",
             gmem: Annotated[Optional[str], typer.Option(help="guest_memfd id or name")] = None,
             gmem_offset: str = "0",
             flag: Annotated[list[str], typer.Option(help="log_dirty_pages, readonly")] = [],
             dry_run: Annotated[bool, typer.Option(help="check every rule, change nothing")] = False,
             if_match: Annotated[Optional[str], typer.Option(help="act only if the slot's ETag matches")] = None) -> None:
    """Create a memslot (idempotent by slot id) with a shared part, a private part, or both."""
    vm_id = resolve_vm(vm)
    parts: dict[str, Any] = {"flags": flag, "dry_run": dry_run, "if_match": if_match}
    if shm:
        parts.update(shared_memory_id=resolve_object(vm_id, shm, "shm"), shared_offset=size_arg(shm_offset))
    if gmem:
        parts.update(guest_memfd_id=resolve_object(vm_id, gmem, "gmem"), private_offset=size_arg(gmem_offset))
    emit(client().put_memslot(vm_id, slot, size_arg(gpa), size_arg(size), **parts), SLOT_COLUMNS)


@slot_app.command("list")
def slot_list(vm: str, gpa_start: str = "0", gpa_end: Annotated[Optional[str], typer.Option()] = None,
              limit: int = 100, all_pages: Annotated[bool, typer.Option("--all", help="every page")] = False) -> None:
    vm_id = resolve_vm(vm)
    items, cursor = [], None
    while True:
        page = client().list_memslots(vm_id, size_arg(gpa_start), size_arg(gpa_end) if gpa_end else None,
                                      min(limit, 1000), cursor)
        items += page.items
        cursor = page.next_cursor
        if not all_pages or cursor is None:
            break
    emit(items, SLOT_COLUMNS, f"memslots ({page.total} in all)")


@slot_app.command("show")
def slot_show(vm: str, slot: int) -> None:
    emit(client().get_memslot(resolve_vm(vm), slot))


@slot_app.command("delete")
def slot_delete(vm: str, slot: int, dry_run: Annotated[bool, typer.Option(help="check, change nothing")] = False,
                if_match: Annotated[Optional[str], typer.Option(help="act only if the ETag matches")] = None) -> None:
    client().delete_memslot(resolve_vm(vm), slot, dry_run=dry_run, if_match=if_match)


@slot_app.command("dirty-log")
def slot_dirty_log(vm: str, slot: int) -> None:
    """Pages the guest wrote since the last fetch (fetching resets the log)."""
    log = client().dirty_log(resolve_vm(vm), slot)
    if state.json:
        emit(log)
    else:
        emit(log.ranges, ["guest_phys_addr", "size"], f"slot {log.slot}: {log.dirty_pages} of {log.pages} pages dirty")


@slot_app.command("batch")
def slot_batch(vm: str, file: Annotated[typer.FileText, typer.Option("-f", "--file", help="YAML/JSON list of ops")],
               dry_run: Annotated[bool, typer.Option(help="validate every chunk, change nothing")] = False) -> None:
    """Apply a file of create/delete ops in batches of 4096 (each all-or-nothing), with progress."""
    vm_id = resolve_vm(vm)
    ops = yaml.safe_load(file)
    ops = ops.get("ops", ops) if isinstance(ops, dict) else ops
    for op in ops:
        for key in ("guest_phys_addr", "memory_size"):
            if key in op:
                op[key] = parse_size(op[key])
    done = 0
    with Progress(console=err, disable=state.json) as progress:
        task = progress.add_task("memslots", total=len(ops))
        for start in range(0, len(ops), 4096):
            chunk = ops[start:start + 4096]
            client().batch(vm_id, chunk, dry_run=dry_run)
            done += len(chunk)
            progress.update(task, advance=len(chunk))
    emit({"checked" if dry_run else "applied": done})


# -- memory -----------------------------------------------------------------------------------
@app.command()
def convert(vm: str, gpa: Size, size: Size, to: Annotated[str, typer.Option(help="private or shared")],
            discard: Annotated[bool, typer.Option(help="discard the stale side")] = True,
            chunk: Annotated[str, typer.Option(help="split large ranges (progress shown)")] = "64G") -> None:
    """Make a GPA range private or shared (idempotent, so splitting into chunks is safe)."""
    vm_id, start, total, step = resolve_vm(vm), size_arg(gpa), size_arg(size), size_arg(chunk)
    changed: list[Any] = []
    unchanged: list[Any] = []
    enforcement = "daemon"
    with Progress(console=err, disable=state.json or total <= step) as progress:
        task = progress.add_task(f"to {to}", total=total)
        for offset in range(0, total, step):
            n = min(step, total - offset)
            result = client().convert(vm_id, start + offset, n, to, discard)
            changed += result.model_dump(by_alias=True)["changed"]
            unchanged += result.model_dump()["unchanged"]
            enforcement = result.enforcement
            progress.update(task, advance=n)
    if state.json:
        emit({"changed": changed, "unchanged": unchanged, "enforcement": enforcement})
    else:
        emit(changed, ["slot", "guest_phys_addr", "size", "from", "to"], f"changed (enforcement: {enforcement})")


@app.command()
def attrs(vm: str, gpa_start: str = "0", gpa_end: Annotated[Optional[str], typer.Option()] = None) -> None:
    """Private/shared ranges (run-length)."""
    result = client().attributes(resolve_vm(vm), size_arg(gpa_start), size_arg(gpa_end) if gpa_end else None)
    emit(result.ranges, ["guest_phys_addr", "size", "state"], f"attributes (enforcement: {result.enforcement})")


@app.command()
def probe(vm: str, read: Annotated[list[str], typer.Option(help="GPA:LENGTH")] = [],
          write: Annotated[list[str], typer.Option(help="GPA:HEXDATA")] = []) -> None:
    """Run the guest probe: what does a real vCPU see at these addresses? (writes run before reads)"""
    ops: list[dict[str, Any]] = []
    for w in write:
        gpa, _, data = w.partition(":")
        ops.append({"op": "write", "guest_phys_addr": size_arg(gpa), "length": len(data) // 2, "data_hex": data})
    for r in read:
        gpa, _, length = r.partition(":")
        ops.append({"op": "read", "guest_phys_addr": size_arg(gpa), "length": size_arg(length or "8")})
    if not ops:
        raise typer.BadParameter("give at least one --read or --write")
    emit(client().probe(resolve_vm(vm), ops).results, ["op", "guest_phys_addr", "length", "ok", "state", "data_hex", "exit"])


@app.command()
def events(vm: Annotated[Optional[str], typer.Option("--vm")] = None,
           type_: Annotated[list[str], typer.Option("--type", help="event type or glob, e.g. memory.*")] = [],
           since: Annotated[Optional[int], typer.Option(help="resume after this seq")] = None,
           initial_state: bool = False,
           follow: Annotated[bool, typer.Option("--follow", "-f", help="keep streaming")] = False) -> None:
    """Print events (one JSON object per line with --json). Resumes by itself while following."""
    vm_id = resolve_vm(vm) if vm else None
    if not follow:
        text = client().events_page(since if since is not None else 0, vm_id=vm_id, types=type_ or None)
        for line in text.splitlines():
            _print_event(json.loads(line))
        return
    for event in client().events(since_seq=since, vm_id=vm_id, types=type_ or None, initial_state=initial_state):
        _print_event(event)


def _print_event(event: dict[str, Any]) -> None:
    if state.json:
        sys.stdout.write(json.dumps(event) + "\n")
        sys.stdout.flush()
        return
    data = event.get("data") or {k: v for k, v in event.items() if k not in ("type", "boot_id", "time")}
    out.print(f"[dim]{event.get('seq', '-')}[/dim] [bold]{event['type']}[/bold] {event.get('vm_id') or ''} "
              f"{json.dumps(data, separators=(',', ':'))}", highlight=False, soft_wrap=True)


@app.command("apply")
def apply_layout(file: Annotated[typer.FileText, typer.Option("-f", "--file", help="layout YAML")],
                 dry_run: Annotated[bool, typer.Option(help="only show the plan")] = False,
                 prune: Annotated[bool, typer.Option(help="delete slots and objects not in the layout")] = True) -> None:
    """Declare a VM's memory layout (guest_memfds, shared memory, memslots) and converge to it."""
    layout = yaml.safe_load(file)
    p = apply_mod.plan(client(), layout, prune=prune)
    if not dry_run and not p.empty:
        with Progress(console=err, disable=state.json) as progress:
            task = progress.add_task("memslots", total=len(p.delete_slots) + len(p.create_slots))
            apply_mod.execute(client(), p, lambda n: progress.update(task, advance=n))
    summary = p.summary() | {"changed": not p.empty, "dry_run": dry_run}
    if state.json:
        emit(summary)
    else:
        out.print(summary)


def _fail(exc: E.MemslotdError) -> NoReturn:
    code = next((c for cls, c in EXIT_CODES.items() if isinstance(exc, cls)), 1)
    if state.json:
        sys.stderr.write(json.dumps({"error": exc.code, "status": exc.status, "detail": str(exc),
                                     "problem": exc.problem}) + "\n")
    else:
        err.print(f"[red]error[/red] {exc}")
    raise SystemExit(code)


def main() -> None:
    try:
        app()  # standalone: click reports usage errors itself (exit 2)
    except E.MemslotdError as exc:
        _fail(exc)
    finally:
        if state.client is not None:
            state.client.close()
