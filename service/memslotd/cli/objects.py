"""``memslotctl vm|gmem|shm|slot …``: the objects of a VM."""

from __future__ import annotations

import sys
from typing import Any

import click
import yaml
from rich.console import Console
from rich.progress import Progress

from ..api.schemas import MAX_BATCH_OPS
from ._common import SIZE, State, done, emit, emit_show, pass_state, resolve_object, resolve_vm

__all__ = ["vm", "gmem", "shm", "slot"]

VM_ARG = click.argument("vm", metavar="VM")
VM_COLUMNS = [
    "id",
    "name",
    "type",
    "memslots",
    "guest_memfds",
    "shared_memory_regions",
    "guest_memfd_bytes",
    "shared_memory_bytes",
    "created_at",
]
GMEM_COLUMNS = ["id", "name", "size", "flags", "bindings", "created_at"]
SHM_COLUMNS = ["id", "name", "size", "hugepages", "used_by_slots", "created_at"]
SLOT_COLUMNS = ["slot", "guest_phys_addr", "memory_size", "flags", "shared", "private", "guest_backing"]


def _vm_rows(items: list[Any]) -> list[dict[str, Any]]:
    rows = []
    for vm in items:
        row = vm.model_dump(mode="json")
        row["memslots"] = f"{vm.memslots.used}/{vm.memslots.max}"
        rows.append(row)
    return rows


# -- VMs --------------------------------------------------------------------------------------
@click.group()
def vm() -> None:
    """VMs: each owns its memslots, guest_memfds and shared memory.

    \b
    Example:
      memslotctl vm list
    """


@vm.command("create")
@click.option("--name", metavar="NAME", help="unique name (commands accept it instead of the id)")
@click.option(
    "--type",
    "vm_type",
    default="default",
    show_default=True,
    metavar="TYPE",
    help="KVM VM type: default, sw_protected, sev, sev_es, snp, tdx",
)
@pass_state
def vm_create(state: State, name: str | None, vm_type: str) -> None:
    """Create a VM.

    \b
    Example:
      memslotctl vm create --name demo
    """
    emit_show(state, state.client.create_vm(name=name, type=vm_type))


@vm.command("list")
@pass_state
def vm_list(state: State) -> None:
    """List VMs (MEMSLOTS is used/max).

    \b
    Example:
      memslotctl vm list
    """
    items = state.client.list_vms().items
    if state.json:
        emit(state, items, VM_COLUMNS)
    else:
        emit(state, _vm_rows(items), VM_COLUMNS)


@vm.command("show")
@VM_ARG
@pass_state
def vm_show(state: State, vm: str) -> None:
    """Show one VM: slot budget, object counts, bytes.

    \b
    Example:
      memslotctl vm show demo
    """
    emit_show(state, state.client.get_vm(resolve_vm(state, vm)))


@vm.command("delete")
@VM_ARG
@pass_state
def vm_delete(state: State, vm: str) -> None:
    """Delete a VM and every memslot and memory object it owns.

    \b
    Example:
      memslotctl vm delete demo
    """
    vm_id = resolve_vm(state, vm)
    state.client.delete_vm(vm_id)
    done(state, f"VM {vm_id} deleted", deleted=vm_id)


# -- guest_memfd ------------------------------------------------------------------------------
@click.group()
def gmem() -> None:
    """guest_memfds: the private part of memslots.

    \b
    Example:
      memslotctl gmem list demo
    """


@gmem.command("create")
@VM_ARG
@click.argument("size", type=SIZE, metavar="SIZE")
@click.option(
    "--flag",
    "flags",
    multiple=True,
    type=click.Choice(["mmap", "init_shared"]),
    help="mmap: the host may map it; init_shared: starts shared (repeatable)",
)
@click.option("--name", metavar="NAME", help="unique name within the VM")
@pass_state
def gmem_create(state: State, vm: str, size: int, flags: tuple[str, ...], name: str | None) -> None:
    """Create a guest_memfd of SIZE bytes (4096, 0x1000, 2M, 1G).

    \b
    Example:
      memslotctl gmem create demo 64M --flag mmap --flag init_shared --name ram
    """
    emit_show(state, state.client.create_guest_memfd(resolve_vm(state, vm), size, list(flags), name=name))


