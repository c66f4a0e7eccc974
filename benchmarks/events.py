"""Event cases: mutation -> WebSocket frame latency, fan-out, memory with a stalled subscriber."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from typing import Any

import websockets

from ._harness import daemon, percentile, rss_kib

MiB = 1 << 20


async def _subscribers(path: str, n: int, expected: int, out: list[float], ready: threading.Event) -> None:
    async def one() -> None:
        async with websockets.unix_connect(
            path, "ws://memslotd/v1/events?types=memory.invalidate_*", max_size=None
        ) as ws:
            await ws.recv()  # hello
            ready_count.append(1)
            if len(ready_count) == n:
                ready.set()
            got = 0
            while got < expected:
                msg = json.loads(await ws.recv())
                if msg["type"] == "bookmark":
                    continue
                out.append(time.time() - msg["time"])
                got += 1

    ready_count: list[int] = []
    await asyncio.gather(*(one() for _ in range(n)))


def latency(subscribers: int, rate: int = 1000, seconds: float = 3.0) -> dict[str, Any]:
    """Punch-holes paced so the daemon emits ``rate`` events/s (2 per punch); every subscriber
    measures daemon-append -> frame-received latency for every event."""
    punches = int(rate * seconds / 2)
    with daemon(cpu=None) as (c, proc):
        path = proc.args[proc.args.index("--socket") + 1]
        vm = c.post("/v1/vms", json={}).json()["id"]
        g = c.post(f"/v1/vms/{vm}/guest-memfds", json={"size": 2 * MiB}).json()["id"]
        samples: list[float] = []
        ready = threading.Event()
        t = threading.Thread(target=lambda: asyncio.run(_subscribers(path, subscribers, 2 * punches, samples, ready)))
        t.start()
        ready.wait(30)
        start = time.perf_counter()
        for i in range(punches):
            target = start + i * 2 / rate
            while time.perf_counter() < target:
                pass
            c.post(f"/v1/vms/{vm}/guest-memfds/{g}/punch-hole", json={"offset": 0, "length": 4096})
        achieved = 2 * punches / (time.perf_counter() - start)
        t.join(60)
    ms = [s * 1e3 for s in samples]
    return {
        "subscribers": subscribers,
        "events_per_s": round(achieved),
        "frames": len(ms),
        "p50_ms": round(percentile(ms, 50), 2),
        "p99_ms": round(percentile(ms, 99), 2),
        "goal": "p99 <= 5 ms at 50 subscribers" if subscribers == 50 else "",
    }


def stalled_subscriber_memory(events: int = 20_000) -> dict[str, Any]:
    """RSS growth of the daemon while one subscriber never reads and the log keeps growing."""
    with daemon("--event-retention-count", "1000", cpu=None) as (c, proc):
        path = proc.args[proc.args.index("--socket") + 1]
        vm = c.post("/v1/vms", json={}).json()["id"]
        g = c.post(f"/v1/vms/{vm}/guest-memfds", json={"size": 2 * MiB}).json()["id"]
        for _ in range(200):
            c.post(f"/v1/vms/{vm}/guest-memfds/{g}/punch-hole", json={"offset": 0, "length": 4096})
        s = socket.socket(socket.AF_UNIX)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(path)
        s.sendall(
            b"GET /v1/events HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        before = rss_kib(proc.pid)
        for _ in range(events // 2):
            c.post(f"/v1/vms/{vm}/guest-memfds/{g}/punch-hole", json={"offset": 0, "length": 4096})
        after = rss_kib(proc.pid)
        s.close()
    return {
        "events": events,
        "rss_before_mib": round(before / 1024, 1),
        "rss_after_mib": round(after / 1024, 1),
        "growth_mib": round((after - before) / 1024, 1),
        "note": "growth = retained event window (bounded by --event-retention-*), not the stalled subscriber",
    }
