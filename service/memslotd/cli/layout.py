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
    """A size or address: an integer or a string the CLI takes. YAML's ``true``/``yes`` and
    ``1.5`` are refused (pydantic alone would take ``true`` as 1)."""
    if isinstance(value, str):
        return parse_size(value)  # ValueError -> a validation error with the key's path
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"not a size: {_shown(value)} (try 4096, 0x1000, 2M, 1G)")
    return value


def _shown(value: Any) -> str:
    """A value as the layout's author would recognise it: 'text', and true, null, 1.5 as YAML
    spells them (Python would say True, None)."""
    if isinstance(value, str):
        return repr(value)
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


Bytes = Annotated[int, BeforeValidator(_bytes), Field(ge=0, le=MAX_JSON_INT), WithJsonSchema(_SIZE_SCHEMA)]
Size = Annotated[int, BeforeValidator(_bytes), Field(gt=0, le=MAX_JSON_INT), WithJsonSchema(_SIZE_SCHEMA)]
Name = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")]


class _Strict(BaseModel):
    # strict: a slot id of ``true`` or ``"3"`` is refused, as the API refuses it
    model_config = ConfigDict(extra="forbid", strict=True)


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
        strict=True,
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
    kind = error["type"]
    if kind == "extra_forbidden":
        return "unknown key (see docs/cli.md for the layout format)"
    if kind == "missing":
        return "required key is missing"
    if kind == "value_error":  # our own messages (sizes) already say what was given
        return str(error["msg"]).removeprefix("Value error, ")
    if kind == "literal_error":
        allowed = error.get("ctx", {}).get("expected", "")
        rule = f"must be one of {allowed.replace(' or ', ', ')}"
    else:
        rule = str(error["msg"]).replace("Input should be", "must be")
    return f"{rule}; got {_shown(error['input'])}"


def _entries(data: dict[str, Any], key: str) -> list[tuple[int, dict[str, Any]]]:
    value = data.get(key)
    return [(i, e) for i, e in enumerate(value) if isinstance(e, dict)] if isinstance(value, list) else []


def _structure(data: dict[str, Any]) -> list[tuple[str, str]]:
    """Rules between entries: unique names and ids, references to declared objects, the
    slot rules that need no host facts (the plan checks the rest against the daemon).

    Read from the parsed YAML, not the model, so that they are reported together with the
    model's own errors: a layout's every broken rule is listed in one run."""
    problems: list[tuple[str, str]] = []
    declared: dict[str, set[Any]] = {}
    for key in ("guest_memfds", "shared_memory"):
        seen = declared.setdefault(key, set())
        for i, entry in _entries(data, key):
            name = entry.get("name")
            if not isinstance(name, str):
                continue
            if name in seen:
                problems.append((f"{key}[{i}].name", f"{_shown(name)} is declared twice"))
            seen.add(name)
    slots: set[int] = set()
    for i, s in _entries(data, "memslots"):
        where = f"memslots[{i}]"
        slot, shared, private = s.get("slot"), s.get("shared"), s.get("private")
        if isinstance(slot, int) and not isinstance(slot, bool):
            if slot in slots:
                problems.append((f"{where}.slot", f"slot {slot} is declared twice"))
            slots.add(slot)
        if shared is None and private is None:
            problems.append((where, "a memslot needs a shared part, a private part, or both"))
        if private is not None and s.get("flags"):
            problems.append((f"{where}.flags", "flags cannot be combined with a private (guest_memfd) part"))
        for part, ref, key in (
            ("private", "guest_memfd", "guest_memfds"),
            ("shared", "shared_memory", "shared_memory"),
        ):
            name = s[part].get(ref) if isinstance(s.get(part), dict) else None
            if isinstance(name, str) and name not in declared[key]:
                problems.append(
                    (f"{where}.{part}.{ref}", f"{_shown(name)} is not declared in {key} ({_names(declared[key])})")
                )
    return problems


def _names(names: set[str]) -> str:
    return "declared: " + ", ".join(sorted(names)) if names else "none is declared"


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice in one mapping is an error (YAML
    says keys are unique; PyYAML keeps the last one, so ``vm: a`` then ``vm: b`` would apply b)."""


def _unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base`: merged keys may be overridden
            continue
        key = loader.construct_object(key_node, deep=deep)
        if not isinstance(key, str | int):  # a list or mapping as a key: construct_mapping refuses it
            continue
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"key {_shown(key)} is given twice", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def _yaml_problem(exc: yaml.YAMLError) -> tuple[str, str]:
    """(``line 3, column 1``, ``not valid YAML: expected ...``), without PyYAML's excerpt of the file."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).replace("\n", " ")
    context = getattr(exc, "context", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return where, f"not valid YAML: {problem}" + (f" ({context})" if context else "")


def parse(text: str, file: str = "<layout>") -> Layout:
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise LayoutError(file, [_yaml_problem(exc)]) from None
    if not isinstance(data, dict):
        raise LayoutError(file, [("", "the layout is a mapping with keys vm, guest_memfds, shared_memory, memslots")])
    problems = []
    try:
        layout = Layout.model_validate(data)
    except ValidationError as exc:
        problems = [(key_path(e["loc"]), _rule(e)) for e in exc.errors()]
    problems += _structure(data)
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
