"""The whole contract, generated: openapi.yaml (REST) and asyncapi.yaml (the WebSocket stream).

FastAPI documents the happy path; this module adds what the daemon also does on every
operation: the bearer scheme and each operation's scope, the problem+json answers of the HTTP
layer (400/401/403/413/414/415/422 with their real media type), every header the daemon reads
or sends, and the event stream's models. Both documents come from the same pydantic models.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from .. import __version__
from .auth import required_scope
from .event_schemas import EVENT_MODELS, STREAM_FRAMES, AuthMessage, Bookmark, ErrorFrame, Gone, Hello
from .schemas import BatchRequest, Problem

__all__ = ["complete_openapi", "asyncapi_document", "SECURITY_SCHEME"]

REF = "#/components/schemas/{model}"
PROBLEM = {"application/problem+json": {"schema": {"$ref": REF.format(model="Problem")}}}
SECURITY_SCHEME = {
    "bearer": {
        "type": "http",
        "scheme": "bearer",
        "description": "TCP listener only (--tcp): a token from --token-file. Its scopes are the role names of each "
        "operation's requirement: read (GETs), events (the stream), mutate (changes), admin (all, and the "
        "test rig). The Unix socket needs none (the empty requirement): it records SO_PEERCRED instead.",
    }
}

_COMMON_STATUSES = {
    401: ("Unauthorized: TCP without a valid bearer token (UNAUTHORIZED)", {"WWW-Authenticate"}),
    403: (
        "Forbidden: token lacks the scope (INSUFFICIENT_SCOPE), read-only socket (READ_ONLY_LISTENER), "
        "browser Origin not allowed (ORIGIN_NOT_ALLOWED)",
        set(),
    ),
    414: ("URI too long (URI_TOO_LONG)", set()),
    422: (
        "Request breaks a rule: a field or parameter (VALIDATION_FAILED), an unknown or repeated query parameter "
        "(UNKNOWN_QUERY_PARAMETER, DUPLICATE_QUERY_PARAMETER), dry_run where it means nothing (DRY_RUN_UNSUPPORTED), "
        "a kernel rule (its own code)",
        set(),
    ),
}
_BODY_STATUSES = {
    400: "Malformed JSON (MALFORMED_JSON, also for a duplicate key), INVALID_UTF8, JSON_TOO_DEEP",
    413: "Request body too large (BODY_TOO_LARGE)",
    415: "Body is not JSON (UNSUPPORTED_MEDIA_TYPE) or not UTF-8 (UNSUPPORTED_CHARSET)",
}
HEADERS: dict[str, dict[str, Any]] = {
    "memslotd-boot-id": {
        "description": "the daemon's boot id: a new value means it restarted and every VM is gone",
        "required": True,
        "schema": {"type": "string"},
    },
    "memslotd-dry-run": {
        "description": "true: this was a dry run, nothing changed",
        "schema": {"type": "string", "enum": ["true"]},
    },
    "ETag": {"description": "the slot's version, for If-Match", "schema": {"type": "string"}},
    "Location": {"description": "the created resource", "schema": {"type": "string"}},
    "Idempotent-Replayed": {
        "description": "true: the answer to an earlier request with this Idempotency-Key",
        "schema": {"type": "string", "enum": ["true"]},
    },
    "Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "integer"}},
    "WWW-Authenticate": {"description": 'Bearer realm="memslotd"', "schema": {"type": "string"}},
    "Allow": {"description": "the methods the resource supports", "schema": {"type": "string"}},
}
IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "schema": {"type": "string"},
    "description": "(its first 255 characters count) a retry with the same key, method, path, query and body "
    "replays the first answer "
    "(Idempotent-Replayed: true); the same key with another request is 422 "
    "IDEMPOTENCY_KEY_REUSED, while the first still runs 409 IDEMPOTENCY_KEY_IN_USE",
}


def _header_refs(*names: str) -> dict[str, Any]:
    return {name: {"$ref": f"#/components/headers/{name}"} for name in names}


def complete_openapi(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` (FastAPI's) made into the whole contract, in place."""
    components = schema.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):  # FastAPI's 422 body, never sent
        schemas.pop(name, None)
    _, defs = models_json_schema(
        [
            (BatchRequest, "validation"),
            (Problem, "serialization"),
            *((m, "serialization") for m in (*EVENT_MODELS.values(), *STREAM_FRAMES)),
        ],
        ref_template=REF,
    )
    schemas.update(defs.get("$defs", {}))
    schemas["Event"] = {
        "description": "one event of the stream (the envelope; ``data`` by ``type``)",
        "oneOf": [{"$ref": REF.format(model=m.__name__)} for m in EVENT_MODELS.values()],
        "discriminator": {
            "propertyName": "type",
            "mapping": {t: REF.format(model=m.__name__) for t, m in EVENT_MODELS.items()},
        },
    }
    components["securitySchemes"] = SECURITY_SCHEME
    components["headers"] = HEADERS
    for path, item in schema.get("paths", {}).items():
        for method, op in item.items():
            _complete_operation(path, method.upper(), op)
    return schema


