"""Memslot cases: the raw ioctl floor, single requests, batches, scale, startup."""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ._harness import RESULTS, daemon, percentile, rss_kib

HERE = Path(__file__).resolve().parent
PAGE = 4096
MiB = 1 << 20


def build_raw_floor() -> Path:
    RESULTS.mkdir(exist_ok=True)
    exe = RESULTS / "raw_floor"
    subprocess.run(["cc", "-O2", "-o", str(exe), str(HERE / "raw_floor.c")], check=True)
    return exe


def raw_floor(n: int = 10_000, existing: int = 0, cpu: int | None = 0) -> dict[str, Any]:
    cmd = [str(build_raw_floor()), str(n), str(existing)]
    if cpu is not None:
        cmd = ["taskset", "-c", str(cpu), *cmd]
    out = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    return {
        "n": n,
        "existing": existing,
        "cpu": "unpinned" if cpu is None else cpu,
        "create_p50_us": out["create_p50_ns"] / 1e3,
        "create_p99_us": out["create_p99_ns"] / 1e3,
        "delete_p50_us": out["delete_p50_ns"] / 1e3,
        "delete_p99_us": out["delete_p99_ns"] / 1e3,
    }


def raw_batch_floor(n: int = 1000, cpu: int | None = 0) -> dict[str, Any]:
    """The kernel alone doing what a batch does: n creates of distinct 2 MiB slots, then n deletes."""
    cmd = [str(build_raw_floor()), str(n), "0", "batch"]
    if cpu is not None:
        cmd = ["taskset", "-c", str(cpu), *cmd]
    runs = [json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout) for _ in range(5)]
    return {
        "n": n,
        "create_us_per_slot": round(statistics.median(r["create_mean_ns"] for r in runs) / 1e3, 2),
        "delete_us_per_slot": round(statistics.median(r["delete_mean_ns"] for r in runs) / 1e3, 2),
    }


class RawHTTP:
    """A minimal keep-alive HTTP/1.1 client over a Unix socket: the client's own cost stays
    far below httpx's, so the numbers are the daemon's."""

    def __init__(self, path: str):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.buf = b""

    def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        head = f"{method} {path} HTTP/1.1\r\nHost: m\r\nContent-Length: {len(body)}\r\n"
        if body:
            head += "Content-Type: application/json\r\n"
        self.sock.sendall(head.encode() + b"\r\n" + body)
        while b"\r\n\r\n" not in self.buf:
            self.buf += self.sock.recv(65536)
        header, _, rest = self.buf.partition(b"\r\n\r\n")
        length = 0
        for line in header.split(b"\r\n")[1:]:
            k, _, v = line.partition(b":")
            if k.strip().lower() == b"content-length":
                length = int(v)
        while len(rest) < length:
            rest += self.sock.recv(65536)
        self.buf = rest[length:]
        return int(header.split(b" ", 2)[1]), rest[:length]

    def close(self) -> None:
        self.sock.close()


def _socket_path(proc: subprocess.Popen[bytes]) -> str:
    return str(proc.args[proc.args.index("--socket") + 1])  # type: ignore[union-attr,index]


def _pin_self(cpu: int | None) -> None:
    if cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {cpu})


def single_requests(n: int = 3000, existing: int = 0, cpu: int | None = 0) -> dict[str, Any]:
    """PUT create and DELETE of one 2 MiB slot over the Unix socket, with ``existing`` other slots."""
    with daemon(cpu=cpu) as (c, proc):
        vm = c.post("/v1/vms", json={}).json()["id"]
        shm = c.post(f"/v1/vms/{vm}/shared-memory", json={"size": 4 * MiB + max(existing, 1) * PAGE}).json()["id"]
        for start in range(0, existing, 4096):
            ops = [
                {
                    "op": "create",
                    "slot": 100 + i,
                    "guest_phys_addr": (1 << 40) + i * 2 * PAGE,
                    "memory_size": PAGE,
                    "shared": {"shared_memory_id": shm, "offset": 4 * MiB + i * PAGE},
                }
                for i in range(start, min(start + 4096, existing))
            ]
            assert c.post(f"/v1/vms/{vm}/memslots:batch", json={"ops": ops}).status_code == 200
        other = None if cpu is None else 1 - cpu  # the client on the other core
        _pin_self(other)
        raw = RawHTTP(_socket_path(proc))
        body = json.dumps(
            {"guest_phys_addr": 1 << 32, "memory_size": 2 * MiB, "shared": {"shared_memory_id": shm, "offset": 0}}
        ).encode()
        creates, deletes, health = [], [], []
        for _ in range(200):  # warm up
            raw.request("PUT", f"/v1/vms/{vm}/memslots/1", body)
            raw.request("DELETE", f"/v1/vms/{vm}/memslots/1")
        for _ in range(n):
            t0 = time.perf_counter()
            status, _ = raw.request("PUT", f"/v1/vms/{vm}/memslots/1", body)
            t1 = time.perf_counter()
            status2, _ = raw.request("DELETE", f"/v1/vms/{vm}/memslots/1")
            t2 = time.perf_counter()
            assert status == 201 and status2 == 204
            creates.append(t1 - t0)
            deletes.append(t2 - t1)
        for _ in range(n):
            t0 = time.perf_counter()
            raw.request("GET", "/v1/healthz")
            health.append(time.perf_counter() - t0)
        raw.close()
        rss = rss_kib(proc.pid)
        os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
    us = lambda xs, p: round(percentile([x * 1e6 for x in xs], p), 1)  # noqa: E731
    return {
        "existing": existing,
        "cpu": "unpinned" if cpu is None else cpu,
        "create_p50_us": us(creates, 50),
        "create_p99_us": us(creates, 99),
        "delete_p50_us": us(deletes, 50),
        "delete_p99_us": us(deletes, 99),
        "healthz_p50_us": us(health, 50),
        "healthz_p99_us": us(health, 99),
        "rss_mib": round(rss / 1024, 1),
    }


