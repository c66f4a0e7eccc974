"""KVM's dirty bitmap as run-length GPA ranges."""

from __future__ import annotations

__all__ = ["dirty_ranges"]


def dirty_ranges(bitmap: bytes, base_gpa: int, page_size: int, pages: int) -> list[tuple[int, int]]:
    """Run-length (gpa, size) of the set bits of a KVM dirty bitmap (bit i = page i), scanned
    64 bits at a time so that clean stretches cost one comparison per word."""
    runs: list[tuple[int, int]] = []  # (first page, page count)
    words = memoryview(bitmap[: (pages + 63) // 64 * 8]).cast("Q")
    for w, word in enumerate(words):
        if not word:
            continue
        base, bit = w * 64, 0
        while word:
            skip = (word & -word).bit_length() - 1  # trailing zeros
            word >>= skip
            bit += skip
            ones = (~word & (word + 1)).bit_length() - 1  # trailing ones
            first = base + bit
            if runs and runs[-1][0] + runs[-1][1] == first:  # continues across a word boundary
                runs[-1] = (runs[-1][0], runs[-1][1] + ones)
            else:
                runs.append((first, ones))
            word >>= ones
            bit += ones
    return [
        (base_gpa + first * page_size, min(count, pages - first) * page_size) for first, count in runs if first < pages
    ]
