"""What every memslotctl command shares: the connection options, the client, name lookup,
parameter types and the way results are printed."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import click

from ..client import Client
from ..client import errors as E
from . import output
from .sizes import parse_size

__all__ = ["State", "SIZE", "pass_state", "resolve_vm", "resolve_object", "emit", "emit_show"]


@dataclasses.dataclass
class State:
    socket: str | None = None
    url: str | None = None
    token: str | None = None
    json: bool = False
    _client: Client | None = None

    @property
    def client(self) -> Client:
        if self._client is None:
            self._client = Client(self.socket, url=self.url, token=self.token)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


pass_state = click.make_pass_decorator(State)


class SizeType(click.ParamType):
    """Bytes as people type them: 4096, 0x1000, 0x1_0000_0000, 2M, 1G."""

    name = "size"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        try:
            return parse_size(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


SIZE = SizeType()


def resolve_vm(state: State, ref: str) -> str:
    """A VM id (``vm-…``) as is, otherwise the id of the VM with that name."""
    if re.fullmatch(r"vm-[0-9a-f]+", ref):
        return ref
    for vm in state.client.list_vms().items:
        if vm.name == ref:
            return str(vm.id)
    raise E.NotFound(f"no VM named {ref!r}", status=404, code="VM_NOT_FOUND")


def resolve_object(state: State, vm_id: str, ref: str, kind: str) -> str:
    if re.fullmatch(r"(gmem|shm)-[0-9a-f]+", ref):
        return ref
    c = state.client
    items = (c.list_guest_memfds(vm_id) if kind == "gmem" else c.list_shared_memory(vm_id)).items
    for obj in items:
        if obj.name == ref:
            return str(obj.id)
    what = "guest_memfd" if kind == "gmem" else "shared memory"
    raise E.NotFound(
        f"no {what} named {ref!r} in VM {vm_id}",
        status=404,
        code="GMEM_NOT_FOUND" if kind == "gmem" else "SHM_NOT_FOUND",
    )


def emit(state: State, value: Any, columns: list[str], empty: str = "No resources found.") -> None:
    """A list as a table (or JSON); ``empty`` is said when there is no row ("" says nothing)."""
    data = output.plain(value)
    if state.json:
        output.print_json(data)
    elif data or empty:
        click.echo(output.table(data, columns, empty))


def emit_show(state: State, value: Any) -> None:
    """One object as key/value lines (or JSON)."""
    data = output.plain(value)
    if state.json:
        output.print_json(data)
    else:
        click.echo(output.show(data))


def done(state: State, message: str, **data: Any) -> None:
    """A mutation without a body to show: one line for people, an object for scripts."""
    if state.json:
        output.print_json(data)
    else:
        click.echo(message)