@gmem.command("list")
@VM_ARG
@pass_state
def gmem_list(state: State, vm: str) -> None:
    """List a VM's guest_memfds (BINDINGS: the slots bound to each).

    \b
    Example:
      memslotctl gmem list demo
    """
    items = state.client.list_guest_memfds(resolve_vm(state, vm)).items
    rows = (
        items
        if state.json
        else [{**g.model_dump(mode="json"), "bindings": [b.slot for b in g.bindings]} for g in items]
    )
    emit(state, rows, GMEM_COLUMNS)


@gmem.command("show")
@VM_ARG
@click.argument("gmem_ref", metavar="GMEM")
@pass_state
def gmem_show(state: State, vm: str, gmem_ref: str) -> None:
    """Show one guest_memfd (by name or id) with its bindings.

    \b
    Example:
      memslotctl gmem show demo ram
    """
    vm_id = resolve_vm(state, vm)
    emit_show(state, state.client.get_guest_memfd(vm_id, resolve_object(state, vm_id, gmem_ref, "gmem")))


@gmem.command("delete")
@VM_ARG
@click.argument("gmem_ref", metavar="GMEM")
@pass_state
def gmem_delete(state: State, vm: str, gmem_ref: str) -> None:
    """Delete a guest_memfd no memslot uses.

    \b
    Example:
      memslotctl gmem delete demo ram
    """
    vm_id = resolve_vm(state, vm)
    gmem_id = resolve_object(state, vm_id, gmem_ref, "gmem")
    state.client.delete_guest_memfd(vm_id, gmem_id)
    done(state, f"guest_memfd {gmem_id} deleted", deleted=gmem_id)


@gmem.command("allocate")
@VM_ARG
@click.argument("gmem_ref", metavar="GMEM")
@click.argument("offset", type=SIZE, metavar="OFFSET")
@click.argument("length", type=SIZE, metavar="LENGTH")
@pass_state
def gmem_allocate(state: State, vm: str, gmem_ref: str, offset: int, length: int) -> None:
    """Populate a range of a guest_memfd (fallocate).

    \b
    Example:
      memslotctl gmem allocate demo ram 0 2M
    """
    vm_id = resolve_vm(state, vm)
    gmem_id = resolve_object(state, vm_id, gmem_ref, "gmem")
    state.client.allocate(vm_id, gmem_id, offset, length)
    done(
        state,
        f"guest_memfd {gmem_id}: [{offset:#x}, {offset + length:#x}) allocated",
        guest_memfd_id=gmem_id,
        offset=offset,
        length=length,
    )


@gmem.command("punch")
@VM_ARG
@click.argument("gmem_ref", metavar="GMEM")
@click.argument("offset", type=SIZE, metavar="OFFSET")
@click.argument("length", type=SIZE, metavar="LENGTH")
@pass_state
def gmem_punch(state: State, vm: str, gmem_ref: str, offset: int, length: int) -> None:
    """Discard a range of a guest_memfd (punch a hole); shows the GPA ranges it invalidated.

    \b
    Example:
      memslotctl gmem punch demo ram 0 2M
    """
    vm_id = resolve_vm(state, vm)
    emit_show(state, state.client.punch_hole(vm_id, resolve_object(state, vm_id, gmem_ref, "gmem"), offset, length))


# -- shared memory ----------------------------------------------------------------------------
@click.group()
def shm() -> None:
    """Shared memory: daemon-owned memory, the userspace_addr part of memslots.

    \b
    Example:
      memslotctl shm list demo
    """


@shm.command("create")
@VM_ARG
@click.argument("size", type=SIZE, metavar="SIZE")
@click.option("--hugepages", type=click.Choice(["2M", "1G"]), help="back it with huge pages")
@click.option("--name", metavar="NAME", help="unique name within the VM")
@pass_state
def shm_create(state: State, vm: str, size: int, hugepages: str | None, name: str | None) -> None:
    """Create SIZE bytes of shared memory.

    \b
    Example:
      memslotctl shm create demo 16M --name low
    """
    emit_show(state, state.client.create_shared_memory(resolve_vm(state, vm), size, hugepages, name=name))


@shm.command("list")
@VM_ARG
@pass_state
def shm_list(state: State, vm: str) -> None:
    """List a VM's shared memory (USED_BY_SLOTS: the slots mapping each).

    \b
    Example:
      memslotctl shm list demo
    """
    emit(state, state.client.list_shared_memory(resolve_vm(state, vm)).items, SHM_COLUMNS)