def batches(n: int = 1000, cpu: int | None = 0, runs: int = 7) -> dict[str, Any]:
    """A batch of ``n`` creates then a batch of ``n`` deletes: per-slot cost, request to answer.

    Bodies are encoded once up front and sent with the raw keep-alive client (pinned to the
    other core), so the numbers are the daemon's, not the client's JSON encoder's."""
    with daemon(cpu=cpu) as (c, proc):
        vm = c.post("/v1/vms", json={}).json()["id"]
        shm = c.post(f"/v1/vms/{vm}/shared-memory", json={"size": n * 2 * MiB}).json()["id"]
        creates = json.dumps(
            {
                "ops": [
                    {
                        "op": "create",
                        "slot": i,
                        "guest_phys_addr": (1 << 32) + i * 2 * MiB,
                        "memory_size": 2 * MiB,
                        "shared": {"shared_memory_id": shm, "offset": i * 2 * MiB},
                    }
                    for i in range(n)
                ]
            }
        ).encode()
        deletes = json.dumps({"ops": [{"op": "delete", "slot": i} for i in range(n)]}).encode()
        _pin_self(None if cpu is None else 1 - cpu)
        raw = RawHTTP(_socket_path(proc))
        c_times, d_times = [], []
        try:
            for _ in range(runs):
                t0 = time.perf_counter()
                assert raw.request("POST", f"/v1/vms/{vm}/memslots:batch", creates)[0] == 200
                t1 = time.perf_counter()
                assert raw.request("POST", f"/v1/vms/{vm}/memslots:batch", deletes)[0] == 200
                t2 = time.perf_counter()
                c_times.append(t1 - t0)
                d_times.append(t2 - t1)
        finally:
            raw.close()
            os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
    return {
        "n": n,
        "runs": runs,
        "create_us_per_slot": round(statistics.median(c_times) / n * 1e6, 2),
        "delete_us_per_slot": round(statistics.median(d_times) / n * 1e6, 2),
    }


def startup(runs: int = 5) -> dict[str, Any]:
    """Process start -> the socket accepts a connection, and -> the first answer to /v1/healthz.

    The daemon binds its socket before importing the web stack, so an early client is queued
    by the kernel (as with socket activation) and answered once the app is up."""
    accepting, answering = [], []
    for _ in range(runs):
        tmp = Path(tempfile.mkdtemp(prefix="msd-start-"))
        sock = tmp / "s.sock"
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "memslotd.daemon", "--socket", str(sock), "--log-level", "warning"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        while True:
            try:
                raw = RawHTTP(str(sock))
                break
            except OSError:
                time.sleep(0.0005)
        accepting.append(time.perf_counter() - t0)
        assert raw.request("GET", "/v1/healthz")[0] == 200  # queued until the app is ready
        answering.append(time.perf_counter() - t0)
        raw.close()
        proc.terminate()
        proc.wait(10)
    return {
        "runs": runs,
        "accepting_p50_ms": round(statistics.median(accepting) * 1e3, 1),
        "first_answer_p50_ms": round(statistics.median(answering) * 1e3, 1),
        "goal": "socket accepting <= 300 ms",
    }


def scale_memory(total: int = 32764) -> dict[str, Any]:
    """Daemon RSS idle, and with every user slot of one VM created."""
    with daemon() as (c, proc):
        vm = c.post("/v1/vms", json={}).json()["id"]
        shm = c.post(f"/v1/vms/{vm}/shared-memory", json={"size": total * PAGE}).json()["id"]
        idle = rss_kib(proc.pid)
        for start in range(0, total, 4096):
            ops = [
                {
                    "op": "create",
                    "slot": i,
                    "guest_phys_addr": i * 2 * PAGE,
                    "memory_size": PAGE,
                    "shared": {"shared_memory_id": shm, "offset": i * PAGE},
                }
                for i in range(start, min(start + 4096, total))
            ]
            assert c.post(f"/v1/vms/{vm}/memslots:batch", json={"ops": ops}).status_code == 200
        full = rss_kib(proc.pid)
        t0 = time.perf_counter()
        pages, cursor = 0, None
        while True:
            page = c.get(
                f"/v1/vms/{vm}/memslots", params={"limit": 1000, **({"cursor": cursor} if cursor else {})}
            ).json()
            pages += 1
            cursor = page["next_cursor"]
            if not cursor:
                break
        list_all = time.perf_counter() - t0
    return {
        "slots": total,
        "rss_idle_mib": round(idle / 1024, 1),
        "rss_full_mib": round(full / 1024, 1),
        "growth_mib": round((full - idle) / 1024, 1),
        "goal": "<= 64 MiB above idle",
        "list_all_pages_ms": round(list_all * 1e3, 1),
        "pages": pages,
    }
