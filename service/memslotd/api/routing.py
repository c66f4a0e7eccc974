"""``ApiRoute``: every route's request rules that FastAPI leaves open.

* Unknown query parameters are refused (422 ``UNKNOWN_QUERY_PARAMETER`` naming it), as unknown
  body fields are; a parameter given twice is refused too. ``dry_run`` on a route that cannot
  honour it is 422 ``DRY_RUN_UNSUPPORTED``, never silently ignored.
* A JSON body is parsed by ``api.body`` (duplicate keys, UTF-8, depth, charset) before
  FastAPI's own parser sees it (it reads the cached result).
* ``HEAD`` is served wherever ``GET`` is (RFC 9110 §9.3.2).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from starlette.routing import Match
from starlette.types import Receive, Scope, Send

from .body import check_charset, parse_json
from .problems import ApiProblem

__all__ = ["ApiRoute", "DRY_RUN_HEADER"]

DRY_RUN_HEADER = "memslotd-dry-run"


class ApiRoute(APIRoute):
    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        match, child = super().matches(scope)
        if match is Match.PARTIAL and scope.get("method") == "HEAD" and "GET" in (self.methods or ()):
            return Match.FULL, child  # the server sends the GET answer's headers, no body
        return match, child

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("method") == "HEAD" and "GET" in (self.methods or ()):
            await self.app(scope, receive, send)
            return
        await super().handle(scope, receive, send)

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        query_names = _query_names(self.dependant)
        has_body = self.body_field is not None  # memslots:batch parses its own (api/batch_body.py)
        label = f"{'/'.join(sorted(self.methods or ()))} {self.path}"

        async def route_handler(request: Request) -> Response:
            if request.scope["query_string"]:
                check_query(request, query_names, label)
            if has_body:
                await parse_body(request)
            return await handler(request)

        return route_handler


def _query_names(dependant: Dependant) -> frozenset[str]:
    names = {p.alias for p in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _query_names(sub)
    return frozenset(names)


def check_query(request: Request, known: frozenset[str], label: str) -> None:
    seen: set[str] = set()
    for name, _ in request.query_params.multi_items():
        if name not in known:
            if name == "dry_run":
                raise ApiProblem(
                    422,
                    "DRY_RUN_UNSUPPORTED",
                    "dry_run not supported",
                    f"{label} cannot be dry-run: the call is its own effect (see docs/api.md)",
                    parameter=name,
                )
            allowed = ", ".join(sorted(known)) or "none"
            raise ApiProblem(
                422,
                "UNKNOWN_QUERY_PARAMETER",
                "Unknown query parameter",
                f"query parameter {name!r} is not known here (known: {allowed})",
                parameter=name,
            )
        if name in seen:
            raise ApiProblem(
                422,
                "DUPLICATE_QUERY_PARAMETER",
                "Query parameter given twice",
                f"query parameter {name!r} is given more than once",
                parameter=name,
            )
        seen.add(name)


async def parse_body(request: Request) -> None:
    """Parse a JSON body by the daemon's rules and leave it where ``Request.json()`` finds it."""
    content_type = request.headers.get("content-type", "")
    if "json" not in content_type.split(";")[0]:
        return  # FastAPI answers 415/422 for a missing or foreign media type
    check_charset(content_type)
    body = await request.body()
    if body:
        request._json = parse_json(body)  # Starlette caches the parsed body here
