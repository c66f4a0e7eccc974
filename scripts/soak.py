"""Soak: N clients churn one daemon for a while, one subscriber follows the stream, then reconcile.

    python scripts/soak.py [--clients 16] [--seconds 60]

Each client owns a VM and loops over: guest_memfd + shared memory, slot PUT/DELETE, a batch of
creates and deletes, conversions, punches and probes (VMs are re-created now and then). At the
end it prints ops/s and the statuses, and fails (exit 1) unless: no 5xx; every seq arrived once,
in order; replaying the stream gives the VMs and slots that GET reports; the daemon's VM,
guest_memfd and memfd fds match the API's objects; a guest probe of every slot's first and
last page reads the pattern the host wrote into the backing ``guest_backing`` names (and the
attribute state the API reports), and a probe of every hole (a GPA next to a slot, or beyond
the last, that no slot covers) takes the MMIO exit the API documents.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

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


def churn(
    sock: Path, stop: threading.Event, seed: int, statuses: collections.Counter[int], ops: list[int], keep: int
) -> None:
    """One client's loop. It keeps at most ``keep`` of its VMs alive (the oldest goes first), so
    the clients together stay under the daemon's VM quota and keep churning instead of
    collecting 429s once the quota is full."""
    rng = random.Random(seed)
    mine: list[str] = []
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
            mine.append(vm)
            if rng.random() < 0.5 or len(mine) > keep:
                call("DELETE", f"/v1/vms/{mine.pop(0 if len(mine) > keep else -1)}")


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


def retrying(c: httpx.Client, method: str, url: str, statuses: collections.Counter[int], **kw: Any) -> httpx.Response:
    """One call of the reconciliation; a 429 (the probe rate) waits for its Retry-After and goes again."""
    for _ in range(50):
        r = c.request(method, url, **kw)
        statuses[r.status_code] += 1
        if r.status_code != 429:
            return r
        time.sleep(float(r.headers.get("retry-after", "0.1")))
    return r


def host_bytes(
    c: httpx.Client,
    base: str,
    part: dict[str, Any] | None,
    kind: str,
    offset: int,
    data: bytes | None,
    statuses: collections.Counter[int],
) -> bytes | None:
    """Write ``data`` into a slot part's backing at ``offset`` (or read 8 bytes there); None where the host may not."""
    if part is None:
        return None
    url = (
        f"{base}/guest-memfds/{part['guest_memfd_id']}/bytes"
        if kind == "guest_memfd"
        else f"{base}/shared-memory/{part['shared_memory_id']}/bytes"
    )
    off = int(part["offset"]) + offset
    if data is not None:
        r = retrying(c, "POST", url, statuses, json={"offset": off, "data_hex": data.hex()})
        return data if r.status_code == 200 else None
    r = retrying(c, "GET", url, statuses, params={"offset": off, "length": 8})
    return bytes.fromhex(r.json()["data_hex"]) if r.status_code == 200 else None


