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


def _spin(seconds: float) -> None:
    """Stand-in for a client's own work between calls: the CPU stays busy, as it would."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def idle_wakeup(n: int = 2000, spins_us: tuple[int, ...] = (0, 10, 25, 50, 100), cpu: int = 0) -> dict[str, Any]:
    """The raw socket client with ``spin`` µs of busy work before each healthz, in blocks.

    If wall-clock p50 grows by much more than the spin, the extra is not the client's work but
    the daemon's vCPU waking from idle: the longer the client works between calls, the deeper
    the daemon's CPU sleeps. Any client that works between calls pays it, so it is the yardstick
    for the wall-clock part of ``overhead`` that the client's CPU time does not explain."""
    with daemon(cpu=cpu) as (_, proc):
        path = _socket_path(proc)
        _pin_self(1 - cpu)
        raw = RawHTTP(path)
        walls: dict[int, list[float]] = {s: [] for s in spins_us}
        try:
            for r in range(6):  # blocks alternate, round 0 warms up
                for s in spins_us:
                    for _ in range(100 if r == 0 else n // 5):
                        _spin(s / 1e6)
                        t = time.perf_counter()
                        raw.request("GET", "/v1/healthz")
                        if r:
                            walls[s].append(time.perf_counter() - t)
        finally:
            raw.close()
            os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
    base = statistics.median(walls[0]) * 1e6
    out: dict[str, Any] = {"n": n, "load_1min": round(os.getloadavg()[0], 1)}
    for s in spins_us:
        p50 = statistics.median(walls[s]) * 1e6
        out[f"spin_{s}us"] = {"healthz_p50_us": round(p50, 1), "adds_p50_us": round(p50 - base, 1)}
    print("\nraw healthz p50 after a client's busy work between calls (µs):")
    print(
        "  ".join(
            f"spin {s}: {out[f'spin_{s}us']['healthz_p50_us']:.0f} (+{out[f'spin_{s}us']['adds_p50_us']:.0f})"
            for s in spins_us
        )
    )
    return out


class _StampedSocket:
    """A socket that notes when the request left and when its answer's first and last bytes
    came: wrapped around a client's connection, it splits a call into before-send, wait and
    after-answer without touching the client's code."""

    def __init__(self, sock: Any, stamps: dict[str, float]):
        self._sock, self._stamps = sock, stamps

    def sendall(self, data: bytes) -> None:
        self._stamps["sent"] = time.perf_counter()
        self._stamps.pop("first", None)
        self._sock.sendall(data)

    def recv(self, n: int) -> bytes:
        data = self._sock.recv(n)
        now = time.perf_counter()
        self._stamps.setdefault("first", now)
        self._stamps["last"] = now
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def create_phases(n: int = 3000, cpu: int = 0) -> dict[str, Any]:
    """A memslot create through the raw client and ``Client``, alternating call by call, split
    into before the request is sent, waiting for the first byte, reading the rest, and after
    the last byte (parsing and validating the answer): p50 of each, µs."""
    with daemon(cpu=cpu) as (setup, proc):
        path = _socket_path(proc)
        vm = setup.post("/v1/vms", json={}).json()["id"]
        shm = setup.post(f"/v1/vms/{vm}/shared-memory", json={"size": 8 * MiB}).json()["id"]
        _pin_self(1 - cpu)
        stamps: dict[str, float] = {}
        raw, c = RawHTTP(path), Client(path)
        raw.sock = _StampedSocket(raw.sock, stamps)  # type: ignore[assignment]
        connect = c.endpoint.connect
        c.endpoint.connect = lambda: _StampedSocket(connect(), stamps)  # type: ignore[method-assign,assignment,return-value]
        body = json.dumps(
            {"guest_phys_addr": 1 << 32, "memory_size": 2 * MiB, "shared": {"shared_memory_id": shm, "offset": 0}}
        ).encode()
        calls = {
            "raw": (
                lambda: raw.request("PUT", f"/v1/vms/{vm}/memslots/1", body),
                lambda: raw.request("DELETE", f"/v1/vms/{vm}/memslots/1"),
            ),
            "client": (
                lambda: c.put_memslot(vm, 2, (1 << 32) + 2 * MiB, 2 * MiB, shared_memory_id=shm, shared_offset=2 * MiB),
                lambda: c.delete_memslot(vm, 2),
            ),
        }
        phases: dict[str, dict[str, list[float]]] = {k: {p: [] for p in PHASES} for k in calls}
        try:
            for i in range(n + 100):  # the first 100 warm up
                for k in ("raw", "client") if i % 2 else ("client", "raw"):
                    create, delete = calls[k]
                    t0 = time.perf_counter()
                    create()
                    t1 = time.perf_counter()
                    if i >= 100:
                        for name, value in zip(
                            PHASES,
                            (
                                stamps["sent"] - t0,
                                stamps["first"] - stamps["sent"],
                                stamps["last"] - stamps["first"],
                                t1 - stamps["last"],
                                t1 - t0,
                            ),
                            strict=True,
                        ):
                            phases[k][name].append(value)
                    delete()
        finally:
            raw.close()
            c.close()
            os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
    out: dict[str, Any] = {"n": n, "load_1min": round(os.getloadavg()[0], 1)}
    for k, by_phase in phases.items():
        out[k] = {f"{p}_p50_us": round(statistics.median(v) * 1e6, 1) for p, v in by_phase.items()}
    out["client_adds_us"] = {p: round(out["client"][f"{p}_p50_us"] - out["raw"][f"{p}_p50_us"], 1) for p in PHASES}
    print("\nmemslot create, phase by phase, p50 µs:  " + "  ".join(PHASES))
    for k in ("raw", "client"):
        print(f"  {k:<8}" + "".join(f"{out[k][p + '_p50_us']:>12.1f}" for p in PHASES))
    print("  client adds" + "".join(f"{out['client_adds_us'][p]:>+12.1f}" for p in PHASES)[3:])
    return out


PHASES = ("before_send", "wait_first_byte", "rest_of_answer", "after_answer", "total")


def paired(n: int = 3000, cpu: int = 0) -> dict[str, Any]:
    """Raw socket, raw asyncio, ``Client`` and ``AsyncClient`` alternating call by call in one
    event loop (the order rotates), so that every client meets the same machine at the same
    moment: the paired difference is what the client itself adds, free of the drift between
    blocks that a shared machine brings. (Blocks, in ``overhead``, are what a rig making
    thousands of calls in a row sees.)"""
    with daemon(cpu=cpu) as (setup, proc):
        path = _socket_path(proc)
        vm = setup.post("/v1/vms", json={}).json()["id"]
        shm = setup.post(f"/v1/vms/{vm}/shared-memory", json={"size": 8 * MiB}).json()["id"]
        _pin_self(1 - cpu)
        names = ("raw", "raw_asyncio", "client", "async_client")
        # a slot of its own per client, so that every create creates and every delete deletes
        gpa = {k: (1 << 32) + i * 2 * MiB for i, k in enumerate(names)}
        slot = {k: f"/v1/vms/{vm}/memslots/{i + 1}" for i, k in enumerate(names)}
        raw_body = {
            k: json.dumps(
                {
                    "guest_phys_addr": gpa[k],
                    "memory_size": 2 * MiB,
                    "shared": {"shared_memory_id": shm, "offset": i * 2 * MiB},
                }
            ).encode()
            for i, k in enumerate(names)
        }
        walls = {k: {op: [] for op in OPS} for k in names}

        async def run() -> None:
            raw = RawHTTP(path)
            _, ra = await asyncio.get_running_loop().create_unix_connection(_RawAsyncHTTP, path)
            with Client(path) as c:
                async with AsyncClient(path) as a:

                    def shared(i: int) -> dict[str, Any]:
                        return {"shared_memory_id": shm, "shared_offset": i * 2 * MiB}

                    async def sync(fn: Callable[[], Any]) -> Any:
                        return fn()

                    steps = {
                        "raw": [
                            ("healthz", lambda: sync(lambda: raw.request("GET", "/v1/healthz"))),
                            ("create", lambda: sync(lambda: raw.request("PUT", slot["raw"], raw_body["raw"]))),
                            ("delete", lambda: sync(lambda: raw.request("DELETE", slot["raw"]))),
                        ],
                        "raw_asyncio": [
                            ("healthz", lambda: ra.request("GET", "/v1/healthz")),
                            ("create", lambda: ra.request("PUT", slot["raw_asyncio"], raw_body["raw_asyncio"])),
                            ("delete", lambda: ra.request("DELETE", slot["raw_asyncio"])),
                        ],
                        "client": [
                            ("healthz", lambda: sync(c.health)),
                            ("create", lambda: sync(lambda: c.put_memslot(vm, 3, gpa["client"], 2 * MiB, **shared(2)))),
                            ("delete", lambda: sync(lambda: c.delete_memslot(vm, 3))),
                        ],
                        "async_client": [
                            ("healthz", a.health),
                            ("create", lambda: a.put_memslot(vm, 4, gpa["async_client"], 2 * MiB, **shared(3))),
                            ("delete", lambda: a.delete_memslot(vm, 4)),
                        ],
                    }
                    for i in range(n + 100):  # the first 100 warm up
                        order = names[i % 4 :] + names[: i % 4]
                        for step in range(3):  # create then delete by every client in turn
                            for k in order:
                                op, fn = steps[k][step]
                                t = time.perf_counter()
                                await fn()
                                if i >= 100:
                                    walls[k][op].append(time.perf_counter() - t)
            raw.close()
            assert ra.transport is not None
            ra.transport.close()

        try:
            asyncio.run(run())
        finally:
            os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
    out: dict[str, Any] = {"n": n, "load_1min": round(os.getloadavg()[0], 1)}
    for k in names:
        out[k] = {f"{op}_p50_us": round(statistics.median(walls[k][op]) * 1e6, 1) for op in OPS}
    for k in names[1:]:
        out[f"{k}_adds_over_raw_us"] = {op: round(out[k][f"{op}_p50_us"] - out["raw"][f"{op}_p50_us"], 1) for op in OPS}
    print("\npaired, call by call, p50 µs:  " + "   ".join(f"{op}" for op in OPS))
    for k in names:
        print(f"  {k:<14}" + "".join(f"{out[k][op + '_p50_us']:>10.0f}" for op in OPS))
    for k in names[1:]:
        print(f"  {k + ' adds':<14}" + "".join(f"{out[k + '_adds_over_raw_us'][op]:>+10.0f}" for op in OPS))
    return out
