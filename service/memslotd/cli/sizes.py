"""Sizes and addresses as people type them: ``4096``, ``0x1000``, ``2M``, ``1G``, ``1GiB``, ``4k``."""

from __future__ import annotations

import re

__all__ = ["parse_size", "format_size"]

_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}
_PATTERN = re.compile(r"^\s*(0x[0-9a-f]+|\d+)\s*([kmgtp]?)(?:i?b)?\s*$", re.IGNORECASE)


def parse_size(text: str | int) -> int:
    if isinstance(text, int):
        return text
    m = _PATTERN.match(text)
    if not m:
        raise ValueError(f"not a size: {text!r} (try 4096, 0x1000, 2M, 1G)")
    number = int(m.group(1), 16) if m.group(1).lower().startswith("0x") else int(m.group(1))
    return number * _UNITS[m.group(2).lower()]


def format_size(n: int) -> str:
    for unit, scale in (("P", 1 << 50), ("T", 1 << 40), ("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if n >= scale and n % scale == 0:
            return f"{n // scale}{unit}"
    return str(n)