def _complete_operation(path: str, method: str, op: dict[str, Any]) -> None:
    scope = required_scope("http", method, path)
    op["security"] = [{}] if scope == "public" else [{"bearer": [scope]}, {}]
    responses: dict[str, Any] = op["responses"]
    statuses = dict(_COMMON_STATUSES)
    if scope == "public":
        statuses.pop(401)
    has_body = "requestBody" in op
    for number, (description, headers) in statuses.items():
        responses.setdefault(str(number), {"description": description})
        if headers:
            responses[str(number)]["headers"] = _header_refs(*headers)
    if has_body:
        for number, body_description in _BODY_STATUSES.items():
            responses.setdefault(str(number), {"description": body_description})
    if method == "POST":
        responses.setdefault(
            "409", {"description": "Idempotency-Key in use by a request still running (IDEMPOTENCY_KEY_IN_USE)"}
        )
    params = op.setdefault("parameters", [])
    dry_run = any(p["name"] == "dry_run" for p in params)
    if method == "POST":
        params.append(IDEMPOTENCY_KEY)
    for status, answer in responses.items():
        code = int(status)
        if code >= 400:
            answer["content"] = PROBLEM
            if code in (429, 503):
                answer["headers"] = _header_refs("Retry-After")
        headers = answer.setdefault("headers", {})
        if code != 414:  # refused by the HTTP parser, before the app (and its boot id) is reached
            headers.update(_header_refs("memslotd-boot-id"))
        if code < 300:
            if dry_run:
                headers.update(_header_refs("memslotd-dry-run"))
            if method == "POST":
                headers.update(_header_refs("Idempotent-Replayed"))
        if code == 201:
            headers.update(_header_refs("Location"))
        if "/memslots/{slot}" in path and method in ("GET", "PUT") and code in (200, 201):
            headers.update(_header_refs("ETag"))
    if path == "/v1/events" and method == "GET":
        ndjson = responses["200"]["content"]["application/x-ndjson"]
        ndjson["schema"] = {
            "description": "each line is one JSON value: an Event, the last line a Bookmark",
            "oneOf": [{"$ref": REF.format(model="Event")}, {"$ref": REF.format(model="Bookmark")}],
        }


# -- AsyncAPI ------------------------------------------------------------------------------
CLOSE_CODES = {
    1011: "keepalive ping timeout: no pong within ws_ping_timeout_s (GET /v1/limits); a backlog delays "
    "the pong, so read faster or resume with since_seq",
    1012: "the daemon is restarting or stopping (RFC 6455 'service restart'): reconnect with since_seq",
    4400: "bad subscription query: the error frame before it names the parameter and why",
    4401: "unauthorized: TCP without a valid token (header, subprotocol memslotd.token.<token>, or auth message)",
    4403: "the token lacks the events scope, or the browser Origin is not allowed",
    4410: "gone: the cursor is too old, from another boot, or the subscriber fell behind (a gone frame says which)",
}


