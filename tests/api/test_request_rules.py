"""What the API refuses before any rule of the domain: unknown query parameters, malformed
ids (404, not 422), bodies the JSON parser would have got wrong, and duplicate names."""

from __future__ import annotations

import pytest

from .conftest import MiB

JSON = {"content-type": "application/json"}


def test_an_unknown_query_parameter_is_422_UNKNOWN_QUERY_PARAMETER_naming_it(client, vm):
    r = client.get(f"{vm.base}/memslots", params={"limt": "1"})
    assert r.status_code == 422 and r.json()["code"] == "UNKNOWN_QUERY_PARAMETER"
    assert "'limt'" in r.json()["detail"] and r.json()["extra"]["parameter"] == "limt"
    assert client.get("/v1/vms", params={"x": "1"}).json()["code"] == "UNKNOWN_QUERY_PARAMETER"


def test_a_repeated_query_parameter_is_422_DUPLICATE_QUERY_PARAMETER(client, vm):
    twice = client.get(f"{vm.base}/memslots?limit=1&limit=2")
    assert twice.status_code == 422 and twice.json()["code"] == "DUPLICATE_QUERY_PARAMETER"
    assert client.get(f"{vm.base}/memslots", params={"limit": "1"}).status_code == 200


@pytest.mark.parametrize(
    "path, code",
    [
        ("/v1/vms/does-not-exist", "VM_NOT_FOUND"),
        ("/v1/vms/vm-zzz", "VM_NOT_FOUND"),
        ("/v1/vms/" + "v" * 300, "VM_NOT_FOUND"),
    ],
)
def test_a_malformed_vm_id_is_a_vm_that_does_not_exist(client, path, code):
    for method in ("GET", "DELETE"):
        r = client.request(method, path)
        assert r.status_code == 404 and r.json()["code"] == code, (method, r.text)


def test_a_malformed_object_or_slot_id_is_404_NOT_FOUND_of_its_kind_after_the_vm(client, vm):
    for path, code in (
        (f"{vm.base}/guest-memfds/not-an-id", "GUEST_MEMFD_NOT_FOUND"),
        (f"{vm.base}/shared-memory/SHM", "SHARED_MEMORY_NOT_FOUND"),
        (f"{vm.base}/memslots/abc", "SLOT_NOT_FOUND"),
        (f"{vm.base}/memslots/99999999", "SLOT_NOT_FOUND"),
        (f"{vm.base}/memslots/-1", "SLOT_NOT_FOUND"),
    ):
        for method in ("GET", "DELETE"):
            r = client.request(method, path)
            assert r.status_code == 404 and r.json()["code"] == code, (method, path, r.text)
    assert client.post("/v1/vms/nope/memslots/abc/dirty-log").json()["code"] == "VM_NOT_FOUND"  # the VM first


def test_a_vm_name_in_use_is_409_NAME_TAKEN_naming_its_vm_until_that_vm_is_deleted(client):
    first = client.post("/v1/vms", json={"name": "demo"})
    assert first.status_code == 201
    second = client.post("/v1/vms", json={"name": "demo"})
    assert second.status_code == 409 and second.json()["code"] == "NAME_TAKEN"
    assert second.json()["extra"]["id"] == first.json()["id"]
    dry = client.post("/v1/vms", json={"name": "demo"}, params={"dry_run": "true"})
    assert dry.status_code == 409 and dry.json()["code"] == "NAME_TAKEN"
    assert client.post("/v1/vms", json={}).status_code == client.post("/v1/vms", json={}).status_code == 201  # unnamed
    client.delete(f"/v1/vms/{first.json()['id']}")
    assert client.post("/v1/vms", json={"name": "demo"}).status_code == 201  # free again once deleted


def test_duplicate_json_keys_are_refused_naming_the_key(client, vm):
    body = b'{"size": 4096, "size": 8192}'
    r = client.post(f"{vm.base}/guest-memfds", content=body, headers=JSON)
    assert r.status_code == 400 and r.json()["code"] == "MALFORMED_JSON" and "'size'" in r.json()["detail"]
    batch = b'{"ops":[{"op":"delete","slot":1,"slot":2}]}'
    r = client.post(f"{vm.base}/memslots:batch", content=batch, headers=JSON)
    assert r.status_code == 400 and r.json()["code"] == "MALFORMED_JSON" and "'slot'" in r.json()["detail"]


@pytest.mark.parametrize(
    "body, headers, status, code",
    [
        (b'{"size": 4096' + b"}" * 0 + b',"name":"\xff"}', JSON, 400, "INVALID_UTF8"),
        (b"[" * 100_00 + b"]" * 100_00, JSON, 400, "JSON_TOO_DEEP"),
        (b'{"size": 4096, "flags": ' + b"[" * 70 + b"]" * 70 + b"}", JSON, 400, "JSON_TOO_DEEP"),
        (b'{"size": ' + b"9" * 5000 + b"}", JSON, 422, "NUMBER_TOO_LARGE"),
        (b'{"size": 4096}', {"content-type": "application/json; charset=latin-1"}, 415, "UNSUPPORTED_CHARSET"),
        (b'{"size": NaN}', JSON, 400, "MALFORMED_JSON"),
        (b'{"size": 4096,}', JSON, 400, "MALFORMED_JSON"),
    ],
)
def test_a_body_the_json_parser_refuses_has_its_own_code_on_every_route(client, vm, body, headers, status, code):
    for path in (f"{vm.base}/guest-memfds", f"{vm.base}/memslots:batch"):
        r = client.post(path, content=body, headers=headers)
        assert r.status_code == status and r.json()["code"] == code, (path, r.text[:300])
        assert r.headers["content-type"] == "application/problem+json"


def test_an_integral_number_is_an_integer_as_json_schema_says(client, vm):
    r = client.post(f"{vm.base}/guest-memfds", content=b'{"size": 8192.0}', headers=JSON)
    assert r.status_code == 201 and r.json()["size"] == 8192
    assert client.post(f"{vm.base}/guest-memfds", content=b'{"size": 8.192e3}', headers=JSON).status_code == 201
    for bad in (b'{"size": 8192.5}', b'{"size": "8192"}', b'{"size": true}', b'{"size": 1e400}'):
        r = client.post(f"{vm.base}/guest-memfds", content=bad, headers=JSON)
        assert r.status_code == 422 and r.json()["code"] == "VALIDATION_FAILED", bad
    ops = (
        b'{"ops":[{"op":"create","slot":0,"guest_phys_addr":0.0,"memory_size":4194304.0,'
        b'"shared":{"shared_memory_id":"%s"}}]}'
    )
    r = client.post(f"{vm.base}/memslots:batch", content=ops % vm.shm(4 * MiB).encode(), headers=JSON)
    assert r.status_code == 200, r.text


def test_a_chunked_body_over_the_limit_is_413_BODY_TOO_LARGE(client, vm):
    def chunks():
        for _ in range(80):
            yield b" " * 1024

    r = client.post(f"{vm.base}/guest-memfds", content=chunks(), headers=JSON)
    assert r.status_code == 413 and r.json()["code"] == "BODY_TOO_LARGE"
