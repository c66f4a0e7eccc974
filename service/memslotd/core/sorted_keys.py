"""Neighbour lookups on a ``SortedDict``'s keys in O(log n), without positional indexing.

SortedList rebuilds its positional index after every insert or delete, so ``keys[i]``
after ``bisect`` costs O(n) when lookups and updates interleave (as they do in a batch).
``irange`` avoids that but builds a generator per call (~1.7 us here, several per memslot
op). These helpers do what ``irange`` does first — bisect the sublist maxima, then one
sublist — and nothing else (~0.3 us). They read SortedList's two documented-in-source
internals, ``_maxes`` and ``_lists``, unchanged since sortedcontainers 1.0; the version is
bounded in pyproject.toml and tests/unit compare them with a brute-force model.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right

from sortedcontainers import SortedDict

__all__ = ["floor_key", "higher_key"]


def floor_key(sd: SortedDict, x: int) -> int | None:
    """The greatest key ``<= x``, or None."""
    sl = sd._list
    maxes = sl._maxes
    pos = bisect_left(maxes, x)
    if pos == len(maxes):  # x is above every key (or there are none)
        return maxes[-1] if maxes else None
    sub = sl._lists[pos]
    idx = bisect_right(sub, x)
    if idx:
        key: int = sub[idx - 1]
        return key
    return maxes[pos - 1] if pos else None


def higher_key(sd: SortedDict, x: int) -> int | None:
    """The least key ``> x``, or None."""
    sl = sd._list
    maxes = sl._maxes
    pos = bisect_right(maxes, x)
    if pos == len(maxes):
        return None
    sub = sl._lists[pos]
    key: int = sub[bisect_right(sub, x)]
    return key
