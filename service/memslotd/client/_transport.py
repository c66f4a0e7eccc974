"""HTTP/1.1 keep-alive connections for the client: requests are written as bytes, answers
parsed by httptools (llhttp, the C parser uvicorn serves memslotd with).

Why not httpx: its per-call machinery (URL and header models, the transport and pool layers,
event hooks) cost ~5x the whole raw round trip to the daemon (see README, Performance). This
module does only what a memslotd call needs: one request, a ``Content-Length`` or chunked
answer, keep-alive, TLS over TCP. Sync: blocking sockets, idle connections kept in a small
per-client list, so one client may be shared between threads. Async: an ``asyncio.Protocol``
per connection (no stream reader, one lazy timer per connection instead of one per call) in a
bounded pool, so tasks may share one client; httpcore's async pool (anyio underneath) cost
~10x and asyncio streams with h11 ~2x the client CPU of a raw asyncio protocol, this ~1.1x.

A reused connection the daemon closed while idle (keep-alive timeout, or evicted at its
connection cap) is detected before sending (sync: when it idled for ``PROBE_IDLE_AFTER_S``
or more; async: the loop sees the close), and a request that got no byte of answer on a
reused connection is sent once more on a fresh one (as urllib3 and httpcore do): the daemon
never read it.

Raises ``OSError`` (``ssl.SSLError``, ``TimeoutError``, ``ConnectionError`` included) and
``httptools.HttpParserError``; the client turns both into ``TransportError``.
"""

from __future__ import annotations

import asyncio
import collections
import select
import socket
import ssl
import struct
import time
import urllib.parse

import httptools

__all__ = ["Answer", "Endpoint", "SyncTransport", "AsyncTransport"]

MAX_IDLE = 8  # idle connections a sync client keeps
# A connection idle this long is probed (one select) before it is reused. One idle for less is
# sent on directly: were it closed in between, the request gets no byte of answer and is sent
# again on a fresh connection, which is safe because the daemon never read it.
PROBE_IDLE_AFTER_S = 1.0
MAX_CONNECTIONS = 16  # open connections an async client may have (calls beyond wait for one)
READ_SIZE = 256 << 10


class Answer:
    """Status, lower-cased headers and the whole body of one response. The headers are split
    from the raw head on first use: most calls never read one, so no parser callback runs per
    header."""

    __slots__ = ("status", "_head", "_headers", "body")

    def __init__(self, status: int, head: bytes, body: bytes):
        self.status, self._head, self.body = status, head, body
        self._headers: dict[str, str] | None = None

    @property
    def headers(self) -> dict[str, str]:
        if self._headers is None:
            lines = self._head.partition(b"\r\n\r\n")[0].split(b"\r\n")[1:]  # after the status line
            fields = (line.partition(b":") for line in lines)
            self._headers = {n.decode("latin-1").lower(): v.decode("latin-1").strip() for n, _, v in fields}
        return self._headers


class _Reader:
    """httptools callbacks collecting one response at a time. The head's bytes are kept as they
    arrived (llhttp has checked them) for ``Answer.headers``: an answer starts a read, since a
    connection carries one request at a time."""

    __slots__ = ("parser", "head", "in_head", "chunks", "done", "started", "keep_alive")

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.head: list[bytes] = []
        self.in_head = True
        self.chunks: list[bytes] = []
        self.done = False
        self.started = False
        self.keep_alive = False

    def reset(self) -> None:
        self.head, self.in_head, self.chunks, self.done, self.started = [], True, [], False, False

    def on_headers_complete(self) -> None:
        self.in_head = False

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)

    def on_message_complete(self) -> None:
        self.done = True
        self.keep_alive = self.parser.should_keep_alive()  # only meaningful inside the callback

    def feed(self, data: bytes) -> None:
        if not data:
            raise ConnectionResetError("the daemon closed the connection" + (" mid-answer" if self.started else ""))
        self.started = True
        if self.in_head:
            self.head.append(data)
        self.parser.feed_data(data)

    def answer(self) -> Answer:
        head = self.head[0] if len(self.head) == 1 else b"".join(self.head)
        return Answer(self.parser.get_status_code(), head, b"".join(self.chunks))


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
                _kernel_timeouts(sock, self.timeout)
            except BaseException:
                sock.close()
                raise
            return sock
        sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.tls is None:
                _kernel_timeouts(sock, self.timeout)
            else:  # ssl reads its own way on a timed-out blocking socket: keep Python's timeout
                sock = self.tls.wrap_socket(sock, server_hostname=self.host)
        except BaseException:
            sock.close()
            raise
        return sock

    async def open(self) -> _AsyncConnection:
        loop = asyncio.get_running_loop()
        if self.socket_path is not None:
            _, conn = await loop.create_unix_connection(lambda: _AsyncConnection(loop), self.socket_path)
        else:
            _, conn = await loop.create_connection(
                lambda: _AsyncConnection(loop),
                self.host,
                self.port,
                ssl=self.tls,
                server_hostname=self.host if self.tls else None,
            )
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


