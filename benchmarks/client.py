"""What ``memslotd.client`` adds to a call: the same operations through the raw keep-alive
socket client, ``Client``, ``AsyncClient`` and plain httpx (the client's transport until
0.1), against one daemon pinned to CPU 0 with the clients on CPU 1.

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

from memslotd.client import AsyncClient, Client

from ._harness import daemon, percentile
from .memslots import RawHTTP, _pin_self, _socket_path

MiB = 1 << 20


class _Samples:
    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def add(self, wall: float, cpu: float) -> None:
        self.wall.append(wall)
        self.cpu.append(cpu)

    def summary(self) -> dict[str, float]:
        us = [x * 1e6 for x in self.wall]
        return {"p50_us": round(statistics.median(us), 1), "p99_us": round(percentile(us, 99), 1),
                "cpu_us": round(statistics.fmean(self.cpu) * 1e6, 1)}


def _run(fn: Callable[[], Any], n: int, into: _Samples) -> None:
    for _ in range(n):
        t, c = time.perf_counter(), time.thread_time()
        fn()
        into.add(time.perf_counter() - t, time.thread_time() - c)


async def _arun(fn: Callable[[], Awaitable[Any]], n: int, into: _Samples) -> None:
    for _ in range(n):
        t, c = time.perf_counter(), time.thread_time()
        await fn()
        into.add(time.perf_counter() - t, time.thread_time() - c)


def overhead(n: int = 1000, rounds: int = 5, cpu: int | None = 0) -> dict[str, Any]:
    """healthz and a memslot PUT create + DELETE (one pair = two calls) per client."""
    with daemon(cpu=cpu) as (setup, proc):
        path = _socket_path(proc)
        vm = setup.post("/v1/vms", json={}).json()["id"]
        shm = setup.post(f"/v1/vms/{vm}/shared-memory", json={"size": 4 * MiB}).json()["id"]
        slot = f"/v1/vms/{vm}/memslots/1"
        body = {"guest_phys_addr": 1 << 32, "memory_size": 2 * MiB, "shared": {"shared_memory_id": shm, "offset": 0}}
        _pin_self(None if cpu is None else 1 - cpu)
        names = ("raw", "client", "async_client", "httpx")
        health = {k: _Samples() for k in names}
        pairs = {k: _Samples() for k in names}
        per_round = max(1, n // rounds)
        try:
            for r in range(rounds + 1):  # round 0 warms every client up and is not counted
                count = 100 if r == 0 else per_round
                sink = lambda d: _Samples() if r == 0 else d  # noqa: E731
                raw = RawHTTP(path)  # fresh connections per round: an idle one may have timed out
                raw_body = json.dumps(body).encode()
                _run(lambda: raw.request("GET", "/v1/healthz"), count, sink(health["raw"]))
                _run(lambda: (raw.request("PUT", slot, raw_body), raw.request("DELETE", slot)), count,
                     sink(pairs["raw"]))
                raw.close()
                with Client(path) as c:
                    _run(c.health, count, sink(health["client"]))
                    _run(lambda: (c.put_memslot(vm, 1, 1 << 32, 2 * MiB, shared_memory_id=shm),
                                  c.delete_memslot(vm, 1)), count, sink(pairs["client"]))

                async def run_async() -> None:
                    async with AsyncClient(path) as a:
                        async def pair() -> None:
                            await a.put_memslot(vm, 1, 1 << 32, 2 * MiB, shared_memory_id=shm)
                            await a.delete_memslot(vm, 1)
                        await _arun(a.health, count, sink(health["async_client"]))
                        await _arun(pair, count, sink(pairs["async_client"]))
                asyncio.run(run_async())
                with httpx.Client(transport=httpx.HTTPTransport(uds=path), base_url="http://memslotd") as h:
                    _run(lambda: h.get("/v1/healthz"), count, sink(health["httpx"]))
                    _run(lambda: (h.put(slot, json=body), h.delete(slot)), count, sink(pairs["httpx"]))
        finally:
            os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
    out: dict[str, Any] = {"n": per_round * rounds, "rounds": rounds, "load_1min": round(os.getloadavg()[0], 1)}
    for k in names:
        h, p = health[k].summary(), pairs[k].summary()
        out[k] = {"healthz_p50_us": h["p50_us"], "healthz_cpu_us": h["cpu_us"],
                  "create_delete_pair_p50_us": p["p50_us"], "create_delete_pair_cpu_us": p["cpu_us"]}
    for k in ("client", "async_client", "httpx"):  # per call: a pair is two calls
        out[f"{k}_adds_per_call_p50_us"] = {
            "healthz": round(out[k]["healthz_p50_us"] - out["raw"]["healthz_p50_us"], 1),
            "memslot_create_delete": round((out[k]["create_delete_pair_p50_us"]
                                            - out["raw"]["create_delete_pair_p50_us"]) / 2, 1),
            "cpu_healthz": round(out[k]["healthz_cpu_us"] - out["raw"]["healthz_cpu_us"], 1)}
    out["goal"] = "memslotd.client adds <= 100 us p50 per call over the raw socket"
    return out
