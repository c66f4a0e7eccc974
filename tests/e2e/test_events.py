"""The event stream over a real Unix socket: nothing lost, resumable, filtered, isolated."""

from __future__ import annotations

import json
import random
import re
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import unix_connect

from tests.helpers import patience, start_daemon

MiB, GiB = 1 << 20, 1 << 30


@contextmanager
def subscribe(daemon, query: str = "", **kw):
    with unix_connect(
        str(daemon.socket_path), f"ws://memslotd/v1/events{query}", open_timeout=patience(10), **kw
    ) as ws:
        yield ws


def recv(ws, timeout: float = 10) -> dict:
    return json.loads(ws.recv(timeout))


class Mutator(threading.Thread):
    """Creates and deletes slots and converts memory until stopped (a steady event source)."""

    def __init__(self, daemon, vm_id: str | None = None, slots: int = 8):
        super().__init__(daemon=True)
        self.client = daemon.client()
        self.vm = vm_id or self.client.post("/v1/vms", json={}).json()["id"]
        base = f"/v1/vms/{self.vm}"
        self.gmem = self.client.post(f"{base}/guest-memfds", json={"size": slots * 2 * MiB}).json()["id"]
        self.slots = slots
        self.stop_flag = threading.Event()
        self.ops = 0

    def run(self) -> None:
        base = f"/v1/vms/{self.vm}"
        rng = random.Random(7)
        while not self.stop_flag.is_set():
            i = rng.randrange(self.slots)
            body = {
                "guest_phys_addr": GiB * 4 + i * 2 * MiB,
                "memory_size": 2 * MiB,
                "private": {"guest_memfd_id": self.gmem, "offset": i * 2 * MiB},
            }
            if self.client.put(f"{base}/memslots/{i}", json=body).status_code == 200:
                self.client.delete(f"{base}/memslots/{i}")
            else:
                self.client.post(
                    f"{base}/memory/convert",
                    json={
                        "guest_phys_addr": GiB * 4 + i * 2 * MiB,
                        "size": 2 * MiB,
                        "to": rng.choice(["private", "shared"]),
                    },
                )
            self.ops += 1

    def stop(self) -> None:
        self.stop_flag.set()
        self.join(patience(30))
        self.client.close()


def head_seq(daemon) -> int:
    with daemon.client() as c:
        lines = c.get("/v1/events", params={"wait": 0}).text.strip().splitlines()
    return json.loads(lines[-1])["seq"]


def test_a_subscriber_hears_hello_then_each_event_with_the_next_seq_and_the_same_boot_id(daemon):
    with subscribe(daemon, "", subprotocols=["memslotd.v1"]) as ws:
        hello = recv(ws)
        assert hello["type"] == "hello" and ws.subprotocol == "memslotd.v1"
        with daemon.client() as c:
            vm = c.post("/v1/vms", json={}).json()["id"]
        event = recv(ws)
        assert event["type"] == "vm.created" and event["vm_id"] == vm and event["seq"] == hello["seq"] + 1
        assert event["boot_id"] == hello["boot_id"] and set(event) >= {
            "seq",
            "boot_id",
            "time",
            "type",
            "vm_id",
            "data",
        }


def test_exactly_once_resume_at_random_cut_points_under_mutation(daemon):
    mutator = Mutator(daemon)
    mutator.start()
    seen: list[int] = []
    rng = random.Random(42)
    try:
        cursor = 0
        for _ in range(12):
            with subscribe(daemon, f"?since_seq={cursor}") as ws:
                assert recv(ws)["type"] == "hello"
                for _ in range(rng.randrange(1, 60)):
                    e = recv(ws)
                    if e["type"] != "bookmark":
                        seen.append(e["seq"])
                        cursor = e["seq"]
    finally:
        mutator.stop()
    last = head_seq(daemon)
    with subscribe(daemon, f"?since_seq={cursor}") as ws:
        recv(ws)
        while cursor < last:
            e = recv(ws)
            if e["type"] != "bookmark":
                seen.append(e["seq"])
                cursor = e["seq"]
    assert mutator.ops > 20
    assert seen == list(range(1, last + 1)), "every event exactly once, in order"