def probe_points(
    c: httpx.Client,
    vm: str,
    slots: list[dict[str, Any]],
    caps: dict[str, Any],
    statuses: collections.Counter[int],
    disagree: list[str],
) -> tuple[int, int, int]:
    """Probe the first and last page of every slot and the holes around them; compare with the API.

    The host first writes a pattern into the backing ``guest_backing`` names (and another into
    the other part) so the guest's read says which backing it reached (where the host may touch
    neither, e.g. a private guest_memfd page, only ``ok`` and the state are compared: counted as
    unverified). Holes are GPAs next to a slot, and one beyond the last, that no slot covers:
    the API documents an MMIO exit there. Returns (slots, holes, unverified backings).
    """
    base, page = f"/v1/vms/{vm}", int(caps["page_size"])
    reserved = [
        (int(r["guest_phys_addr"]), int(r["guest_phys_addr"]) + int(r["size"])) for r in caps["reserved_gpa_ranges"]
    ]
    top = int(caps["max_guest_phys_addr"])
    spans = [(int(s["guest_phys_addr"]), int(s["guest_phys_addr"]) + int(s["memory_size"])) for s in slots]
    runs = retrying(c, "GET", f"{base}/memory/attributes", statuses, params={"limit": 10_000}).json()["ranges"]
    states = [(int(a["guest_phys_addr"]), int(a["guest_phys_addr"]) + int(a["size"]), a["state"]) for a in runs]

    def state_at(gpa: int) -> str | None:
        return next((st for lo, hi, st in states if lo <= gpa < hi), None)

    checks: list[tuple[int, str, str | None, bytes | None]] = []  # gpa, what, expected state, expected bytes
    for s, (start, end) in zip(slots, spans, strict=True):
        for gpa in sorted({start, end - page}):
            state, named = state_at(gpa), s["guest_backing"]
            if named == "per_attribute":
                named = "guest_memfd" if state == "private" else "shared_memory" if s["shared"] else "none"
            if named == "none":
                checks.append((gpa, f"slot {s['slot']} (guest_backing none)", state, None))
                continue
            pattern = hashlib.blake2b(f"{vm}/{s['slot']}/{gpa}".encode(), digest_size=8).digest()
            parts = {"guest_memfd": s["private"], "shared_memory": s["shared"]}
            other = "shared_memory" if named == "guest_memfd" else "guest_memfd"
            host_bytes(c, base, parts[other], other, gpa - start, bytes(b ^ 0xFF for b in pattern), statuses)
            seen = host_bytes(c, base, parts[named], named, gpa - start, pattern, statuses) or host_bytes(
                c, base, parts[named], named, gpa - start, None, statuses
            )
            checks.append((gpa, f"slot {s['slot']} ({named})", state, seen if seen is not None else b""))
    holes = {gpa for start, end in spans for gpa in (start - page, end)}
    holes.add(((max((e for _, e in spans), default=4 << 30) + (1 << 30)) >> 30) << 30)
    holes = {
        h
        for h in holes
        if 0 <= h and h + page <= top and not any(lo < h + page and h < hi for lo, hi in spans + reserved)
    }
    checks += [(gpa, "hole", None, None) for gpa in sorted(holes)]
    step = int(caps["max_probe_ops"])
    for i in range(0, len(checks), step):
        chunk = checks[i : i + step]
        r = retrying(
            c,
            "POST",
            f"{base}/probe",
            statuses,
            json={"ops": [{"op": "read", "guest_phys_addr": gpa, "length": 8} for gpa, *_ in chunk]},
        )
        if r.status_code != 200:
            disagree.append(f"{vm}: probe answered {r.status_code} {r.text[:200]}")
            continue
        for (gpa, what, state, want), got in zip(chunk, r.json()["results"], strict=True):
            backed = want is not None
            mmio = (got.get("exit") or {}).get("reason") == "mmio"
            if got["state"] != state or got["ok"] != backed or (not backed and not mmio):
                disagree.append(f"{vm} {gpa:#x} {what}: API state {state}, probe {got}")
            elif want and got.get("data_hex") != want.hex():
                disagree.append(
                    f"{vm} {gpa:#x} {what}: the host has {want.hex()}, the guest read {got.get('data_hex')}"
                )
    return len(slots), len(holes), sum(1 for *_, want in checks if want == b"")


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
    probe_statuses: collections.Counter[int] = collections.Counter()
    probed: collections.Counter[str] = collections.Counter()
    disagree: list[str] = []
    stop, stop_follow = threading.Event(), threading.Event()
    follower = threading.Thread(target=follow, args=(sock, seqs, events, stop_follow), daemon=True)
    follower.start()
    with client(sock) as c:  # each client's share of the VM quota, one left for the others' turnover
        keep = max(1, c.get("/v1/limits").json()["max_vms"] // args.clients - 1)
    workers = [threading.Thread(target=churn, args=(sock, stop, i, statuses, ops, keep)) for i in range(args.clients)]
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
            items = {vm: c.get(f"/v1/vms/{vm}/memslots", params={"limit": 1000}).json()["items"] for vm in vms}
            slots = {vm: sorted(s["slot"] for s in items[vm]) for vm in vms}
            objects = {
                vm: (
                    len(c.get(f"/v1/vms/{vm}/guest-memfds").json()["items"]),
                    len(c.get(f"/v1/vms/{vm}/shared-memory").json()["items"]),
                )
                for vm in vms
            }
            held = fds(proc.pid)
            caps, budget = c.get("/v1/capabilities").json(), c.get("/v1/limits").json()["max_slots_per_vm"]
            for vm in vms:
                if len(items[vm]) >= budget:  # no free slot for the probe's window
                    probed["full"] += 1
                    continue
                n_slots, n_holes, unverified = probe_points(c, vm, items[vm], caps, probe_statuses, disagree)
                probed["slots"] += n_slots
                probed["holes"] += n_holes
                probed["unverified"] += unverified
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
    if any(s >= 500 for s in statuses | probe_statuses):
        failures.append("5xx answers")
    if disagree:
        failures.append(f"{len(disagree)} probes disagree with the API: {disagree[:10]}")
    if seqs != list(range(1, len(seqs) + 1)) or seqs[-1:] != [head]:
        failures.append(f"the stream is not every seq once (got {len(seqs)}, head {head})")
    if {vm: sorted(s) for vm, s in replayed.items()} != slots:
        failures.append("event replay differs from GET state")
    gmems, shms = sum(g for g, _ in objects.values()), sum(s for _, s in objects.values())
    if (held["kvm-vm"], held["gmem"], held["memfd:memslotd-vm"]) != (len(vms), gmems, shms):
        failures.append(f"fds {dict(held)} != API (vms {len(vms)}, guest_memfds {gmems}, shared memory {shms})")
    print(f"probes: {probed['slots']} slots, {probed['holes']} holes, {len(disagree)} disagreements")
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
                "probes": {
                    "slots": probed["slots"],
                    "holes": probed["holes"],
                    "disagreements": len(disagree),
                    "backings_unverified": probed["unverified"],
                    "vms_without_a_free_slot": probed["full"],
                    "statuses": dict(sorted(probe_statuses.items())),
                },
                "failures": failures,
            },
            indent=1,
        )
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
