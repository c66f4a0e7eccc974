"""Tiny benchmark harness: timing helpers, a daemon on a temporary socket, the report."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

RESULTS = Path(__file__).resolve().parent / "results"


def percentile(samples: list[float], p: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def summarize(samples_s: list[float]) -> dict[str, float]:
    us = [x * 1e6 for x in samples_s]
    return {
        "n": len(us),
        "p50_us": round(statistics.median(us), 1),
        "p99_us": round(percentile(us, 99), 1),
        "mean_us": round(statistics.fmean(us), 1),
    }


def timed(fn: Callable[[], Any], n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


@contextmanager
def daemon(*args: str, cpu: int | None = 0) -> Iterator[tuple[httpx.Client, subprocess.Popen[bytes]]]:
    """The real daemon over its Unix socket, with a keep-alive client; pinned to ``cpu``."""
    tmp = Path(tempfile.mkdtemp(prefix="msd-bench-"))
    sock = tmp / "memslotd.sock"
    cmd = [sys.executable, "-m", "memslotd.daemon", "--socket", str(sock), *args]  # default logging: info, JSON
    if cpu is not None:
        cmd = ["taskset", "-c", str(cpu), *cmd]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), base_url="http://memslotd", timeout=600)
    try:
        for _ in range(1000):
            try:
                if client.get("/v1/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.01)
        yield client, proc
    finally:
        client.close()
        proc.terminate()
        proc.wait(30)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def machine() -> dict[str, Any]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "?",
    )
    return {"kernel": platform.release(), "cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version()}


def report(results: dict[str, dict[str, Any]]) -> None:
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"bench-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps({"machine": machine(), "results": results}, indent=2))
    print(f"\n{'case':<48} result")
    print("-" * 100)
    for name, r in results.items():
        print(f"{name:<48} " + ", ".join(f"{k}={v}" for k, v in r.items()))
    print(f"\nwritten to {out}")
