"""``Client`` (sync) and ``AsyncClient``: Unix socket by default, or TCP + token + TLS.

The HTTP work is done by ``_transport`` (keep-alive connections, httptools' C parser), bodies
are encoded with orjson and answers validated straight from bytes by the pydantic models."""

from __future__ import annotations

import os
import ssl
import urllib.parse
from collections.abc import AsyncIterator
from typing import Any

import httptools
import orjson

from ..settings import default_socket_path
from ._operations import Call, Operations
from ._tls import tls_context
from ._transport import Answer, AsyncTransport, Endpoint, SyncTransport
from .errors import ServerError, TransportError, error_for
from .events import Event, EventStream

__all__ = ["Client", "AsyncClient"]


class _Base(Operations):
    _transport_type: type[SyncTransport] | type[AsyncTransport]

    def __init__(
        self,
        socket: str | None = None,
        *,
        url: str | None = None,
        token: str | None = None,
        verify: ssl.SSLContext | str | bool = True,
        cert: tuple[str, str] | None = None,
        timeout: float = 60.0,
    ):
        """``socket``: default $MEMSLOTD_SOCKET or the daemon's default path; ``url`` (or
        $MEMSLOTD_URL) selects TCP, with a bearer ``token`` ($MEMSLOTD_TOKEN)."""
        self.url = url or os.environ.get("MEMSLOTD_URL")
        self.token = token or os.environ.get("MEMSLOTD_TOKEN")
        self.socket = None if self.url else (socket or os.environ.get("MEMSLOTD_SOCKET") or str(default_socket_path()))
        self._verify, self._cert = verify, cert
        tls = tls_context(verify, cert) if self.url and self.url.startswith("https:") else None
        self.endpoint = Endpoint(self.socket, self.url, tls, timeout)
        self._headers = {"authorization": f"Bearer {self.token}"} if self.token else {}
        self._transport: Any = self._transport_type(self.endpoint)

    def _prepare(self, call: Call) -> tuple[str, dict[str, str], bytes | None]:
        target = call.path
        if call.params:
            target += "?" + urllib.parse.urlencode(
                {k: _query_value(v) for k, v in call.params.items() if v is not None}
            )
        headers = {**self._headers, **call.headers} if call.headers else self._headers
        return target, headers, None if call.json is None else orjson.dumps(call.json)

    def _unreachable(self, exc: Exception) -> TransportError:
        if isinstance(exc, TimeoutError):
            where, timeout = self.endpoint.where, self.endpoint.timeout
            return TransportError(f"no answer from memslotd at {where} within {timeout:g} s", code="TIMEOUT")
        hint = "; is memslotd running?" if isinstance(exc, FileNotFoundError | ConnectionRefusedError) else ""
        return TransportError(f"cannot reach memslotd at {self.endpoint.where}: {exc}{hint}", code="UNREACHABLE")


def _query_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _result(call: Call, answer: Answer) -> Any:
    if answer.status >= 400:
        try:
            body = orjson.loads(answer.body)
        except orjson.JSONDecodeError:
            body = {"detail": answer.body[:200].decode("utf-8", "replace")}
        raise error_for(answer.status, body)
    if call.params and call.params.get("dry_run") == "true" and answer.headers.get("memslotd-dry-run") != "true":
        # A daemon that predates dry_run on this endpoint ignores the parameter: say so loudly.
        raise ServerError(
            f"the daemon ignored dry_run on {call.method} {call.path}: the operation was carried out",
            status=answer.status,
            code="DRY_RUN_IGNORED",
        )
    if call.raw:
        return answer.body.decode()
    if call.model is None or answer.status == 204:
        return None
    return call.model.model_validate_json(answer.body)  # type: ignore[attr-defined]


class Client(_Base):
    """Synchronous client. Every API operation is a method (see ``Operations``); a client may
    be shared between threads (each request takes an idle connection or opens one)."""

    _transport_type = SyncTransport

    def _execute(self, call: Call) -> Any:
        target, headers, body = self._prepare(call)
        try:
            answer = self._transport.request(call.method, target, headers, body)
        except (OSError, httptools.HttpParserError) as exc:
            raise self._unreachable(exc) from exc
        return _result(call, answer)

    def events(
        self,
        *,
        since_seq: int | None = None,
        boot_id: str | None = None,
        vm_id: str | None = None,
        types: list[str] | None = None,
        initial_state: bool = False,
        bookmarks: bool = False,
    ) -> EventStream:
        """Events, resuming from the last seq after a disconnect; raises ``CursorGone`` when the
        daemon cannot resume (cursor expired, daemon restarted): re-list, then subscribe again."""
        return EventStream(
            self.socket,
            self.url,
            self.token,
            self._verify,
            self._cert,
            since_seq=since_seq,
            boot_id=boot_id,
            vm_id=vm_id,
            types=types,
            initial_state=initial_state,
            bookmarks=bookmarks,
        )

    def close(self) -> None:
        self._transport.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient(_Base):
    """Asynchronous client: the same methods, awaited. Tasks may share one client: concurrent
    calls use separate connections, at most 16 (more calls wait for one). ``timeout`` bounds
    each call (``TransportError`` code ``TIMEOUT``). Used by one event loop at a time."""

    _transport_type = AsyncTransport

    async def _run(self, call: Call) -> Any:
        target, headers, body = self._prepare(call)
        try:
            answer = await self._transport.request(call.method, target, headers, body)
        except (OSError, httptools.HttpParserError) as exc:
            raise self._unreachable(exc) from exc
        return _result(call, answer)

    def _execute(self, call: Call) -> Any:
        return self._run(call)

    async def events(self, **filters: Any) -> AsyncIterator[Event]:
        """Async version of :meth:`Client.events` (same resume and gone semantics)."""
        stream = EventStream(self.socket, self.url, self.token, self._verify, self._cert, **filters)
        async for event in stream.aiter():
            yield event

    async def aclose(self) -> None:
        await self._transport.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
