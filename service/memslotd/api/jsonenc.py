"""Fast JSON for events (orjson)."""

from __future__ import annotations

from typing import Any

import orjson

__all__ = ["encode_event"]


def encode_event(envelope: dict[str, Any]) -> bytes:
    return orjson.dumps(envelope)