def test_an_expired_cursor_or_a_foreign_boot_id_is_410_gone_and_a_retained_one_resumes(short_tmp):
    d = start_daemon(short_tmp, "--event-retention-count", "16")
    try:
        with d.client() as c:
            for _ in range(10):
                vm = c.post("/v1/vms", json={}).json()["id"]
                c.delete(f"/v1/vms/{vm}")
            boot = c.get("/v1/healthz").json()["boot_id"]
            r = c.get("/v1/events", params={"since_seq": 1})
            assert (
                r.status_code == 410 and r.json()["code"] == "CURSOR_GONE" and r.json()["extra"]["reason"] == "expired"
            )
        for query in ("?since_seq=1", f"?since_seq=19&boot_id={'0' * 32}"):
            with subscribe(d, query) as ws:
                recv(ws)
                gone = recv(ws)
                assert gone["type"] == "gone"
                with pytest.raises(ConnectionClosed) as closed:
                    ws.recv(5)
                assert closed.value.rcvd.code == 4410
        with subscribe(d, f"?since_seq=19&boot_id={boot}") as ws:  # still retained: fine
            assert recv(ws)["type"] == "hello" and recv(ws)["seq"] == 20
    finally:
        d.stop()


def test_initial_state_is_consistent_under_concurrent_mutation(daemon):
    mutator = Mutator(daemon)
    mutator.start()
    try:
        time.sleep(0.2)
        with subscribe(daemon, f"?initial_state=true&vm_id={mutator.vm}") as ws:
            recv(ws)
            slots: dict[int, dict] = {}
            while True:
                e = recv(ws)
                if e["type"] == "bookmark" and e.get("initial_state_end"):
                    break
                if e["type"] == "memslot.created":
                    assert e["initial"] is True
                    slots[e["data"]["slot"]] = e["data"]
            mutator.stop()
            target = head_seq(daemon)
            cursor = e["seq"]
            while cursor < target:  # apply live events up to the quiescent head
                e = recv(ws)
                if e["type"] == "memslot.created":
                    slots[e["data"]["slot"]] = e["data"]
                elif e["type"] == "memslot.deleted":
                    del slots[e["data"]["slot"]]
                cursor = max(cursor, e["seq"])
    finally:
        mutator.stop_flag.set()
    with daemon.client() as c:
        listed = {s["slot"] for s in c.get(f"/v1/vms/{mutator.vm}/memslots").json()["items"]}
    assert set(slots) == listed


def test_a_subscriber_filtered_by_vm_and_type_hears_only_that_vms_matching_events(daemon):
    with daemon.client() as c:
        a = c.post("/v1/vms", json={}).json()["id"]
        b = c.post("/v1/vms", json={}).json()["id"]
        with subscribe(daemon, f"?since_seq=0&vm_id={b}&types=guest_memfd.*,vm.deleted") as ws:
            recv(ws)
            c.post(f"/v1/vms/{a}/guest-memfds", json={"size": 2 * MiB})
            g = c.post(f"/v1/vms/{b}/guest-memfds", json={"size": 2 * MiB}).json()["id"]
            c.delete(f"/v1/vms/{b}")
            got = [(e["type"], e["vm_id"], e["data"].get("id")) for e in (recv(ws) for _ in range(3))]
            assert got == [("guest_memfd.created", b, g), ("guest_memfd.deleted", b, g), ("vm.deleted", b, None)]


def test_a_type_filter_no_event_type_matches_is_answered_with_an_error_frame(daemon):
    with subscribe(daemon, "?types=nonsense.*") as ws:
        assert recv(ws)["type"] == "error"


def test_bookmarks_let_filtered_clients_advance(short_tmp):
    d = start_daemon(short_tmp, "--event-bookmark-interval-s", "0.2")
    try:
        with subscribe(d, "?types=memory.error") as ws:
            recv(ws)
            with d.client() as c:
                c.post("/v1/vms", json={})
                created = c.get("/v1/events", params={"since_seq": 0, "wait": 0}).text.splitlines()
            seq = max(json.loads(line)["seq"] for line in created if json.loads(line).get("type") == "vm.created")
            # Event-driven, not timed: a bookmark sent before the create still carries the old
            # seq, so read bookmarks until one has passed the filtered-out event.
            for _ in range(50):
                frame = recv(ws, timeout=patience(30))
                assert frame["type"] == "bookmark", frame  # nothing else matches the filter
                if frame["seq"] >= seq:
                    break
            else:
                raise AssertionError("no bookmark advanced past the filtered-out vm.created")
    finally:
        d.stop()


