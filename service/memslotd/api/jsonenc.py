"""Fast JSON for events (orjson)."""

from __future__ import annotations

from typing import Any

import orjson

__all__ = ["encode_event_data"]


def encode_event_data(data: dict[str, Any]) -> str:
    # A str, not orjson's bytes: orjson leaves its ~2 KiB output buffer allocated behind a
    # short bytes object, which would make every retained event cost ~2 KiB. Frames are
    # WebSocket text anyway.
    return orjson.dumps(data).decode()
