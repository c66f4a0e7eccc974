"""Half-open guest-physical (or file-offset) ranges and their validation."""

from __future__ import annotations

from .errors import InvalidRequest
from .value_type import value_type

__all__ = ["Range", "check_aligned_range", "MAX_JSON_INT"]

MAX_JSON_INT = (1 << 53) - 1  # browsers keep integers exact up to here


@value_type(order=True)
class Range:
    start: int
    end: int  # exclusive

    @property
    def size(self) -> int:
        return self.end - self.start

    @classmethod
    def of(cls, start: int, size: int) -> Range:
        return cls(start, start + size)

    def overlaps(self, other: Range) -> bool:
        return self.start < other.end and other.start < self.end

    def intersection(self, other: Range) -> Range | None:
        start, end = max(self.start, other.start), min(self.end, other.end)
        return Range(start, end) if start < end else None


def check_aligned_range(start: int, size: int, page_size: int, *, what: str, limit: int = MAX_JSON_INT) -> Range:
    """Non-empty, page aligned, no overflow: the rules every kernel range shares."""
    if size <= 0:
        raise InvalidRequest(f"{what}: size must be greater than zero", code="RANGE_EMPTY")
    if start % page_size or size % page_size:
        raise InvalidRequest(
            f"{what}: start {start:#x} and size {size:#x} must be multiples of the page size {page_size:#x}",
            code="RANGE_NOT_ALIGNED",
        )
    if start + size > limit:
        raise InvalidRequest(f"{what}: end {start + size:#x} exceeds the limit {limit:#x}", code="RANGE_OVERFLOW")
    return Range.of(start, size)
