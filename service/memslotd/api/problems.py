"""RFC 9457 problem+json: the single ``code`` -> status table and the exception handlers.

Status policy: 400 malformed JSON; 422 a request that parses but breaks a rule
(field validation and kernel rules alike); 404 unknown id; 409 conflict with
existing state; 412 If-Match / If-None-Match failed; 413 body too large; 429 queue full or count quota; 501 missing
capability; 503 host resources exhausted; 507 byte quota; 500 bugs only.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import Counter
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Send

from ..core import (
    BatchFailed,
    CapabilityMissing,
    Conflict,
    DomainError,
    HostResourcesExhausted,
    InvalidRequest,
    KernelError,
    NotFound,
    PreconditionFailed,
    QuotaExceeded,
    VMBusy,
)

__all__ = [
    "ApiProblem",
    "install_problem_handlers",
    "problem_body",
    "problem_response",
    "send_problem",
    "STATUS_BY_CLASS",
    "PROBLEM_MEDIA_TYPE",
    "describe_errors",
    "allowed_methods",
]

log = logging.getLogger("memslotd.api")
PROBLEM_MEDIA_TYPE = "application/problem+json"

STATUS_BY_CLASS: list[tuple[type[DomainError], int]] = [
    (InvalidRequest, 422),
    (NotFound, 404),
    (Conflict, 409),
    (PreconditionFailed, 412),
    (CapabilityMissing, 501),
    (VMBusy, 429),
    (HostResourcesExhausted, 503),
    (KernelError, 500),
]


class ApiProblem(Exception):
    """A refusal decided by the HTTP layer itself (body parsing, query rules), with its own code."""

    def __init__(self, status: int, code: str, title: str, detail: str, **extra: Any):
        super().__init__(detail)
        self.status, self.code, self.title, self.detail, self.extra = status, code, title, detail, extra


def describe_errors(errors: Sequence[Any], limit: int = 4) -> str:
    """pydantic errors as one sentence per parameter: ``since_seq: Input should be … (got '-1')``,
    never pydantic's own dump with its documentation links."""
    parts = []
    for e in list(errors)[:limit]:
        loc = [str(p) for p in e.get("loc", ()) if p not in ("body", "query", "path", "header")]
        where = ".".join(loc) or "request"
        msg = str(e.get("msg", "invalid")).removeprefix("Value error, ")
        if e.get("type") == "extra_forbidden":
            parts.append(f"unknown parameter {where!r}")
            continue
        got = e.get("input")
        shown = f" (got {got!r})" if isinstance(got, (str, int, float)) and not isinstance(got, bool) and loc else ""
        parts.append(f"{where}: {msg}{shown[:80]}")
    return "; ".join(parts)


def allowed_methods(app: Any, path: str) -> list[str]:
    """Every method some route serves at ``path`` (RFC 9110 §10.2.1 ``Allow``), plus OPTIONS."""
    from starlette.routing import Route

    methods: set[str] = {"OPTIONS"}
    for route in app.router.routes:
        if isinstance(route, Route) and route.methods and route.path_regex.match(path):
            methods |= route.methods | ({"HEAD"} if "GET" in route.methods else set())
    return sorted(methods)


def status_of(exc: DomainError) -> int:
    if exc.status is not None:
        return exc.status
    if isinstance(exc, BatchFailed):  # a batch answers with the status of the op that failed
        return status_of(exc.cause)
    if isinstance(exc, QuotaExceeded):
        return 507 if exc.bytes_quota else 429
    for cls, status in STATUS_BY_CLASS:
        if isinstance(exc, cls):
            return status
    return 500


def problem_body(status: int, code: str, title: str, detail: str) -> dict[str, Any]:
    """The RFC 9457 core every problem answer shares (also used by the pure-ASGI middlewares)."""
    return {
        "type": f"urn:memslotd:problem:{code.lower().replace('_', '-')}",
        "title": title,
        "status": status,
        "detail": detail,
        "code": code,
    }


