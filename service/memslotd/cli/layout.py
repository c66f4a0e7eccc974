"""The layout file of ``memslotctl apply``: a pydantic model, unknown keys rejected.

Keys follow the API's names (``guest_phys_addr``, ``memory_size``, ``flags``, ``offset``);
objects are declared by name and memslots refer to them by name. Sizes, offsets and addresses
are bytes, written as the CLI takes them: ``4096``, ``0x1000``, ``0x1_0000_0000``, ``2M``, ``4G``.

``load(path)`` returns a checked :class:`Layout` or raises :class:`LayoutError` listing every
broken rule with the path of its key (``memslots[1].private.guest_memfd``). The JSON Schema
(``docs/layout.schema.json``, for editors) is generated from these models:
``memslotctl schema > docs/layout.schema.json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, WithJsonSchema

from ..api.schemas import MAX_JSON_INT
from .sizes import SIZE_PATTERN, parse_size

__all__ = ["Layout", "GuestMemfdSpec", "SharedMemorySpec", "MemslotSpec", "LayoutError", "load", "schema"]

_SIZE_SCHEMA = {
    "anyOf": [{"type": "integer", "minimum": 0, "maximum": MAX_JSON_INT}, {"type": "string", "pattern": SIZE_PATTERN}],
    "description": "bytes: 4096, 0x1000, 0x1_0000_0000, 2M, 4G",
}


def _bytes(value: Any) -> Any:
    if isinstance(value, str):
        return parse_size(value)  # ValueError -> a validation error with the key's path
    return value


Bytes = Annotated[int, BeforeValidator(_bytes), Field(ge=0, le=MAX_JSON_INT), WithJsonSchema(_SIZE_SCHEMA)]
Size = Annotated[int, BeforeValidator(_bytes), Field(gt=0, le=MAX_JSON_INT), WithJsonSchema(_SIZE_SCHEMA)]
Name = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GuestMemfdSpec(_Strict):
    """A guest_memfd (the private part of memslots), found on the VM by its name."""

    name: Name
    size: Size
    flags: list[Literal["mmap", "init_shared"]] = []


class SharedMemorySpec(_Strict):
    """Daemon-owned shared memory (the userspace_addr part), found on the VM by its name."""

    name: Name
    size: Size
    hugepages: Literal["2M", "1G"] | None = None


class SharedRef(_Strict):
    shared_memory: Name = Field(description="name of a shared_memory entry of this layout")
    offset: Bytes = 0


class PrivateRef(_Strict):
    guest_memfd: Name = Field(description="name of a guest_memfds entry of this layout")
    offset: Bytes = 0


class MemslotSpec(_Strict):
    slot: Annotated[int, Field(ge=0, le=32767, description="slot id")]
    guest_phys_addr: Bytes
    memory_size: Size
    flags: list[Literal["log_dirty_pages", "readonly"]] = []
    shared: SharedRef | None = None
    private: PrivateRef | None = None


class Layout(_Strict):
    """One VM's memory: what ``memslotctl apply`` converges the VM to."""

    model_config = ConfigDict(
        extra="forbid",
        title="memslotd layout",
        json_schema_extra={"$schema": "https://json-schema.org/draft/2020-12/schema"},
    )

    vm: Name = Field(description="the VM's name; created when no VM has it")
    guest_memfds: list[GuestMemfdSpec] = []
    shared_memory: list[SharedMemorySpec] = []
    memslots: list[MemslotSpec] = []


class LayoutError(ValueError):
    """Every broken rule of a layout file: ``problems`` are (key path, rule) pairs."""

    def __init__(self, file: str, problems: list[tuple[str, str]]):
        self.file, self.problems = file, problems
        super().__init__("\n".join(f"{file}: {path or '(top level)'}: {rule}" for path, rule in problems))


def key_path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _rule(error: Any) -> str:
    if error["type"] == "extra_forbidden":
        return "unknown key (see docs/cli.md for the layout format)"
    if error["type"] == "missing":
        return "required key is missing"
    msg = str(error["msg"])
    return msg.removeprefix("Value error, ")


def _structure(layout: Layout) -> list[tuple[str, str]]:
    """Rules between entries: unique names and ids, references to declared objects, the
    slot rules that need no host facts (the plan checks the rest against the daemon)."""
    problems: list[tuple[str, str]] = []
    groups: list[tuple[str, list[Any]]] = [
        ("guest_memfds", layout.guest_memfds),
        ("shared_memory", layout.shared_memory),
    ]
    for key, entries in groups:
        seen: set[str] = set()
        for i, entry in enumerate(entries):
            if entry.name in seen:
                problems.append((f"{key}[{i}].name", f"{entry.name!r} is declared twice"))
            seen.add(entry.name)
    gmems = {g.name for g in layout.guest_memfds}
    shms = {m.name for m in layout.shared_memory}
    slots: set[int] = set()
    for i, s in enumerate(layout.memslots):
        where = f"memslots[{i}]"
        if s.slot in slots:
            problems.append((f"{where}.slot", f"slot {s.slot} is declared twice"))
        slots.add(s.slot)
        if s.shared is None and s.private is None:
            problems.append((where, "a memslot needs a shared part, a private part, or both"))
        if s.private is not None and s.flags:
            problems.append((f"{where}.flags", "flags cannot be combined with a private (guest_memfd) part"))
        if s.private is not None and s.private.guest_memfd not in gmems:
            problems.append(
                (
                    f"{where}.private.guest_memfd",
                    f"{s.private.guest_memfd!r} is not declared in guest_memfds ({_names(gmems)})",
                )
            )
        if s.shared is not None and s.shared.shared_memory not in shms:
            problems.append(
                (
                    f"{where}.shared.shared_memory",
                    f"{s.shared.shared_memory!r} is not declared in shared_memory ({_names(shms)})",
                )
            )
    return problems


def _names(names: set[str]) -> str:
    return "declared: " + ", ".join(sorted(names)) if names else "none is declared"


def parse(text: str, file: str = "<layout>") -> Layout:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise LayoutError(file, [("", f"not valid YAML: {exc}".replace("\n", " "))]) from None
    if not isinstance(data, dict):
        raise LayoutError(file, [("", "the layout is a mapping with keys vm, guest_memfds, shared_memory, memslots")])
    try:
        layout = Layout.model_validate(data)
    except ValidationError as exc:
        raise LayoutError(file, [(key_path(e["loc"]), _rule(e)) for e in exc.errors()]) from None
    problems = _structure(layout)
    if problems:
        raise LayoutError(file, problems)
    return layout


def load(path: str) -> Layout:
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
    except OSError as exc:
        raise LayoutError(path, [("", f"cannot read: {exc.strerror or exc}")]) from None
    return parse(text, path)


def schema() -> str:
    return json.dumps(Layout.model_json_schema(), indent=2) + "\n"
