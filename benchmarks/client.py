"""What ``memslotd.client`` adds to a call: healthz, memslot create (PUT) and delete through the
raw keep-alive socket client, a raw asyncio protocol (the event loop's own floor), ``Client``,
``AsyncClient`` (on asyncio and on uvloop) and plain httpx (the client's transport until 0.1),
against one daemon pinned to CPU 0 with the clients on CPU 1.

Blocks of each client alternate over several rounds, so a load change on a shared machine
hits all of them alike. Besides wall-clock percentiles, each case reports the client's own
CPU time per call (``time.thread_time``), which a busy neighbour disturbs much less.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import uvloop

from memslotd.client import AsyncClient, Client

from ._harness import daemon, percentile
from .memslots import RawHTTP, _pin_self, _socket_path

MiB = 1 << 20
OPS = ("healthz", "create", "delete")
CLIENTS = ("raw", "raw_asyncio", "client", "async_client", "async_client_uvloop", "httpx")


class _Samples:
    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def summary(self) -> dict[str, float]:
        us = [x * 1e6 for x in self.wall]
        return {
            "p50_us": round(statistics.median(us), 1),
            "p99_us": round(percentile(us, 99), 1),
            "cpu_us": round(statistics.fmean(self.cpu) * 1e6, 1),
        }


class _Counted:
    """The samples of one client in one round (round 0 warms up and is dropped)."""

    def __init__(self, into: dict[str, _Samples] | None):
        self.into = into

    def add(self, op: str, wall: float, cpu: float) -> None:
        if self.into is not None:
            self.into[op].wall.append(wall)
            self.into[op].cpu.append(cpu)

    def run(self, n: int, steps: list[tuple[str, Callable[[], Any]]]) -> None:
        for _ in range(n):
            for op, fn in steps:
                t, c = time.perf_counter(), time.thread_time()
                fn()
                self.add(op, time.perf_counter() - t, time.thread_time() - c)

    async def arun(self, n: int, steps: list[tuple[str, Callable[[], Awaitable[Any]]]]) -> None:
        for _ in range(n):
            for op, fn in steps:
                t, c = time.perf_counter(), time.thread_time()
                await fn()
                self.add(op, time.perf_counter() - t, time.thread_time() - c)


class _RawAsyncHTTP(asyncio.Protocol):
    """The asyncio counterpart of ``RawHTTP``: one connection, ``Content-Length`` answers only."""

    def __init__(self) -> None:
        self.buf = b""
        self.want = -1
        self.done: asyncio.Future[None] | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.want < 0 and b"\r\n\r\n" in self.buf:
            head, _, rest = self.buf.partition(b"\r\n\r\n")
            length = next(
                (
                    int(v)
                    for k, _, v in (line.partition(b":") for line in head.split(b"\r\n")[1:])
                    if k.strip().lower() == b"content-length"
                ),
                0,
            )
            self.buf, self.want = rest, length
        if 0 <= self.want <= len(self.buf) and self.done is not None:
            self.buf, self.want = self.buf[self.want :], -1
            self.done.set_result(None)

    async def request(self, method: str, path: str, body: bytes = b"") -> None:
        assert self.transport is not None
        head = f"{method} {path} HTTP/1.1\r\nHost: m\r\nContent-Length: {len(body)}\r\n"
        if body:
            head += "Content-Type: application/json\r\n"
        self.done = asyncio.get_running_loop().create_future()
        self.transport.write(head.encode() + b"\r\n" + body)
        await self.done


def overhead(n: int = 1000, rounds: int = 5, cpu: int | None = 0) -> dict[str, Any]:
    """Per client: ``n`` healthz, memslot PUT creates and DELETEs, each timed on its own."""
    with daemon(cpu=cpu) as (setup, proc):
        path = _socket_path(proc)
        vm = setup.post("/v1/vms", json={}).json()["id"]
        shm = setup.post(f"/v1/vms/{vm}/shared-memory", json={"size": 4 * MiB}).json()["id"]
        slot = f"/v1/vms/{vm}/memslots/1"
        body = {"guest_phys_addr": 1 << 32, "memory_size": 2 * MiB, "shared": {"shared_memory_id": shm, "offset": 0}}
        raw_body = json.dumps(body).encode()
        _pin_self(None if cpu is None else 1 - cpu)
        samples = {k: {op: _Samples() for op in OPS} for k in CLIENTS}
        per_round = max(1, n // rounds)

        async def run_async(count: int, into: _Counted, raw: bool) -> None:
            if raw:
                _, r = await asyncio.get_running_loop().create_unix_connection(_RawAsyncHTTP, path)
                await into.arun(
                    count,
                    [
                        ("healthz", lambda: r.request("GET", "/v1/healthz")),
                        ("create", lambda: r.request("PUT", slot, raw_body)),
                        ("delete", lambda: r.request("DELETE", slot)),
                    ],
                )
                assert r.transport is not None
                r.transport.close()
                return
            async with AsyncClient(path) as a:
                await into.arun(
                    count,
                    [
                        ("healthz", a.health),
                        ("create", lambda: a.put_memslot(vm, 1, 1 << 32, 2 * MiB, shared_memory_id=shm)),
                        ("delete", lambda: a.delete_memslot(vm, 1)),
                    ],
                )

        try:
            for r in range(rounds + 1):  # round 0 warms every client up and is not counted
                count = 100 if r == 0 else per_round

                def sink(k: str) -> _Counted:
                    return _Counted(None if r == 0 else samples[k])  # noqa: B023 - used at once

                raw = RawHTTP(path)  # fresh connections per round: an idle one may have timed out
                sink("raw").run(
                    count,
                    [
                        ("healthz", lambda: raw.request("GET", "/v1/healthz")),  # noqa: B023 - run at once
                        ("create", lambda: raw.request("PUT", slot, raw_body)),  # noqa: B023
                        ("delete", lambda: raw.request("DELETE", slot)),  # noqa: B023
                    ],
                )
                raw.close()
                asyncio.run(run_async(count, sink("raw_asyncio"), raw=True))
                with Client(path) as c:
                    sink("client").run(
                        count,
                        [
                            ("healthz", c.health),
                            ("create", lambda: c.put_memslot(vm, 1, 1 << 32, 2 * MiB, shared_memory_id=shm)),
                            ("delete", lambda: c.delete_memslot(vm, 1)),
                        ],
                    )
                asyncio.run(run_async(count, sink("async_client"), raw=False))
                uvloop.run(run_async(count, sink("async_client_uvloop"), raw=False))
                with httpx.Client(transport=httpx.HTTPTransport(uds=path), base_url="http://memslotd") as h:
                    sink("httpx").run(
                        count,
                        [
                            ("healthz", lambda: h.get("/v1/healthz")),
                            ("create", lambda: h.put(slot, json=body)),
                            ("delete", lambda: h.delete(slot)),
                        ],
                    )
        finally:
            os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
    out: dict[str, Any] = {"n": per_round * rounds, "rounds": rounds, "load_1min": round(os.getloadavg()[0], 1)}
    for k in CLIENTS:
        out[k] = {f"{op}_{m}": v for op in OPS for m, v in samples[k][op].summary().items()}
    for k in CLIENTS[1:]:
        out[f"{k}_adds_over_raw_us"] = {
            f"{op}_{m}": round(out[k][f"{op}_{m}_us"] - out["raw"][f"{op}_{m}_us"], 1)
            for op in OPS
            for m in ("p50", "cpu")
        }
    out["goal"] = "memslotd.client adds <= 100 us p50 per call over the raw socket"
    print(table(out))
    return out


def table(out: dict[str, Any]) -> str:
    """Side by side: p50 / p99 (client CPU) in µs per call, one row per client."""

    def cell(r: dict[str, float], op: str) -> str:
        return f"{r[op + '_p50_us']:.0f} / {r[op + '_p99_us']:.0f} ({r[op + '_cpu_us']:.0f})"

    def added(a: dict[str, float], op: str) -> str:
        return f"{a[op + '_p50']:+.0f} p50 ({a[op + '_cpu']:+.0f} CPU)"

    lines = [
        f"\nper call, µs: p50 / p99 (client CPU); n={out['n']}, load {out['load_1min']}",
        f"{'client':<22}" + "".join(f"{op:>24}" for op in OPS),
    ]
    lines += [f"{k:<22}" + "".join(f"{cell(out[k], op):>24}" for op in OPS) for k in CLIENTS]
    lines += [
        f"{k + ' adds':<22}" + "".join(f"{added(out[k + '_adds_over_raw_us'], op):>24}" for op in OPS)
        for k in ("client", "async_client")
    ]
    return "\n".join(lines)
