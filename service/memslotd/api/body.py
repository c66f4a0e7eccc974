"""The JSON request body, parsed by the daemon's rules before any model sees it.

RFC 8259 leaves duplicate names, nesting depth and number range to the implementation; the
stdlib parser silently keeps the last duplicate and turns a parse failure deep inside the web
framework into a bare 400. Here each refusal has its own ``code``::

    415 UNSUPPORTED_CHARSET  a charset other than UTF-8 (RFC 8259 §8.1: JSON is UTF-8)
    400 INVALID_UTF8         the bytes are not UTF-8 (names the offset)
    400 MALFORMED_JSON       not JSON, or a duplicate name in an object (names the key)
    400 JSON_TOO_DEEP        nesting deeper than the parser's limit
    422 NUMBER_TOO_LARGE     an integer of more digits than any field can take

A number with no fractional part is an integer whatever its spelling (``8192.0``, ``8.192e3``),
as JSON Schema says; ``8192.5`` and ``"8192"`` stay refused by the strict models.
"""

from __future__ import annotations

import decimal
import json
from typing import Any

from .problems import ApiProblem

__all__ = ["parse_json", "check_charset", "MAX_NESTING"]

MAX_NESTING = 64  # no request body of this API nests deeper than 5


class _DuplicateKey(ValueError):
    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return obj


def _number(text: str) -> int | float:
    value = decimal.Decimal(text)
    # adjusted(): the exponent of the leading digit, so 1e400000000 never becomes a huge int
    if value.is_finite() and value.adjusted() < 4000 and value == value.to_integral_value():
        return int(value)
    return float(text)


def _constant(name: str) -> Any:
    raise json.JSONDecodeError(f"{name} is not JSON", name, 0)


def check_charset(content_type: str) -> None:
    for param in content_type.split(";")[1:]:
        key, _, value = param.partition("=")
        if key.strip().lower() == "charset" and value.strip().strip('"').lower() not in ("utf-8", "utf8"):
            raise ApiProblem(
                415,
                "UNSUPPORTED_CHARSET",
                "Unsupported charset",
                f"the body must be UTF-8 (Content-Type says charset={value.strip()})",
            )


def parse_json(body: bytes) -> Any:
    """The body as Python values, or an ``ApiProblem`` naming what is wrong."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiProblem(
            400,
            "INVALID_UTF8",
            "Body is not UTF-8",
            f"byte {exc.start} of the body ({body[exc.start : exc.start + 1]!r}) is not valid UTF-8",
        ) from None
    try:
        value = json.loads(text, object_pairs_hook=_object, parse_float=_number, parse_constant=_constant)
    except _DuplicateKey as exc:
        raise ApiProblem(
            400, "MALFORMED_JSON", "Malformed JSON", f"the key {exc.key!r} appears twice in one object", key=exc.key
        ) from None
    except json.JSONDecodeError as exc:
        raise ApiProblem(
            400,
            "MALFORMED_JSON",
            "Malformed JSON",
            f"the body is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}",
            line=exc.lineno,
            column=exc.colno,
        ) from None
    except RecursionError:
        raise ApiProblem(
            400, "JSON_TOO_DEEP", "JSON nested too deeply", f"the body nests deeper than {MAX_NESTING} levels"
        ) from None
    except ValueError as exc:  # int(): more digits than sys.get_int_max_str_digits()
        raise ApiProblem(
            422,
            "NUMBER_TOO_LARGE",
            "Number too large",
            f"an integer in the body is too long ({exc}); no field takes more than 19 digits",
        ) from None
    if _depth_exceeds(value, MAX_NESTING):
        raise ApiProblem(
            400, "JSON_TOO_DEEP", "JSON nested too deeply", f"the body nests deeper than {MAX_NESTING} levels"
        )
    return value


def _depth_exceeds(value: Any, limit: int) -> bool:
    """Iterative (no recursion): True when containers nest deeper than ``limit``."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False
