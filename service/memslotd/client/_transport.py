"""HTTP/1.1 keep-alive connections for the client: requests are written as bytes, answers
parsed by httptools (llhttp, the C parser uvicorn serves memslotd with).

Why not httpx: its per-call machinery (URL and header models, the transport and pool layers,
event hooks) cost ~5x the whole raw round trip to the daemon (see README, Performance). This
module does only what a memslotd call needs: one request, a ``Content-Length`` or chunked
answer, keep-alive, TLS over TCP. Idle connections are kept in a small per-client pool, so one
client may be shared between threads (sync) or tasks (async).

A reused connection the daemon closed while idle (keep-alive timeout) is detected before
sending, and a request that got no byte of answer on a reused connection is sent once more on a
fresh one (as urllib3 and httpcore do): the daemon never read it.

Raises ``OSError`` (``ssl.SSLError``, ``TimeoutError``, ``ConnectionError`` included) and
``httptools.HttpParserError``; the client turns both into ``TransportError``.
"""

from __future__ import annotations

import asyncio
import select
import socket
import ssl
import urllib.parse

import httptools

__all__ = ["Answer", "Endpoint", "SyncTransport", "AsyncTransport"]

MAX_IDLE = 8  # idle connections kept per client
READ_SIZE = 256 << 10


class Answer:
    """Status, lower-cased headers and the whole body of one response."""

    __slots__ = ("status", "headers", "body")

    def __init__(self, status: int, headers: dict[str, str], body: bytes):
        self.status, self.headers, self.body = status, headers, body


class _Reader:
    """httptools callbacks collecting one response at a time."""

    __slots__ = ("parser", "headers", "chunks", "done", "started", "keep_alive")

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.headers: dict[str, str] = {}
        self.chunks: list[bytes] = []
        self.done = False
        self.started = False
        self.keep_alive = False

    def reset(self) -> None:
        self.headers, self.chunks, self.done, self.started = {}, [], False, False

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)

    def on_message_complete(self) -> None:
        self.done = True
        self.keep_alive = self.parser.should_keep_alive()  # only meaningful inside the callback

    def feed(self, data: bytes) -> None:
        if not data:
            raise ConnectionResetError("the daemon closed the connection" + (" mid-answer" if self.started else ""))
        self.started = True
        self.parser.feed_data(data)

    def answer(self) -> Answer:
        return Answer(self.parser.get_status_code(), self.headers, b"".join(self.chunks))


class Endpoint:
    """Where the daemon listens: a Unix socket path, or an ``http(s)://host:port`` URL."""

    def __init__(self, socket_path: str | None, url: str | None, tls: ssl.SSLContext | None, timeout: float):
        self.socket_path, self.timeout = socket_path, timeout
        if url:
            parts = urllib.parse.urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"not an http(s) URL: {url!r}")
            self.host = parts.hostname
            self.port = parts.port or (443 if parts.scheme == "https" else 80)
            self.tls = tls if parts.scheme == "https" else None
            self.prefix = parts.path.rstrip("/")
            authority = parts.netloc.rpartition("@")[2]
        else:
            self.host, self.port, self.tls, self.prefix, authority = "", 0, None, "", "memslotd"
        self.authority = authority
        self.where = f"{url}" if url else f"unix socket {socket_path}"

    def connect(self) -> socket.socket:
        if self.socket_path is not None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.settimeout(self.timeout)
                sock.connect(self.socket_path)
            except BaseException:
                sock.close()
                raise
            return sock
        sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.tls is not None:
            try:
                sock = self.tls.wrap_socket(sock, server_hostname=self.host)
            except BaseException:
                sock.close()
                raise
        return sock

    async def open(self) -> "_AsyncConnection":
        loop = asyncio.get_running_loop()
        if self.socket_path is not None:
            _, conn = await loop.create_unix_connection(_AsyncConnection, self.socket_path)
        else:
            _, conn = await loop.create_connection(_AsyncConnection, self.host, self.port, ssl=self.tls,
                                                   server_hostname=self.host if self.tls else None)
        return conn

    def head(self, method: str, target: str, headers: dict[str, str], body: bytes | None) -> bytes:
        lines = [f"{method} {self.prefix}{target} HTTP/1.1\r\nhost: {self.authority}\r\n"]
        for name, value in headers.items():
            if "\n" in value or "\r" in value:
                raise ValueError(f"header {name} contains a line break")
            lines.append(f"{name}: {value}\r\n")
        if body is not None:
            lines.append(f"content-type: application/json\r\ncontent-length: {len(body)}\r\n")
        elif method in ("POST", "PUT", "PATCH"):
            lines.append("content-length: 0\r\n")
        lines.append("\r\n")
        return "".join(lines).encode("latin-1")