async def send_problem(
    send: Send, status: int, code: str, title: str, detail: str, headers: Sequence[tuple[bytes, bytes]] = ()
) -> None:
    """A problem+json answer from pure-ASGI middleware (which has no Response machinery)."""
    body = orjson.dumps(problem_body(status, code, title, detail))
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", PROBLEM_MEDIA_TYPE.encode()),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def problem_response(
    status: int,
    code: str,
    title: str,
    detail: str,
    request: Request | None = None,
    headers: dict[str, str] | None = None,
    **fields: Any,
) -> JSONResponse:
    body = problem_body(status, code, title, detail)
    if request is not None:
        body["instance"] = request.url.path
    for key in ("errno", "errno_name", "ioctl", "errors"):
        if fields.get(key) is not None:
            body[key] = fields.pop(key)
    extra = {k: v for k, v in fields.items() if v is not None}
    if extra:
        body["extra"] = extra
    headers = {**({"Retry-After": "1"} if status in (429, 503) else {}), **(headers or {})}
    return JSONResponse(body, status_code=status, media_type=PROBLEM_MEDIA_TYPE, headers=headers)


KERNEL_ERRORS = Counter("memslotd_kernel_errors", "kernel calls that failed, by errno", ["errno", "ioctl"])


async def _domain_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, DomainError)
    status = status_of(exc)
    if exc.extra.get("errno_name"):
        KERNEL_ERRORS.labels(exc.extra["errno_name"], exc.extra.get("ioctl") or "").inc()
    if status >= 500 and status not in (501, 503, 507):
        log.error("kernel error on %s: %s", request.url.path, exc.detail)
    return problem_response(status, exc.code, exc.title, exc.detail, request, **exc.extra)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [
        {
            "loc": [str(p) if not isinstance(p, int) else p for p in e.get("loc", ())],
            "msg": str(e.get("msg", "")),
            "type": str(e.get("type", "")),
        }
        for e in exc.errors()
    ]
    content_type = request.headers.get("content-type", "")
    if errors and errors[0]["loc"] == ["body"] and "json" not in content_type and request.method in ("POST", "PUT"):
        return problem_response(
            415,
            "UNSUPPORTED_MEDIA_TYPE",
            "Unsupported media type",
            f"send the body as JSON with 'Content-Type: application/json' (got {content_type!r})",
            request,
        )
    if any(e["type"] == "json_invalid" for e in errors):
        return problem_response(
            400, "MALFORMED_JSON", "Malformed JSON", "the request body is not valid JSON", request, errors=errors[:32]
        )
    return problem_response(
        422, "VALIDATION_FAILED", "Invalid request", describe_errors(exc.errors()), request, errors=errors[:32]
    )


async def _api_problem(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiProblem)
    return problem_response(exc.status, exc.code, exc.title, exc.detail, request, **exc.extra)


_HTTP_CODES = {
    404: ("ROUTE_NOT_FOUND", "Not found"),
    405: ("METHOD_NOT_ALLOWED", "Method not allowed"),
    413: ("BODY_TOO_LARGE", "Request body too large"),
    401: ("UNAUTHORIZED", "Unauthorized"),
    403: ("FORBIDDEN", "Forbidden"),
}


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 405:
        allow = ", ".join(allowed_methods(request.app, request.url.path))
        if request.method == "OPTIONS":  # RFC 9110 §9.3.7: what the resource supports
            return Response(status_code=204, headers={"Allow": allow})
        return problem_response(
            405,
            "METHOD_NOT_ALLOWED",
            "Method not allowed",
            f"{request.method} is not allowed here; allowed: {allow}",
            request,
            headers={"Allow": allow},
        )
    code, title = _HTTP_CODES.get(exc.status_code, (f"HTTP_{exc.status_code}", "Request failed"))
    if exc.status_code == 404:
        detail = f"no route {request.url.path[:200]!r}; the API is under /v1 (see /v1/openapi.json)"
    else:
        detail = str(exc.detail)
    return problem_response(exc.status_code, code, title, detail, request, headers=dict(exc.headers or {}))


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("bug: unhandled error on %s", request.url.path)
    return problem_response(500, "INTERNAL_ERROR", "Internal error", f"{type(exc).__name__}: this is a bug", request)


def install_problem_handlers(app: FastAPI) -> None:
    app.add_exception_handler(DomainError, _domain_error)
    app.add_exception_handler(ApiProblem, _api_problem)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
