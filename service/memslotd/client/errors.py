"""Exceptions raised by the client, one per kind of answer (the problem+json ``code`` travels along).

::

    MemslotdError            status, code, problem (the RFC 9457 body)
     ├── TransportError      the daemon could not be reached (code UNREACHABLE) or did
     │                       not answer within the client's timeout (code TIMEOUT)
     ├── BadRequest          400 / 413 / 415 / 422 / 428: the request breaks a rule
     ├── Unauthorized        401 / 403
     ├── NotFound            404
     ├── Conflict            409, and 412: an If-Match the object no longer matches
     ├── CursorGone          410 / WebSocket 4410: re-list, then resubscribe
     ├── QuotaExceeded       429 / 507
     ├── CapabilityMissing   501
     └── ServerError         500 / 503 and anything else
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "MemslotdError",
    "TransportError",
    "BadRequest",
    "Unauthorized",
    "NotFound",
    "Conflict",
    "CursorGone",
    "QuotaExceeded",
    "CapabilityMissing",
    "ServerError",
    "error_for",
]


class MemslotdError(Exception):
    """``str()`` is ``CODE: detail``, as the daemon's problem+json says it."""

    def __init__(self, message: str, *, status: int = 0, code: str = "", problem: dict[str, Any] | None = None):
        super().__init__(message)
        self.detail = message
        self.status = status
        self.code = code or (f"HTTP_{status}" if status else "ERROR")
        self.problem = problem or {}

    def __str__(self) -> str:
        return f"{self.code}: {self.detail}"

    @property
    def errno(self) -> int | None:
        value = self.problem.get("errno")
        return int(value) if value is not None else None


class TransportError(MemslotdError):
    pass


class BadRequest(MemslotdError):
    pass


class Unauthorized(MemslotdError):
    pass


class NotFound(MemslotdError):
    pass


class Conflict(MemslotdError):
    pass


class CursorGone(MemslotdError):
    pass


class QuotaExceeded(MemslotdError):
    pass


class CapabilityMissing(MemslotdError):
    pass


class ServerError(MemslotdError):
    pass


_BY_STATUS: dict[int, type[MemslotdError]] = {
    400: BadRequest,
    413: BadRequest,
    415: BadRequest,
    422: BadRequest,
    401: Unauthorized,
    403: Unauthorized,
    404: NotFound,
    409: Conflict,
    412: Conflict,  # If-Match named a generation the object no longer has: a lost race, as 409
    428: BadRequest,
    410: CursorGone,
    429: QuotaExceeded,
    507: QuotaExceeded,
    501: CapabilityMissing,
}


def error_for(status: int, body: Any) -> MemslotdError:
    problem = body if isinstance(body, dict) else {}
    code = str(problem.get("code", f"HTTP_{status}"))
    detail = str(problem.get("detail", problem.get("title", f"HTTP {status}")))
    return _BY_STATUS.get(status, ServerError)(detail, status=status, code=code, problem=problem)