def asyncapi_document(query_schema: dict[str, Any]) -> dict[str, Any]:
    """AsyncAPI 3.0 for ``GET /v1/events`` as a WebSocket (``query_schema``: the subscription's parameters)."""
    frames: list[type[BaseModel]] = [Hello, *EVENT_MODELS.values(), Bookmark, Gone, ErrorFrame, AuthMessage]
    _, defs = models_json_schema([(m, "serialization") for m in frames], ref_template=REF)
    schemas = dict(defs.get("$defs", {}))
    messages: dict[str, Any] = {}
    for model in frames:
        doc = (model.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")
        messages[model.__name__] = {
            "name": model.__name__,
            "title": model.__name__,
            "summary": doc,
            "contentType": "application/json",
            "payload": {"$ref": REF.format(model=model.__name__)},
        }
    server_messages = [m for m in messages if m != "AuthMessage"]
    close = "\n".join(f"* {code}: {text}" for code, text in CLOSE_CODES.items())
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "memslotd event stream",
            "version": __version__,
            "description": (
                "GET /v1/events as a WebSocket with subprotocol `memslotd.v1`: `Hello` first, then one JSON frame per "
                "message. Resume with since_seq (+ boot_id): every retained event after it arrives exactly once; "
                "`Bookmark`s advance filtered cursors. The same envelope is served as NDJSON by the HTTP long-poll "
                "(openapi.yaml). Close codes:\n" + close
            ),
        },
        "defaultContentType": "application/json",
        "servers": {
            "unix": {
                "host": "memslotd",
                "protocol": "ws",
                "pathname": "/",
                "description": "the Unix socket (--socket): no token, the peer's credentials are recorded",
            },
            "tcp": {
                "host": "{host}:{port}",
                "protocol": "wss",
                "pathname": "/",
                "description": "the opt-in TCP listener (--tcp, TLS when configured): a bearer token with the events "
                "scope",
                "variables": {"host": {"default": "127.0.0.1"}, "port": {"default": "8444"}},
                "security": [{"$ref": "#/components/securitySchemes/bearer"}],
            },
        },
        "channels": {
            "events": {
                "address": "/v1/events",
                "title": "the event stream",
                "description": "Subprotocol `memslotd.v1` (offer it in Sec-WebSocket-Protocol). Close codes:\n" + close,
                "messages": {name: {"$ref": f"#/components/messages/{name}"} for name in messages},
                "bindings": {
                    "ws": {
                        "bindingVersion": "0.1.0",
                        "method": "GET",
                        "query": query_schema,
                        "headers": {
                            "type": "object",
                            "properties": {
                                "Sec-WebSocket-Protocol": {
                                    "type": "string",
                                    "description": "memslotd.v1 (and memslotd.token.<token> on TCP)",
                                }
                            },
                        },
                    }
                },
                "x-close-codes": {str(code): text for code, text in CLOSE_CODES.items()},
            }
        },
        "operations": {
            "receiveEvents": {
                "action": "receive",
                "channel": {"$ref": "#/channels/events"},
                "summary": "what the daemon sends",
                "messages": [{"$ref": f"#/channels/events/messages/{name}"} for name in server_messages],
            },
            "sendAuth": {
                "action": "send",
                "channel": {"$ref": "#/channels/events"},
                "summary": "TCP only, when the token is in neither the header nor the subprotocol",
                "messages": [{"$ref": "#/channels/events/messages/AuthMessage"}],
            },
        },
        "components": {
            "schemas": schemas,
            "messages": messages,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": SECURITY_SCHEME["bearer"]["description"]}
            },
        },
    }
