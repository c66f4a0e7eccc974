"""``create_app``: the FastAPI application. Nothing opens at import; the lifespan owns the core."""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from .. import __version__
from ..core import MemoryCore
from ..logs import RequestLog
from ..settings import Settings
from .access import AccessControl
from .auth import TokenStore
from .idempotency import IdempotencyKeys
from .middleware import AllowedOriginsCORS, LimitsAndHeaders
from .problems import install_problem_handlers
from .routes import events, host, host_view, memory, memory_objects, memslots, metrics, probe, vms

__all__ = ["create_app"]

DESCRIPTION = """memslotd manages KVM guest memory: VMs, guest_memfds (the private part), shared memory
(the `userspace_addr` part), memslots joining them, private/shared conversion, a guest probe,
and a resumable event stream. Sizes, offsets and addresses are integers in bytes. Errors are
RFC 9457 `application/problem+json` with a stable `code`. Every response carries the
`memslotd-boot-id` header: a new value means the daemon restarted and every VM is gone.
POSTs accept `Idempotency-Key` (a retry replays the first answer); memslot PUT/DELETE accept
`If-Match`/`If-None-Match` on the slot's `ETag`. Every mutating operation honours `?dry_run=true`
(nothing changes; the answer says what would happen) or refuses it with 422 `DRY_RUN_UNSUPPORTED`.
Unknown query parameters are refused (422); a malformed path id is an id that does not exist (404).
The WebSocket event stream is described in asyncapi.yaml."""


# FastAPI >= 0.16x asks OpenTelemetry on every request whether it is configured (~4 % of a
# request here). memslotd reports through Prometheus (/metrics) and its JSON request log.
_NO_OTEL: dict[str, Any] = (
    {"telemetry": {"tracing": False, "metrics": False, "logs": False}}
    if "telemetry" in inspect.signature(FastAPI.__init__).parameters
    else {}
)


def create_app(
    settings: Settings,
    core_factory: Callable[[], MemoryCore],
    *,
    listeners: dict[Any, str] | None = None,
    default_listener: str = "unix",
    tokens: TokenStore | None = None,
) -> FastAPI:
    """``core_factory`` runs in the lifespan (it opens /dev/kvm); the core is closed at shutdown.

    ``listeners`` maps a listening address (``(path, None)`` or ``(host, port)``) to its kind:
    ``unix``, ``unix-ro`` or ``tcp``; requests from anywhere else count as ``default_listener``.
    """

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        core = app.state.core = core_factory()
        app.state.boot_header = (b"memslotd-boot-id", core.events.boot_id.encode())
        try:
            yield
        finally:
            await core.close()

    app = FastAPI(
        title="memslotd",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        openapi_url="/v1/openapi.json",
        docs_url="/v1/docs",
        redoc_url=None,
        **_NO_OTEL,
    )
    app.state.settings = settings
    app.state.boot_header = (b"memslotd-boot-id", b"")
    app.state.listeners = dict(listeners or {})
    app.state.default_listener = default_listener
    app.state.tokens = tokens
    app.state.allowed_origins = set(settings.allowed_origins)
    app.state.request_log = RequestLog(
        enabled=settings.log_level in ("debug", "info"), json_lines=settings.log_format == "json"
    )
    install_problem_handlers(app)
    documented = [
        route
        for router in (
            host.router,
            vms.router,
            memory_objects.gmem_router,
            memory_objects.shm_router,
            memslots.router,
            memslots.batch_router,
            memory.router,
            probe.router,
            host_view.router,
            events.router,
            metrics.router,
        )
        for route in router.routes
    ]
    _document_models(app, documented)
    # The routes go straight into the app's route list (their paths already carry the router
    # prefix): FastAPI >= 0.16x wraps each include_router() in an object it walks on every
    # request, and a quarter of a memslot PUT's time went to route matching. Matching is a
    # scan, so the hot routes come first; the OpenAPI document keeps the order above.
    hot = (
        *memslots.router.routes,
        *memslots.batch_router.routes,
        *memory.router.routes,
        *probe.router.routes,
        *host.router.routes,
    )
    app.router.routes.extend([*hot, *(route for route in documented if route not in hot)])
    # the read-only dashboard: static files shipped in the package, no build step, no CDN
    app.mount("/ui", StaticFiles(directory=Path(__file__).resolve().parent.parent / "ui", html=True), name="ui")
    # inside the body limit: it reads the body it fingerprints
    app.add_middleware(IdempotencyKeys, max_bytes=settings.idempotency_cache_bytes, state=app.state)
    app.add_middleware(
        LimitsAndHeaders,
        max_body_bytes=settings.max_body_bytes,
        state=app.state,
        max_batch_body_bytes=settings.max_batch_body_bytes,
    )
    app.add_middleware(AccessControl, state=app.state)  # refuse before reading a body
    if settings.allowed_origins:  # outermost: a preflight needs no token, a 401 still carries CORS headers
        app.add_middleware(AllowedOriginsCORS, origins=list(settings.allowed_origins))
    return app


def _document_models(app: FastAPI, routes: list[Any]) -> None:
    """The OpenAPI document of ``routes`` (in reading order, whatever order matching uses),
    completed by ``api.contract`` into the whole contract."""
    from fastapi.openapi.utils import get_openapi

    from .contract import complete_openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=routes)
            app.openapi_schema = complete_openapi(schema)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
