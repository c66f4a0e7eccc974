"""How memslotctl prints: kubectl-style tables, key/value ``show``, JSON for scripts.

Values are printed for people, never as Python reprs: addresses in hex (``0x100000000``),
sizes in units (``64M``; exact bytes when not a whole unit), times in ISO 8601 UTC, booleans
as ``yes``/``no``, lists comma-separated, a missing value as ``-``.
"""

from __future__ import annotations

import datetime
import json
import sys
from typing import Any

from .sizes import format_size

__all__ = ["plain", "cell", "table", "show", "print_json", "iso_time"]

_SIZE_KEYS = {"size", "memory_size", "length", "offset", "page_size", "max_probe_bytes"}
_HEX_KEYS = {"guest_phys_addr", "max_guest_phys_addr", "gpa", "userspace_addr"}


def plain(value: Any) -> Any:
    """A pydantic model (or a list of them) as JSON-able data, keys as on the wire."""
    if isinstance(value, list):
        return [plain(v) for v in value]
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json", by_alias=True)
    return value


def iso_time(epoch: float) -> str:
    return (
        datetime.datetime.fromtimestamp(epoch, datetime.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )


def cell(key: str, value: Any) -> str:
    """One value for people; ``key`` (the wire name) says what kind of number it is."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float)) and (key.endswith("_at") or key == "time"):
        return iso_time(float(value))
    if isinstance(value, int):
        if key in _HEX_KEYS or key.endswith("_addr"):
            return f"{value:#x}"
        if key in _SIZE_KEYS or key.endswith("_bytes"):
            return format_size(value)
        return str(value)
    if isinstance(value, dict):
        if set(value) == {"shared_memory_id", "offset"} or set(value) == {"guest_memfd_id", "offset"}:
            return f"{value.get('shared_memory_id') or value.get('guest_memfd_id')}+{value['offset']:#x}"
        return " ".join(f"{k}={cell(k, v)}" for k, v in value.items())
    if isinstance(value, list):
        if not value:
            return "-"
        return ",".join(cell(key, v) if not isinstance(v, dict) else "{" + cell(key, v) + "}" for v in value)
    return str(value)


#: table headers shorter than their wire names, so that a VM list fits 120 columns
HEADERS = {
    "guest_memfds": "GMEMS",
    "shared_memory_regions": "SHMS",
    "guest_memfd_bytes": "GMEM_BYTES",
    "shared_memory_bytes": "SHM_BYTES",
}


def table(rows: list[dict[str, Any]], columns: list[str], empty: str = "No resources found.") -> str:
    """Columns aligned with two spaces, headers in capitals (kubectl get / virsh list)."""
    if not rows:
        return empty
    cells = [[HEADERS.get(c, c.upper()) for c in columns]] + [[cell(c, row.get(c)) for c in columns] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in cells)


def show(data: dict[str, Any]) -> str:
    """Key/value lines (virsh dominfo); nested mappings as ``key.sub``, lists of records
    one per line under their key."""
    lines: list[tuple[str, str]] = []

    def walk(prefix: str, obj: dict[str, Any]) -> None:
        for k, v in obj.items():
            name = f"{prefix}{k}"
            if isinstance(v, dict) and not ({"offset"} <= set(v) and len(v) == 2):
                walk(name + ".", v)
            elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
                lines.append((name, f"{len(v)}"))
                for x in v:
                    lines.append(("", "  " + cell(k, x)))
            else:
                lines.append((name, cell(k, v)))

    walk("", data)
    width = max((len(k) for k, _ in lines), default=0) + 1
    return "\n".join((f"{k + ':':<{width}} {v}" if k else f"{'':<{width}} {v}") for k, v in lines)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")
