"""``Client`` (sync) and ``AsyncClient`` over httpx: Unix socket by default, or TCP + token + TLS."""

from __future__ import annotations

import os
import ssl
from collections.abc import AsyncIterator
from typing import Any

import httpx

from ..settings import default_socket_path
from ._operations import Call, Operations
from ._tls import tls_context
from .errors import TransportError, error_for
from .events import EventStream, Event

__all__ = ["Client", "AsyncClient", "connection_kwargs"]


def connection_kwargs(socket: str | None = None, url: str | None = None, token: str | None = None,
                      verify: ssl.SSLContext | str | bool = True, cert: tuple[str, str] | None = None,
                      timeout: float = 60.0, asynchronous: bool = False) -> dict[str, Any]:
    """httpx arguments for a Unix socket (default: $MEMSLOTD_SOCKET or the daemon's default path)
    or a TCP URL ($MEMSLOTD_URL) with a bearer token ($MEMSLOTD_TOKEN)."""
    url = url or os.environ.get("MEMSLOTD_URL")
    token = token or os.environ.get("MEMSLOTD_TOKEN")
    headers = {"authorization": f"Bearer {token}"} if token else {}
    if url:
        transport_cls = httpx.AsyncHTTPTransport if asynchronous else httpx.HTTPTransport
        return {"base_url": url, "headers": headers, "timeout": timeout,
                "transport": transport_cls(verify=tls_context(verify, cert), retries=0)}
    path = socket or os.environ.get("MEMSLOTD_SOCKET") or str(default_socket_path())
    transport = (httpx.AsyncHTTPTransport if asynchronous else httpx.HTTPTransport)(uds=path)
    return {"base_url": "http://memslotd", "headers": headers, "timeout": timeout, "transport": transport,
            "_socket": path}


def _result(call: Call, response: httpx.Response) -> Any:
    if response.status_code >= 400:
        try:
            body = response.json()
        except ValueError:
            body = {"detail": response.text[:200]}
        raise error_for(response.status_code, body)
    if call.raw:
        return response.text
    if call.model is None or response.status_code == 204:
        return None
    return call.model.model_validate(response.json())  # type: ignore[attr-defined]


class Client(Operations):
    """Synchronous client. Every API operation is a method (see ``Operations``)."""

    def __init__(self, socket: str | None = None, *, url: str | None = None, token: str | None = None,
                 verify: ssl.SSLContext | str | bool = True, cert: tuple[str, str] | None = None, timeout: float = 60.0):
        kw = connection_kwargs(socket, url, token, verify, cert, timeout)
        self.socket = kw.pop("_socket", None)
        self.url, self.token = url or os.environ.get("MEMSLOTD_URL"), token or os.environ.get("MEMSLOTD_TOKEN")
        self._verify, self._cert = verify, cert
        self.http = httpx.Client(**kw)

    def _execute(self, call: Call) -> Any:
        try:
            response = self.http.request(call.method, call.path, json=call.json, params=call.params, headers=call.headers)
        except httpx.TransportError as exc:
            raise TransportError(f"cannot reach memslotd: {exc}") from exc
        return _result(call, response)

    def events(self, *, since_seq: int | None = None, boot_id: str | None = None, vm_id: str | None = None,
               types: list[str] | None = None, initial_state: bool = False, bookmarks: bool = False) -> EventStream:
        """Events, resuming from the last seq after a disconnect; raises ``CursorGone`` when the
        daemon cannot resume (cursor expired, daemon restarted): re-list, then subscribe again."""
        return EventStream(self.socket, self.url, self.token, self._verify, self._cert, since_seq=since_seq,
                           boot_id=boot_id, vm_id=vm_id, types=types, initial_state=initial_state, bookmarks=bookmarks)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient(Operations):
    """Asynchronous client: the same methods, awaited."""

    def __init__(self, socket: str | None = None, *, url: str | None = None, token: str | None = None,
                 verify: ssl.SSLContext | str | bool = True, cert: tuple[str, str] | None = None, timeout: float = 60.0):
        kw = connection_kwargs(socket, url, token, verify, cert, timeout, asynchronous=True)
        self.socket = kw.pop("_socket", None)
        self.url, self.token = url or os.environ.get("MEMSLOTD_URL"), token or os.environ.get("MEMSLOTD_TOKEN")
        self._verify, self._cert = verify, cert
        self.http = httpx.AsyncClient(**kw)

    async def _run(self, call: Call) -> Any:
        try:
            response = await self.http.request(call.method, call.path, json=call.json, params=call.params,
                                               headers=call.headers)
        except httpx.TransportError as exc:
            raise TransportError(f"cannot reach memslotd: {exc}") from exc
        return _result(call, response)

    def _execute(self, call: Call) -> Any:
        return self._run(call)

    async def events(self, **filters: Any) -> AsyncIterator[Event]:
        """Async version of :meth:`Client.events` (same resume and gone semantics)."""
        stream = EventStream(self.socket, self.url, self.token, self._verify, self._cert, **filters)
        async for event in stream.aiter():
            yield event

    async def aclose(self) -> None:
        await self.http.aclose()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


