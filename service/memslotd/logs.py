"""Logging: one JSON object per line (python-json-logger), or plain text."""

from __future__ import annotations

import logging
import sys
import time
from typing import IO, Any

import orjson
from pythonjsonlogger.json import JsonFormatter

__all__ = ["configure_logging", "RequestLog"]


class _DropColor(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.__dict__.pop("color_message", None)  # uvicorn's ANSI duplicate of the message
        return True


def configure_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_DropColor())
    if fmt == "json":
        handler.setFormatter(
            JsonFormatter(
                "%(asctime)s %(levelname)s %(name)s %(message)s",
                datefmt="%Y-%m-%dT%H:%M:%S%z",
                rename_fields={"levelname": "level", "name": "logger", "asctime": "time"},
            )
        )
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("uvicorn.access").disabled = True  # memslotd.request replaces it


class RequestLog:
    """The per-request line, written straight to stderr with orjson: the logging module and
    its JSON formatter cost ~50 us per line, a quarter of a memslot request. One line per
    request; mutating calls and refusals are that same line under ``memslotd.audit``."""

    def __init__(self, enabled: bool, json_lines: bool = True, stream: IO[bytes] | None = None):
        self.enabled = enabled
        self.json_lines = json_lines
        self.stream = stream if stream is not None else sys.stderr.buffer

    def write(self, audit: bool, fields: dict[str, Any]) -> None:
        if not (self.enabled or audit):
            return
        logger = "memslotd.audit" if audit else "memslotd.request"
        if self.json_lines:
            record = {
                "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "level": "INFO",
                "logger": logger,
                "message": "request",
                **fields,
            }
            line = orjson.dumps(record) + b"\n"
        else:
            line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} INFO {logger}: {fields}\n".encode()
        try:
            self.stream.write(line)
            self.stream.flush()
        except (OSError, ValueError):  # a closed or broken stderr must not fail the request
            pass