@shm.command("show")
@VM_ARG
@click.argument("shm_ref", metavar="SHM")
@pass_state
def shm_show(state: State, vm: str, shm_ref: str) -> None:
    """Show one shared memory region (by name or id).

    \b
    Example:
      memslotctl shm show demo low
    """
    vm_id = resolve_vm(state, vm)
    emit_show(state, state.client.get_shared_memory(vm_id, resolve_object(state, vm_id, shm_ref, "shm")))


@shm.command("delete")
@VM_ARG
@click.argument("shm_ref", metavar="SHM")
@pass_state
def shm_delete(state: State, vm: str, shm_ref: str) -> None:
    """Delete shared memory no memslot uses.

    \b
    Example:
      memslotctl shm delete demo low
    """
    vm_id = resolve_vm(state, vm)
    shm_id = resolve_object(state, vm_id, shm_ref, "shm")
    state.client.delete_shared_memory(vm_id, shm_id)
    done(state, f"shared memory {shm_id} deleted", deleted=shm_id)


# -- memslots ---------------------------------------------------------------------------------
@click.group()
def slot() -> None:
    """Memslots: GPA ranges backed by shared memory, a guest_memfd, or both.

    \b
    Example:
      memslotctl slot list demo
    """


@slot.command("put")
@VM_ARG
@click.argument("slot_id", metavar="[SLOT]", type=click.IntRange(0), required=False)
@click.option("--gpa", type=SIZE, required=True, metavar="ADDR", help="guest-physical address, e.g. 4G or 0x100000000")
@click.option("--size", type=SIZE, required=True, metavar="SIZE", help="memory size, e.g. 64M")
@click.option("--shm", "shm_ref", metavar="SHM", help="shared memory (name or id): the shared part")
@click.option("--shm-offset", type=SIZE, default=0, metavar="OFFSET", help="offset in the shared memory")
@click.option("--gmem", "gmem_ref", metavar="GMEM", help="guest_memfd (name or id): the private part")
@click.option("--gmem-offset", type=SIZE, default=0, metavar="OFFSET", help="offset in the guest_memfd")
@click.option(
    "--flag", "flags", multiple=True, type=click.Choice(["log_dirty_pages", "readonly"]), help="slot flag (repeatable)"
)
@click.option("--dry-run", is_flag=True, help="check every rule, change nothing")
@click.option("--if-match", metavar="ETAG", help="act only if the slot's ETag matches")
@pass_state
def slot_put(
    state: State,
    vm: str,
    slot_id: int | None,
    gpa: int,
    size: int,
    shm_ref: str | None,
    shm_offset: int,
    gmem_ref: str | None,
    gmem_offset: int,
    flags: tuple[str, ...],
    dry_run: bool,
    if_match: str | None,
) -> None:
    """Create a memslot (idempotent by SLOT id; omitted: the lowest free id).

    \b
    Example:
      memslotctl slot put demo 0 --gpa 4G --size 64M --gmem ram
      memslotctl slot put demo 1 --gpa 0 --size 16M --shm low --flag log_dirty_pages
    """
    if not shm_ref and not gmem_ref:
        raise click.UsageError("give --shm, --gmem or both: a memslot needs a backing")
    vm_id = resolve_vm(state, vm)
    parts: dict[str, Any] = {"flags": list(flags), "dry_run": dry_run, "if_match": if_match}
    if shm_ref:
        parts.update(shared_memory_id=resolve_object(state, vm_id, shm_ref, "shm"), shared_offset=shm_offset)
    if gmem_ref:
        parts.update(guest_memfd_id=resolve_object(state, vm_id, gmem_ref, "gmem"), private_offset=gmem_offset)
    answer = state.client.put_memslot(vm_id, slot_id, gpa, size, **parts)
    if dry_run and not state.json:
        click.echo(f"Dry run: the daemon accepts memslot {slot_id}; nothing changed. It would be:")
    emit_show(state, answer)


@slot.command("list")
@VM_ARG
@click.option("--gpa-start", type=SIZE, default=0, metavar="ADDR", help="from this GPA")
@click.option("--gpa-end", type=SIZE, metavar="ADDR", help="up to this GPA")
@click.option(
    "--limit", type=click.IntRange(1, 1000), default=100, show_default=True, metavar="N", help="slots per page"
)
@click.option("--all", "all_pages", is_flag=True, help="every page")
@pass_state
def slot_list(state: State, vm: str, gpa_start: int, gpa_end: int | None, limit: int, all_pages: bool) -> None:
    """List memslots in GPA order.

    \b
    Example:
      memslotctl slot list demo --all
    """
    vm_id = resolve_vm(state, vm)
    items: list[Any] = []
    cursor = None
    while True:
        page = state.client.list_memslots(vm_id, gpa_start, gpa_end, limit, cursor)
        items += page.items
        cursor = page.next_cursor
        if not all_pages or cursor is None:
            break
    emit(state, items, SLOT_COLUMNS)
    if not state.json and cursor is not None:
        click.echo(f"({len(items)} of {page.total} shown; --all lists every page)", err=True)


