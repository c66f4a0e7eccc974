"""HTTP as RFC 9110 says and errors in the API's language, on the real daemon (uvicorn's parser
included): 405 with Allow, HEAD, OPTIONS, a 414 in problem+json, one-sentence errors for bad
WebSocket queries and bad configuration, and every event the daemon emits matching its schema."""

from __future__ import annotations

import json
import socket

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import unix_connect

from memslotd.api.event_schemas import EVENT, EVENT_DATA, STREAM_FRAMES
from tests.helpers import run_daemon

MiB, GiB = 1 << 20, 1 << 30


def test_405_names_every_allowed_method(daemon):
    with daemon.client() as c:
        vm = c.post("/v1/vms", json={}).json()["id"]
        r = c.request("PATCH", f"/v1/vms/{vm}")
        assert r.status_code == 405 and r.headers["content-type"] == "application/problem+json"
        assert r.json()["code"] == "METHOD_NOT_ALLOWED"
        assert [m.strip() for m in r.headers["allow"].split(",")] == ["DELETE", "GET", "HEAD", "OPTIONS"]
        assert c.put("/v1/vms").headers["allow"] == "GET, HEAD, OPTIONS, POST"


def test_head_works_on_every_get_resource_and_options_answers_allow(daemon):
    with daemon.client() as c:
        vm = c.post("/v1/vms", json={}).json()["id"]
        gmem = c.post(f"/v1/vms/{vm}/guest-memfds", json={"size": 4 * MiB}).json()["id"]
        c.put(
            f"/v1/vms/{vm}/memslots/0",
            json={"guest_phys_addr": GiB, "memory_size": 4 * MiB, "private": {"guest_memfd_id": gmem}},
        )
        spec = c.get("/v1/openapi.json").json()
        ids = {"vm_id": vm, "gmem_id": gmem, "slot": "0"}
        for path, item in spec["paths"].items():
            if "get" not in item or path == "/v1/events":
                continue
            if any(p.get("in") == "query" and p.get("required") for p in item["get"].get("parameters", [])):
                continue  # e.g. the host view's offset/length: no GET without them
            url = path.format(**ids) if "{shm_id}" not in path else None
            if url is None:
                continue
            get, head = c.get(url), c.head(url)
            assert head.status_code == get.status_code == 200, (path, head.status_code)
            assert head.content == b"" and head.headers["content-type"] == get.headers["content-type"], path
            options = c.options(url)
            assert options.status_code == 204 and "GET" in options.headers["allow"], path
        assert c.head("/v1/events", params={"wait": 0}).status_code == 200