def _stalled_subscriber(path) -> socket.socket:
    """A raw WebSocket client that completes the handshake and then never reads."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(str(path))
    s.sendall(
        b"GET /v1/events HTTP/1.1\r\nHost: memslotd\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    return s


def test_a_subscriber_that_answers_no_ping_within_ws_ping_timeout_is_closed_with_1011(short_tmp):
    d = start_daemon(short_tmp, "--ws-ping-interval-s", str(patience(0.2)), "--ws-ping-timeout-s", str(patience(0.3)))
    silent = _stalled_subscriber(d.socket_path)  # reads nothing, so it never pongs
    try:
        silent.settimeout(patience(10))
        data = b""
        while chunk := silent.recv(1 << 16):  # EOF: the daemon hung up
            data += chunk
        assert re.search(rb"\x88[\x02-\x7d]\x03\xf3", data), data[-64:]  # a close frame, code 1011
    finally:
        silent.close()
        d.stop()


def test_a_stalled_subscriber_is_cut_off_and_never_delays_others(short_tmp):
    d = start_daemon(short_tmp, "--event-retention-count", "256")
    stalled = _stalled_subscriber(d.socket_path)
    try:
        with subscribe(d) as ws, d.client() as c:
            recv(ws)
            vm = c.post("/v1/vms", json={}).json()["id"]
            g = c.post(f"/v1/vms/{vm}/guest-memfds", json={"size": 2 * MiB}).json()["id"]
            received = 1
            for _ in range(1500):  # 3000 invalidate events: far beyond socket buffers + queue
                c.post(f"/v1/vms/{vm}/guest-memfds/{g}/punch-hole", json={"offset": 0, "length": 4096})
                while True:  # the healthy subscriber keeps up
                    try:
                        recv(ws, 0.0001)
                        received += 1
                    except TimeoutError:
                        break
            while received < 3002:
                recv(ws)
                received += 1
        stalled.settimeout(10)
        data = b""
        while chunk := stalled.recv(1 << 16):  # reaching EOF: the daemon closed the stalled one
            data += chunk
        # it got a prefix of the stream and was cut off; resuming from its last seq is exact
        assert b'"type":"hello"' in data and b'"seq":3002,' not in data
        assert "Traceback" not in d.log()
    finally:
        stalled.close()
        d.stop()


def test_ndjson_long_poll_resumes_and_waits(daemon):
    with daemon.client() as c:
        vm = c.post("/v1/vms", json={}).json()["id"]
        lines = [json.loads(x) for x in c.get("/v1/events", params={"since_seq": 0, "wait": 0}).text.splitlines()]
        assert [e["type"] for e in lines] == ["vm.created", "bookmark"] and lines[-1]["seq"] == 1
        result: dict = {}

        def poll() -> None:
            with daemon.client() as c2:
                result["lines"] = c2.get("/v1/events", params={"since_seq": 1, "wait": 10}).text.splitlines()

        t = threading.Thread(target=poll)
        t.start()
        time.sleep(0.3)
        c.delete(f"/v1/vms/{vm}")
        t.join(patience(15))
        assert [json.loads(x)["type"] for x in result["lines"]] == ["vm.deleted", "bookmark"]
        page = c.get("/v1/events", params={"since_seq": 0, "wait": 0, "limit": 1}).text.splitlines()
        assert json.loads(page[-1])["seq"] == 1  # truncated: the bookmark is the last delivered event


def test_a_long_poll_woken_by_more_events_than_its_limit_loses_none(daemon):
    """A batch appends many events at once; a waiting long-poll returns the first `limit` of them
    and a bookmark at the last one returned, so the next poll gets the rest."""
    with daemon.client() as c:
        vm = c.post("/v1/vms", json={}).json()["id"]
        shm = c.post(f"/v1/vms/{vm}/shared-memory", json={"size": 8 << 20}).json()["id"]
        since = json.loads(c.get("/v1/events", params={"wait": 0}).text.splitlines()[-1])["seq"]
        result: dict = {}

        def poll() -> None:
            with daemon.client() as c2:
                result["lines"] = c2.get(
                    "/v1/events", params={"since_seq": since, "wait": 10, "limit": 2}
                ).text.splitlines()

        t = threading.Thread(target=poll)
        t.start()
        time.sleep(0.3)
        ops = [
            {
                "op": "create",
                "slot": i,
                "guest_phys_addr": (1 << 32) + i * (2 << 20),
                "memory_size": 2 << 20,
                "shared": {"shared_memory_id": shm, "offset": i * (2 << 20)},
            }
            for i in range(4)
        ]
        assert c.post(f"/v1/vms/{vm}/memslots:batch", json={"ops": ops}).status_code == 200
        t.join(patience(15))
        first = [json.loads(x) for x in result["lines"]]
        assert [(e["type"], e.get("data", {}).get("slot")) for e in first[:-1]] == [
            ("memslot.created", 0),
            ("memslot.created", 1),
        ]
        assert first[-1]["type"] == "bookmark" and first[-1]["seq"] == first[-2]["seq"]
        rest = [
            json.loads(x)
            for x in c.get("/v1/events", params={"since_seq": first[-1]["seq"], "wait": 0}).text.splitlines()
        ]
        assert [e["data"]["slot"] for e in rest[:-1]] == [2, 3]


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _fill_slots(c, vm: str, count: int, *, gmem: bool = False) -> None:
    """``count`` one-page slots in batches of 4096 creates: over one shared memory, or over
    one guest_memfd with a page between backings (each delete then has its own invalidate pair)."""
    page = 4096
    kind, part, id_key = (
        ("guest-memfds", "private", "guest_memfd_id") if gmem else ("shared-memory", "shared", "shared_memory_id")
    )
    stride = 2 * page if gmem else page
    obj = c.post(f"/v1/vms/{vm}/{kind}", json={"size": count * stride}).json()["id"]
    for first in range(0, count, 4096):
        ops = [
            {
                "op": "create",
                "slot": i,
                "guest_phys_addr": (1 << 33) + i * page,
                "memory_size": page,
                part: {id_key: obj, "offset": i * stride},
            }
            for i in range(first, min(first + 4096, count))
        ]
        r = c.post(f"/v1/vms/{vm}/memslots:batch", json={"ops": ops})
        assert r.status_code == 200, r.text


def test_no_legal_request_disconnects_an_up_to_date_subscriber(short_tmp):
    """A 4096-op delete batch (12,288 events in one append) and a VM delete with 32,764 slots:
    10 caught-up subscribers each receive every event, and the daemon's memory holds the one
    shared window, not a copy per subscriber."""
    import asyncio
    import re

    from websockets.asyncio.client import unix_connect as async_unix_connect

    # A subscriber reads frames in order, so its pong waits behind the backlog: under TCG, ten
    # test clients parsing 45,000 frames each answer after the daemon's 20 s ping timeout.
    d = start_daemon(short_tmp, "--ws-ping-timeout-s", str(patience(20)))
    try:
        with d.client() as c:
            small, big = (c.post("/v1/vms", json={}).json()["id"] for _ in range(2))
            _fill_slots(c, small, 4096, gmem=True)
            _fill_slots(c, big, 32764)
            start_seq = c.get("/v1/events", params={"wait": 0}).text.splitlines()[-1]
            start_seq = json.loads(start_seq)["seq"]
            seqs: list[list[int]] = [[] for _ in range(10)]
            connected = threading.Event()
            end_seq: list[int] = []

            async def follow() -> None:
                pattern = re.compile(r'^\{"seq":(\d+),')
                # No keepalive pings from this side: under TCG the test's own loop, parsing
                # 450,000 frames, answers pongs too late and the client would hang up itself (1011).
                # Whether the daemon disconnects is the question; the frame timeout bounds the wait.
                conns = [
                    await async_unix_connect(
                        str(d.socket_path), "ws://memslotd/v1/events", max_queue=None, ping_interval=None
                    )
                    for _ in seqs
                ]
                for ws in conns:
                    assert json.loads(await ws.recv())["type"] == "hello"
                connected.set()

                async def one(ws, out: list[int]) -> None:
                    while not end_seq or not out or out[-1] < end_seq[0]:
                        frame = await asyncio.wait_for(ws.recv(), patience(60))
                        m = pattern.match(frame)
                        if m:
                            out.append(int(m.group(1)))
                        else:
                            assert json.loads(frame)["type"] == "bookmark", frame
                    await ws.close()

                await asyncio.gather(*(one(ws, out) for ws, out in zip(conns, seqs, strict=True)))

            thread = threading.Thread(target=lambda: asyncio.run(follow()), daemon=True)
            thread.start()
            assert connected.wait(patience(30))
            rss_before = _rss_kib(d.proc.pid)
            r = c.post(
                f"/v1/vms/{small}/memslots:batch", json={"ops": [{"op": "delete", "slot": i} for i in range(4096)]}
            )
            assert r.status_code == 200, r.text
            assert c.delete(f"/v1/vms/{big}").status_code == 204
            end_seq.append(json.loads(c.get("/v1/events", params={"wait": 0}).text.splitlines()[-1])["seq"])
            thread.join(patience(300))
            assert not thread.is_alive()
            rss_growth_mib = (_rss_kib(d.proc.pid) - rss_before) / 1024
            assert end_seq[0] - start_seq > 12_288 + 32_764
            for out in seqs:
                assert out == list(range(start_seq + 1, end_seq[0] + 1)), "every event, once, in order"
            # the ~45,000 new events are retained once (~0.5 KiB each), whatever the subscriber count
            assert rss_growth_mib < 64, rss_growth_mib
        assert "subscriber_overflow" not in d.log()
    finally:
        d.stop()