def _kernel_timeouts(sock: socket.socket, timeout: float) -> None:
    """A blocking socket whose every send and recv the kernel bounds (SO_SNDTIMEO/SO_RCVTIMEO):
    with ``settimeout`` CPython polls before each of them, two syscalls more per call. A
    timed-out operation raises ``BlockingIOError`` (EAGAIN), which the exchange reports as
    ``TimeoutError``."""
    whole = int(timeout)
    micro = int((timeout - whole) * 1_000_000)
    timeval = struct.pack("ll", whole, micro if whole or micro else 1)  # a zero timeval would mean "never"
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)
    sock.settimeout(None)


def _idle_connection_is_dead(sock: socket.socket) -> bool:
    """A connection nobody is reading from is readable only when the daemon closed it."""
    try:
        return bool(select.select([sock], [], [], 0)[0])
    except (OSError, ValueError):
        return True


class _SyncConnection:
    __slots__ = ("sock", "reader", "timeout", "idle_since")

    def __init__(self, sock: socket.socket, timeout: float):
        self.sock, self.reader, self.timeout = sock, _Reader(), timeout
        self.idle_since = 0.0

    def exchange(self, data: bytes) -> Answer:
        reader = self.reader
        reader.reset()
        try:
            self.sock.sendall(data)
            recv = self.sock.recv
            while not reader.done:
                reader.feed(recv(READ_SIZE))
        except BlockingIOError as exc:  # SO_RCVTIMEO/SO_SNDTIMEO expired
            raise TimeoutError(f"no answer within {self.timeout:g} s") from exc
        return reader.answer()


class SyncTransport:
    def __init__(self, endpoint: Endpoint):
        self.endpoint = endpoint
        self._idle: list[_SyncConnection] = []
        self.probe_idle_after_s = PROBE_IDLE_AFTER_S

    def request(self, method: str, target: str, headers: dict[str, str], body: bytes | None) -> Answer:
        data = self.endpoint.head(method, target, headers, body) + (body or b"")
        conn, reused = self._checkout()
        try:
            try:
                answer = conn.exchange(data)
            except (ConnectionError, ssl.SSLEOFError):  # a TLS peer that closed may end in an EOF error
                if not reused or conn.reader.started:
                    raise
                conn.sock.close()
                conn, reused = self._connect(), False
                answer = conn.exchange(data)
        except BaseException:
            conn.sock.close()
            raise
        if conn.reader.keep_alive and len(self._idle) < MAX_IDLE:
            conn.idle_since = time.monotonic()
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
            if time.monotonic() - conn.idle_since < self.probe_idle_after_s or not _idle_connection_is_dead(conn.sock):
                return conn, True
            conn.sock.close()
        return self._connect(), False

    def _connect(self) -> _SyncConnection:
        return _SyncConnection(self.endpoint.connect(), self.endpoint.timeout)

    def close(self) -> None:
        while self._idle:
            self._idle.pop().sock.close()