def test_a_100_kb_url_is_414_problem_json(daemon):
    with socket.socket(socket.AF_UNIX) as sock:  # httpx itself refuses such a URL
        sock.connect(str(daemon.socket_path))
        sock.sendall(b"GET /v1/vms?x=" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: memslotd\r\n\r\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 414 ") and b"content-type: application/problem+json" in head.lower()
    assert json.loads(body)["code"] == "URI_TOO_LONG"
    with daemon.client() as c:
        assert c.get("/v1/healthz").status_code == 200  # the daemon is fine


@pytest.mark.parametrize(
    "query, names",
    [
        ("?since_seq=-1", "since_seq"),
        ("?since_seq=abc", "since_seq"),
        ("?vm_id=x", "vm_id"),
        ("?types=nothing.*", "types"),
        ("?limt=1", "limt"),
    ],
)
def test_websocket_error_frames_name_the_parameter_in_one_sentence(daemon, query, names):
    with unix_connect(str(daemon.socket_path), f"ws://memslotd/v1/events{query}") as ws:
        frame = json.loads(ws.recv(5))
        with pytest.raises(ConnectionClosed):
            ws.recv(5)
        assert ws.close_code == 4400
    assert frame["type"] == "error" and frame["code"] == "VALIDATION_FAILED"
    detail = frame["detail"]
    assert names in detail and "\n" not in detail and "pydantic" not in detail and "validation error" not in detail


def _daemon_refusal(tmp, *args: str) -> str:
    r = run_daemon("--socket", str(tmp / "s.sock"), *args)
    assert r.returncode != 0
    return r.stderr.strip()


def test_configuration_errors_are_one_sentence_naming_the_option_or_the_file_and_line(short_tmp):
    message = _daemon_refusal(short_tmp, "--tcp", "127.0.0.1:18444")
    assert message == (
        "memslotd: invalid configuration: --tcp needs --token-file: TCP is never served without authentication"
    )
    assert "--max-vms" in _daemon_refusal(short_tmp, "--max-vms", "99999")
    config = short_tmp / "memslotd.toml"
    config.write_text("max_vms = 3\nlog_level = \n")
    message = _daemon_refusal(short_tmp, "--config", str(config))
    assert str(config) in message and "line 2" in message and len(message.splitlines()) == 1
    tokens = short_tmp / "tokens.toml"
    tokens.write_text('[[tokens]]\nname = "unterminated\n')
    tokens.chmod(0o600)
    message = _daemon_refusal(short_tmp, "--tcp", "127.0.0.1:18444", "--token-file", str(tokens))
    assert str(tokens) in message and "line 2" in message and len(message.splitlines()) == 1


def test_every_event_the_daemon_emits_matches_its_documented_schema(daemon):
    with daemon.client() as c:
        vm = c.post("/v1/vms", json={"name": "events"}).json()["id"]
        base = f"/v1/vms/{vm}"
        g = c.post(f"{base}/guest-memfds", json={"size": 8 * MiB, "flags": ["mmap", "init_shared"]}).json()["id"]
        s = c.post(f"{base}/shared-memory", json={"size": 4 * MiB}).json()["id"]
        c.post(f"{base}/guest-memfds/{g}/allocate", json={"offset": 0, "length": 4096})
        c.put(
            f"{base}/memslots/0",
            json={"guest_phys_addr": GiB, "memory_size": 4 * MiB, "private": {"guest_memfd_id": g}},
        )
        c.put(
            f"{base}/memslots/1",
            json={"guest_phys_addr": 2 * GiB, "memory_size": 4 * MiB, "shared": {"shared_memory_id": s}},
        )
        c.put(
            f"{base}/memslots/1",
            json={"guest_phys_addr": 3 * GiB, "memory_size": 4 * MiB, "shared": {"shared_memory_id": s}},
        )
        c.post(f"{base}/memory/convert", json={"guest_phys_addr": GiB, "size": 2 * MiB, "to": "private"})
        c.post(f"{base}/guest-memfds/{g}/punch-hole", json={"offset": 4 * MiB, "length": 4096})
        c.post(
            f"{base}/memslots:batch",
            json={
                "ops": [
                    {"op": "delete", "slot": 1},
                    {
                        "op": "create",
                        "slot": 2,
                        "guest_phys_addr": 4 * GiB,
                        "memory_size": 4 * MiB,
                        "private": {"guest_memfd_id": g, "offset": 4 * MiB},
                    },
                ]
            },
        )
        c.delete(f"{base}/memslots/0")
        lines = c.get("/v1/events", params={"since_seq": 0, "wait": 0}).text.splitlines()
        with unix_connect(str(daemon.socket_path), f"ws://memslotd/v1/events?initial_state=true&vm_id={vm}") as ws:
            frames = [json.loads(ws.recv(5))]
            while not frames[-1].get("initial_state_end"):
                frames.append(json.loads(ws.recv(5)))
        c.delete(base)
        lines += c.get("/v1/events", params={"since_seq": 0, "wait": 0}).text.splitlines()
    seen = set()
    by_type = {m.model_fields["type"].annotation.__args__[0]: m for m in STREAM_FRAMES}
    for raw in [*(json.loads(line) for line in lines), *frames]:
        if raw["type"] in by_type:
            by_type[raw["type"]].model_validate(raw)
            continue
        EVENT.validate_python(raw)
        documented = set(EVENT_DATA[raw["type"]].model_fields) | {"from"}
        assert set(raw["data"]) <= documented, (raw["type"], set(raw["data"]) - documented)
        seen.add(raw["type"])
    assert len(seen) >= 13, seen