def _idle_connection_is_dead(sock: socket.socket) -> bool:
    """A connection nobody is reading from is readable only when the daemon closed it."""
    try:
        return bool(select.select([sock], [], [], 0)[0])
    except (OSError, ValueError):
        return True


class _SyncConnection:
    __slots__ = ("sock", "reader")

    def __init__(self, sock: socket.socket):
        self.sock, self.reader = sock, _Reader()

    def exchange(self, data: bytes) -> Answer:
        reader = self.reader
        reader.reset()
        self.sock.sendall(data)
        recv = self.sock.recv
        while not reader.done:
            reader.feed(recv(READ_SIZE))
        return reader.answer()


class SyncTransport:
    def __init__(self, endpoint: Endpoint):
        self.endpoint = endpoint
        self._idle: list[_SyncConnection] = []

    def request(self, method: str, target: str, headers: dict[str, str], body: bytes | None) -> Answer:
        data = self.endpoint.head(method, target, headers, body) + (body or b"")
        conn, reused = self._checkout()
        try:
            try:
                answer = conn.exchange(data)
            except ConnectionError:
                if not reused or conn.reader.started:
                    raise
                conn.sock.close()
                conn, reused = _SyncConnection(self.endpoint.connect()), False
                answer = conn.exchange(data)
        except BaseException:
            conn.sock.close()
            raise
        if conn.reader.keep_alive and len(self._idle) < MAX_IDLE:
            self._idle.append(conn)
        else:
            conn.sock.close()
        return answer

    def _checkout(self) -> tuple[_SyncConnection, bool]:
        while self._idle:
            try:
                conn = self._idle.pop()
            except IndexError:  # another thread took the last one
                break
            if not _idle_connection_is_dead(conn.sock):
                return conn, True
            conn.sock.close()
        return _SyncConnection(self.endpoint.connect()), False

    def close(self) -> None:
        while self._idle:
            self._idle.pop().sock.close()


class _AsyncConnection(asyncio.Protocol):
    """An asyncio protocol feeding the parser as bytes arrive (no stream reader in between)."""

    def __init__(self) -> None:
        self.reader = _Reader()
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.reader.feed(data)
        except Exception as exc:  # httptools.HttpParserError: the waiter raises it
            self._wake(exc)
            return
        if self.reader.done:
            self._wake(None)

    def eof_received(self) -> bool:
        self.closed = True
        self._wake(ConnectionResetError("the daemon closed the connection"
                                        + (" mid-answer" if self.reader.started else "")))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._wake(exc or ConnectionResetError("the connection was lost"))

    def _wake(self, exc: BaseException | None) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            if exc is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(exc)

    async def exchange(self, data: bytes) -> Answer:
        assert self.transport is not None
        self.reader.reset()
        self.waiter = asyncio.get_running_loop().create_future()
        try:
            self.transport.write(data)
            await self.waiter
        finally:
            self.waiter = None
        return self.reader.answer()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class AsyncTransport:
    def __init__(self, endpoint: Endpoint):
        self.endpoint = endpoint
        self._idle: list[_AsyncConnection] = []

    async def request(self, method: str, target: str, headers: dict[str, str], body: bytes | None) -> Answer:
        data = self.endpoint.head(method, target, headers, body) + (body or b"")
        async with asyncio.timeout(self.endpoint.timeout):
            conn, reused = await self._checkout()
            try:
                try:
                    answer = await conn.exchange(data)
                except ConnectionError:
                    if not reused or conn.reader.started:
                        raise
                    conn.close()
                    conn, reused = await self.endpoint.open(), False
                    answer = await conn.exchange(data)
            except BaseException:
                conn.close()
                raise
        if conn.reader.keep_alive and len(self._idle) < MAX_IDLE:
            self._idle.append(conn)
        else:
            conn.close()
        return answer

    async def _checkout(self) -> tuple[_AsyncConnection, bool]:
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed and conn.transport is not None and not conn.transport.is_closing():
                return conn, True
            conn.close()
        return await self.endpoint.open(), False

    async def close(self) -> None:
        while self._idle:
            self._idle.pop().close()
        await asyncio.sleep(0)  # let the transports finish closing

