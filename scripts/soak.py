"""Soak: N clients churn one daemon for a while, one subscriber follows the stream, then reconcile.

    python scripts/soak.py [--clients 16] [--seconds 60]

Each client owns a VM and loops over: guest_memfd + shared memory, slot PUT/DELETE, a batch of
creates and deletes, conversions, punches and probes (VMs are re-created now and then). At the
end it prints ops/s and the statuses, and fails (exit 1) unless: no 5xx; every seq arrived once,
in order; replaying the stream gives the VMs and slots that GET reports; the daemon's VM,
guest_memfd and memfd fds match the API's objects.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
from websockets.sync.client import unix_connect

MiB, GiB = 1 << 20, 1 << 30


def start(sock: Path) -> subprocess.Popen[bytes]:
    sock.parent.mkdir(parents=True, exist_ok=True)
    with (sock.parent / "daemon.log").open("wb") as log:  # the child keeps its own copy of the fd
        proc = subprocess.Popen(
            [sys.executable, "-m", "memslotd.daemon", "--socket", str(sock), "--max-probes-per-second", "1000"],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with client(sock) as c:
                if c.get("/v1/healthz").status_code == 200:
                    return proc
        except httpx.TransportError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("soak: the daemon did not start")


def client(sock: Path) -> httpx.Client:
    return httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), base_url="http://memslotd", timeout=60)


def churn(sock: Path, stop: threading.Event, seed: int, statuses: collections.Counter[int], ops: list[int]) -> None:
    rng = random.Random(seed)
    with client(sock) as c:

        def call(method: str, url: str, **kw: object) -> httpx.Response:
            r = c.request(method, url, **kw)  # type: ignore[arg-type]
            statuses[r.status_code] += 1
            ops[0] += 1
            return r

        while not stop.is_set():
            vm = call("POST", "/v1/vms", json={}).json().get("id")
            if vm is None:
                time.sleep(0.01)
                continue
            base = f"/v1/vms/{vm}"
            g = call("POST", f"{base}/guest-memfds", json={"size": 16 * MiB, "flags": ["mmap", "init_shared"]}).json()[
                "id"
            ]
            s = call("POST", f"{base}/shared-memory", json={"size": 16 * MiB}).json()["id"]
            for _ in range(rng.randrange(5, 30)):
                if stop.is_set():
                    break
                i = rng.randrange(8)
                gpa = 4 * GiB + i * 2 * MiB
                kind = rng.randrange(6)
                if kind == 0:
                    call(
                        "PUT",
                        f"{base}/memslots/{i}",
                        json={
                            "guest_phys_addr": gpa,
                            "memory_size": 2 * MiB,
                            "private": {"guest_memfd_id": g, "offset": i * 2 * MiB},
                            "shared": {"shared_memory_id": s, "offset": i * 2 * MiB},
                        },
                    )
                elif kind == 1:
                    call("DELETE", f"{base}/memslots/{i}")
                elif kind == 2:
                    ops_ = [{"op": "delete", "slot": j} for j in range(8, 12)]
                    if rng.random() < 0.5:
                        ops_ = [
                            {
                                "op": "create",
                                "slot": j,
                                "guest_phys_addr": 8 * GiB + j * 4096,
                                "memory_size": 4096,
                                "shared": {"shared_memory_id": s, "offset": j * 4096},
                            }
                            for j in range(8, 12)
                        ]
                    call("POST", f"{base}/memslots:batch", json={"ops": ops_})
                elif kind == 3:
                    call(
                        "POST",
                        f"{base}/memory/convert",
                        json={"guest_phys_addr": gpa, "size": 2 * MiB, "to": rng.choice(["private", "shared"])},
                    )
                elif kind == 4:
                    call("POST", f"{base}/guest-memfds/{g}/punch-hole", json={"offset": i * 2 * MiB, "length": 4096})
                else:
                    call("POST", f"{base}/probe", json={"ops": [{"op": "read", "guest_phys_addr": gpa, "length": 8}]})
            if rng.random() < 0.5:
                call("DELETE", base)


def follow(sock: Path, seqs: list[int], events: list[dict[str, object]], stop: threading.Event) -> None:
    with unix_connect(str(sock), "ws://memslotd/v1/events?since_seq=0", open_timeout=30, max_size=None) as ws:
        while not stop.is_set():
            try:
                e = json.loads(ws.recv(0.5))
            except TimeoutError:
                continue
            if "seq" in e and e.get("type") not in ("hello", "bookmark", "gone"):
                seqs.append(int(e["seq"]))  # type: ignore[call-overload]
                events.append(e)
            elif e.get("type") == "gone":
                raise SystemExit(f"soak: the subscriber was cut off: {e}")


def fds(pid: int) -> collections.Counter[str]:
    kinds: collections.Counter[str] = collections.Counter()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except FileNotFoundError:
            continue
        for kind in ("kvm-vm", "gmem", "memfd:memslotd-vm"):
            if kind in target:
                kinds[kind] += 1
    return kinds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args()
    sock = Path(tempfile.mkdtemp(prefix="msd-soak-")) / "run" / "memslotd.sock"
    proc = start(sock)
    statuses: collections.Counter[int] = collections.Counter()
    ops = [0]
    seqs: list[int] = []
    events: list[dict[str, object]] = []
    stop, stop_follow = threading.Event(), threading.Event()
    follower = threading.Thread(target=follow, args=(sock, seqs, events, stop_follow), daemon=True)
    follower.start()
    workers = [threading.Thread(target=churn, args=(sock, stop, i, statuses, ops)) for i in range(args.clients)]
    started = time.monotonic()
    for w in workers:
        w.start()
    time.sleep(args.seconds)
    stop.set()
    for w in workers:
        w.join(120)
    elapsed = time.monotonic() - started
    failures = []
    try:
        with client(sock) as c:
            head = json.loads(c.get("/v1/events", params={"wait": 0}).text.splitlines()[-1])["seq"]
            deadline = time.monotonic() + 60
            while (not seqs or seqs[-1] < head) and time.monotonic() < deadline:
                time.sleep(0.1)
            stop_follow.set()
            follower.join(10)
            vms = {v["id"]: v for v in c.get("/v1/vms").json()["items"]}
            slots = {
                vm: sorted(s["slot"] for s in c.get(f"/v1/vms/{vm}/memslots", params={"limit": 1000}).json()["items"])
                for vm in vms
            }
            objects = {
                vm: (
                    len(c.get(f"/v1/vms/{vm}/guest-memfds").json()["items"]),
                    len(c.get(f"/v1/vms/{vm}/shared-memory").json()["items"]),
                )
                for vm in vms
            }
            held = fds(proc.pid)
    finally:
        proc.terminate()
        proc.wait(30)
    replayed: dict[str, set[int]] = {}
    for e in events:
        vm, kind, data = str(e.get("vm_id")), e["type"], e.get("data") or {}
        if kind == "vm.created":
            replayed[vm] = set()
        elif kind == "vm.deleted":
            replayed.pop(vm, None)
        elif kind == "memslot.created":
            replayed[vm].add(int(data["slot"]))  # type: ignore[index, call-overload]
        elif kind == "memslot.deleted":
            replayed.get(vm, set()).discard(int(data["slot"]))  # type: ignore[index, call-overload]
    if any(s >= 500 for s in statuses):
        failures.append("5xx answers")
    if seqs != list(range(1, len(seqs) + 1)) or seqs[-1:] != [head]:
        failures.append(f"the stream is not every seq once (got {len(seqs)}, head {head})")
    if {vm: sorted(s) for vm, s in replayed.items()} != slots:
        failures.append("event replay differs from GET state")
    gmems, shms = sum(g for g, _ in objects.values()), sum(s for _, s in objects.values())
    if (held["kvm-vm"], held["gmem"], held["memfd:memslotd-vm"]) != (len(vms), gmems, shms):
        failures.append(f"fds {dict(held)} != API (vms {len(vms)}, guest_memfds {gmems}, shared memory {shms})")
    print(
        json.dumps(
            {
                "clients": args.clients,
                "seconds": round(elapsed, 1),
                "ops": ops[0],
                "ops_per_s": round(ops[0] / elapsed),
                "statuses": dict(sorted(statuses.items())),
                "events": len(seqs),
                "vms_left": len(vms),
                "failures": failures,
            },
            indent=1,
        )
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