class _AsyncConnection(asyncio.Protocol):
    """One keep-alive connection: the loop feeds the parser as bytes arrive (no stream reader in
    between) and the answer's last byte resolves the waiting call's future.

    The deadline is lazy: a connection has at most one timer, armed by the first exchange and
    re-armed only when it fires while a later exchange is still waiting, so a call costs no timer
    of its own (an ``asyncio.timeout`` per call was a fifth of the transport's CPU per call)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.reader = _Reader()
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.closed = False
        self.deadline = 0.0
        self.timeout = 0.0
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        waiter = self.waiter
        if waiter is None or waiter.done():  # bytes nobody asked for: the connection is not usable
            self.close()
            return
        try:
            self.reader.feed(data)
        except Exception as exc:  # httptools.HttpParserError: the waiting call raises it
            waiter.set_exception(exc)
            return
        if self.reader.done:
            waiter.set_result(None)

    def eof_received(self) -> bool:
        self.closed = True
        self._fail(
            ConnectionResetError("the daemon closed the connection" + (" mid-answer" if self.reader.started else ""))
        )
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(exc or ConnectionResetError("the connection was lost"))

    def _fail(self, exc: BaseException) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def _expire(self) -> None:
        self.timer = None
        waiter = self.waiter
        if waiter is None or waiter.done():
            return  # idle: the next exchange arms a new timer
        if self.loop.time() >= self.deadline:
            waiter.set_exception(TimeoutError(f"no answer within {self.timeout:g} s"))
        else:
            self.timer = self.loop.call_at(self.deadline, self._expire)

    async def exchange(self, data: bytes, timeout: float) -> Answer:
        assert self.transport is not None
        loop = self.loop
        self.reader.reset()
        waiter = self.waiter = loop.create_future()
        self.deadline, self.timeout = loop.time() + timeout, timeout
        if self.timer is None:
            self.timer = loop.call_at(self.deadline, self._expire)
        elif self.timer.when() > self.deadline:  # a shorter timeout than the armed one
            self.timer.cancel()
            self.timer = loop.call_at(self.deadline, self._expire)
        self.transport.write(data)
        try:
            await waiter
        finally:
            self.waiter = None
        return self.reader.answer()

    def close(self) -> None:
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.transport is not None:
            self.transport.close()


class AsyncTransport:
    """A bounded pool: a call takes an idle connection or opens one; at ``max_connections`` open
    connections a call waits, first come first served, for one to come back (or for its slot),
    so concurrent calls never share a connection and a burst of tasks never meets the daemon's
    per-peer connection cap. Bound to one event loop at a time (another loop starts afresh)."""

    def __init__(self, endpoint: Endpoint, max_connections: int = MAX_CONNECTIONS):
        self.endpoint = endpoint
        self.max_connections = max_connections
        self._idle: list[_AsyncConnection] = []
        self._open = 0  # connection slots taken: in use, idle or being opened
        # waiting calls, resolved with a connection handed over, or None: open one in my slot
        self._waiting: collections.deque[asyncio.Future[_AsyncConnection | None]] = collections.deque()
        self._loop: asyncio.AbstractEventLoop | None = None

    async def request(self, method: str, target: str, headers: dict[str, str], body: bytes | None) -> Answer:
        data = self.endpoint.head(method, target, headers, body)
        if body:
            data += body
        if asyncio.get_running_loop() is not self._loop:
            self._rebind()
        conn = self._take_idle()  # the common case, without a coroutine of its own
        reused = conn is not None
        if conn is None:
            conn, reused = await self._checkout()
        timeout = self.endpoint.timeout
        while True:
            try:
                answer = await conn.exchange(data, timeout)
                break
            except ConnectionError:
                if reused and not conn.reader.started:  # closed while idle, unread: again, same slot
                    conn.close()
                    conn, reused = await self._open_connection(), False  # gives the slot back if it fails
                    continue
                self._discard(conn)
                raise
            except BaseException:
                self._discard(conn)
                raise
        if conn.reader.keep_alive and not conn.closed:
            self._release(conn)
        else:
            self._discard(conn)
        return answer

    def _take_idle(self) -> _AsyncConnection | None:
        idle = self._idle
        while idle:
            conn = idle.pop()
            if not conn.closed and conn.transport is not None and not conn.transport.is_closing():
                return conn
            self._discard(conn)
        return None

    async def _checkout(self) -> tuple[_AsyncConnection, bool]:
        if self._open < self.max_connections:
            self._open += 1
            return await self._open_connection(), False
        waiter: asyncio.Future[_AsyncConnection | None] = asyncio.get_running_loop().create_future()
        self._waiting.append(waiter)
        try:
            async with asyncio.timeout(self.endpoint.timeout):
                conn = await waiter
        except BaseException:
            if not waiter.done():
                waiter.cancel()  # skipped by whoever frees the next connection
            elif not waiter.cancelled():  # handed over as this call gave up: pass it on
                handed = waiter.result()
                self._free_slot() if handed is None else self._release(handed)
            raise
        if conn is None:
            return await self._open_connection(), False
        return conn, True

    async def _open_connection(self) -> _AsyncConnection:
        """A new connection in a slot the caller holds (the slot is given back if it fails)."""
        try:
            async with asyncio.timeout(self.endpoint.timeout):
                return await self.endpoint.open()
        except BaseException:
            self._free_slot()
            raise

    def _release(self, conn: _AsyncConnection) -> None:
        """A connection ready for the next call: the first waiting call takes it, or it idles."""
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        self._idle.append(conn)

    def _discard(self, conn: _AsyncConnection) -> None:
        conn.close()
        self._free_slot()

    def _free_slot(self) -> None:
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the waiting call opens a connection in this slot
                return
        self._open -= 1

    def _rebind(self) -> None:
        """Connections belong to the loop that opened them: a call from another loop starts afresh."""
        for conn in self._idle:
            if not conn.loop.is_closed():
                conn.loop.call_soon_threadsafe(conn.close)
        self._idle, self._open, self._waiting = [], 0, collections.deque()
        self._loop = asyncio.get_running_loop()

    async def close(self) -> None:
        if asyncio.get_running_loop() is not self._loop:
            self._rebind()
        idle, self._idle = self._idle, []
        for conn in idle:
            self._discard(conn)
        await asyncio.sleep(0)  # let the transports finish closing
