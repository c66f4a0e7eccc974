"""Sizes and addresses as people type them: ``4096``, ``0x1000``, ``0x1_0000_0000``, ``2M``,
``1G``, ``1GiB``, ``4k``; and as the CLI prints them (``64M``, ``0x100000000``)."""

from __future__ import annotations

import re

__all__ = ["parse_size", "format_size", "format_size_approx", "SIZE_PATTERN"]

_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}
#: what a size or address written as a string may look like (also the layout schema's pattern)
SIZE_PATTERN = r"^\s*(0[xX][0-9a-fA-F](_?[0-9a-fA-F])*|[0-9](_?[0-9])*)\s*([kKmMgGtTpP]?)([iI]?[bB])?\s*$"
_PATTERN = re.compile(SIZE_PATTERN)


def parse_size(text: str | int) -> int:
    if isinstance(text, int) and not isinstance(text, bool):
        return text
    m = _PATTERN.match(str(text))
    if not m:
        raise ValueError(f"not a size: {text!r} (try 4096, 0x1000, 2M, 1G)")
    digits = m.group(1).replace("_", "")
    number = int(digits, 16) if digits[:2].lower() == "0x" else int(digits)
    return number * _UNITS[m.group(4).lower()]


def format_size(n: int) -> str:
    """``64M``, ``1G``; a size that is no whole unit stays exact: ``4097``."""
    for unit, scale in (("P", 1 << 50), ("T", 1 << 40), ("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if n >= scale and n % scale == 0:
            return f"{n // scale}{unit}"
    return str(n)


def format_size_approx(n: int) -> str:
    """``21.2G`` for a size that is no whole unit (a quota derived from MemTotal); whole ones as ``format_size``."""
    exact = format_size(n)
    if exact != str(n) or n < 1 << 10:
        return exact
    for unit, scale in (("P", 1 << 50), ("T", 1 << 40), ("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f}{unit}"
    return exact