@slot.command("show")
@VM_ARG
@click.argument("slot_id", metavar="SLOT", type=click.IntRange(0))
@pass_state
def slot_show(state: State, vm: str, slot_id: int) -> None:
    """Show one memslot, every field on its own line.

    \b
    Example:
      memslotctl slot show demo 0
    """
    emit_show(state, state.client.get_memslot(resolve_vm(state, vm), slot_id))


@slot.command("delete")
@VM_ARG
@click.argument("slot_id", metavar="SLOT", type=click.IntRange(0))
@click.option("--dry-run", is_flag=True, help="check, change nothing")
@click.option("--if-match", metavar="ETAG", help="act only if the slot's ETag matches")
@pass_state
def slot_delete(state: State, vm: str, slot_id: int, dry_run: bool, if_match: str | None) -> None:
    """Delete a memslot.

    \b
    Example:
      memslotctl slot delete demo 0
    """
    state.client.delete_memslot(resolve_vm(state, vm), slot_id, dry_run=dry_run, if_match=if_match)
    done(
        state,
        f"memslot {slot_id} {'can be deleted (dry run)' if dry_run else 'deleted'}",
        slot=slot_id,
        dry_run=dry_run,
    )


@slot.command("dirty-log")
@VM_ARG
@click.argument("slot_id", metavar="SLOT", type=click.IntRange(0))
@pass_state
def slot_dirty_log(state: State, vm: str, slot_id: int) -> None:
    """Pages the guest wrote since the last fetch (fetching resets the log).

    \b
    Example:
      memslotctl slot dirty-log demo 1
    """
    log = state.client.dirty_log(resolve_vm(state, vm), slot_id)
    if state.json:
        emit_show(state, log)
        return
    click.echo(f"slot {log.slot}: {log.dirty_pages} of {log.pages} pages dirty")
    emit(state, log.ranges, ["guest_phys_addr", "size"], empty="")  # the count line said "0 ... dirty"


@slot.command("batch")
@VM_ARG
@click.option(
    "-f",
    "--file",
    "file",
    type=click.File(),
    required=True,
    metavar="FILE",
    help="YAML or JSON list of ops (or {ops: [...]}); - reads stdin",
)
@click.option("--dry-run", is_flag=True, help="check every chunk, change nothing")
@pass_state
def slot_batch(state: State, vm: str, file: Any, dry_run: bool) -> None:
    """Apply create/delete ops in batches of 4096, each all or nothing.

    \b
    Example:
      memslotctl slot batch demo -f ops.yaml --dry-run
    """
    from .sizes import parse_size

    vm_id = resolve_vm(state, vm)
    ops = yaml.safe_load(file)
    ops = ops.get("ops", ops) if isinstance(ops, dict) else ops
    if not isinstance(ops, list):
        raise click.UsageError("the file holds a list of ops, or a mapping with key ops")
    for op in ops:
        for key in ("guest_phys_addr", "memory_size"):
            if isinstance(op, dict) and key in op:
                try:
                    op[key] = parse_size(op[key])
                except ValueError as exc:
                    raise click.UsageError(f"op {ops.index(op)}: {key}: {exc}") from None
    done_ops = 0
    quiet = state.json or len(ops) <= MAX_BATCH_OPS or not sys.stderr.isatty()  # one call: nothing to show
    with Progress(console=Console(stderr=True), disable=quiet, transient=True) as progress:
        task = progress.add_task("memslots", total=len(ops))
        for start in range(0, len(ops), MAX_BATCH_OPS):
            chunk = ops[start : start + MAX_BATCH_OPS]
            state.client.batch(vm_id, chunk, dry_run=dry_run)
            done_ops += len(chunk)
            progress.update(task, advance=len(chunk))
    word = "checked" if dry_run else "applied"
    done(state, f"{done_ops} ops {word}", **{word: done_ops})
