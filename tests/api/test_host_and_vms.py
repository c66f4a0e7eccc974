"""Host endpoints and VM lifecycle."""

from __future__ import annotations

import os

import pytest

from tests.helpers import fd_count, guest_memory_mappings
from tests.kernel_facts import kernel_facts

from .conftest import MiB


def test_capabilities_agree_with_an_independent_probe_per_vm_type(client):
    caps = client.get("/v1/capabilities").json()
    facts = kernel_facts()
    assert caps["max_memslots"] == facts.max_memslots
    assert caps["vm_types"] == list(facts.vm_types) == [t["vm_type"] for t in caps["per_vm_type"]]
    assert caps["guest_memfd_flags"] == facts.default.gmem_flag_names
    assert caps["memory_attributes"] == (["private"] if facts.default.memory_attributes & 8 else [])
    assert caps["memory_attributes_ioctl"] is facts.default.attributes_ioctl
    assert caps["conversion_enforcement"] == ("kernel" if facts.default.private_memory else "daemon")
    for per_type in caps["per_vm_type"]:
        name = per_type["vm_type"]
        expected = facts.per_vm_type[name]
        assert per_type == {
            "vm_type": name,
            "memory_attributes": ["private"] if expected.memory_attributes & 8 else [],
            "memory_attributes_ioctl": expected.attributes_ioctl,
            "guest_memfd_flags": expected.gmem_flag_names,
            "conversion_enforcement": "kernel" if expected.private_memory else "daemon",
        }, name
    assert (caps["user_memory2"], caps["guest_memfd"], caps["memory_fault_info"]) == (
        facts.user_memory2,
        facts.guest_memfd,
        facts.memory_fault_info,
    )
    assert caps["memory_failure"] is facts.memory_failure
    assert caps["page_size"] == os.sysconf("SC_PAGE_SIZE")
    assert caps["reserved_gpa_ranges"][0] == {
        "guest_phys_addr": 0xFFE00000,
        "size": 2 * MiB,
        "purpose": "guest probe window (code and page tables)",
    }


def test_healthz_is_ok_with_the_boot_id_of_its_header_and_the_api_version_is_v1(client):
    h = client.get("/v1/healthz")
    assert h.json()["status"] == "ok"
    assert h.headers["memslotd-boot-id"] == h.json()["boot_id"]
    assert client.get("/v1/version").json()["api"] == "v1"


def test_a_created_vm_is_201_at_its_location_with_every_slot_free_and_404_VM_NOT_FOUND_once_deleted(client):
    r = client.post("/v1/vms", json={"name": "guest-1"})
    assert r.status_code == 201
    vm = r.json()
    assert r.headers["location"] == f"/v1/vms/{vm['id']}"
    slots = kernel_facts().max_memslots
    assert vm["memslots"] == {"used": 0, "free": slots, "max": slots}
    assert vm["type"] == "default" and vm["name"] == "guest-1"
    assert [v["id"] for v in client.get("/v1/vms").json()["items"]] == [vm["id"]]
    assert client.get(f"/v1/vms/{vm['id']}").json()["id"] == vm["id"]
    assert client.delete(f"/v1/vms/{vm['id']}").status_code == 204
    missing = client.get(f"/v1/vms/{vm['id']}")
    assert missing.status_code == 404 and missing.json()["code"] == "VM_NOT_FOUND"
    assert missing.headers["content-type"] == "application/problem+json"


def test_a_vm_type_the_host_cannot_create_is_501_CAPABILITY_MISSING(client):
    r = client.post("/v1/vms", json={"type": "snp"})
    assert r.status_code == 501 and r.json()["code"] == "CAPABILITY_MISSING"


JSON = {"content-type": "application/json"}


@pytest.mark.parametrize(
    "method, path, request_kw, status, code",
    [
        ("POST", "/v1/vms", {"json": {"bogus": 1}}, 422, "VALIDATION_FAILED"),
        ("POST", "/v1/vms", {"json": {"name": "white space"}}, 422, None),
        ("POST", "/v1/vms", {"content": b"{not json", "headers": JSON}, 400, "MALFORMED_JSON"),
        ("POST", "/v1/vms", {"content": b"{}", "headers": {"content-type": "text/plain"}}, 415, None),
        ("POST", "/v1/vms", {"content": b"{" + b" " * (70 << 10) + b"}", "headers": JSON}, 413, "BODY_TOO_LARGE"),
        ("GET", "/v1/nope", {}, 404, "ROUTE_NOT_FOUND"),
    ],
    ids=[
        "an_unknown_field_is_422_VALIDATION_FAILED",
        "a_name_with_white_space_is_422",
        "malformed_json_is_400_MALFORMED_JSON",
        "a_body_that_is_not_json_is_415",
        "a_body_over_64_KiB_is_413_BODY_TOO_LARGE",
        "an_unknown_route_is_404_ROUTE_NOT_FOUND",
    ],
)
def test_a_request_the_api_cannot_take_is_refused_with_its_status_and_code(
    client, method, path, request_kw, status, code
):
    r = client.request(method, path, **request_kw)
    assert r.status_code == status and (code is None or r.json()["code"] == code), r.text


def test_deleting_a_vm_releases_every_fd_and_mapping(client, vm):
    base = fd_count()
    maps_before = guest_memory_mappings()
    gmem = vm.gmem(4 * MiB)
    shm = vm.shm(4 * MiB)
    assert vm.put_slot(0, 1 << 32, 4 * MiB, gmem=gmem).status_code == 201
    assert vm.put_slot(1, 1 << 33, 4 * MiB, shm=shm).status_code == 201
    assert fd_count() == base + 2
    assert guest_memory_mappings() == maps_before + 2  # the shared memfd and the gmem's userspace_addr mapping
    assert client.delete(vm.base).status_code == 204
    assert fd_count() == base - 1  # the VM fd itself is gone too
    assert guest_memory_mappings() == maps_before


def test_a_vm_past_max_vms_is_429_VM_QUOTA():
    from .conftest import make_client

    with make_client(max_vms=1) as c:
        assert c.post("/v1/vms", json={}).status_code == 201
        r = c.post("/v1/vms", json={})
        assert r.status_code == 429 and r.json()["code"] == "VM_QUOTA"


def test_idempotency_key_replays_a_retried_create(client):
    key = {"idempotency-key": "create-vm-7"}
    first = client.post("/v1/vms", json={"name": "once"}, headers=key)
    retry = client.post("/v1/vms", json={"name": "once"}, headers=key)
    assert first.status_code == retry.status_code == 201 and retry.json()["id"] == first.json()["id"]
    assert retry.headers["idempotent-replayed"] == "true" and "idempotent-replayed" not in first.headers
    assert [v["name"] for v in client.get("/v1/vms").json()["items"]] == ["once"]
    reused = client.post("/v1/vms", json={"name": "other"}, headers=key)
    assert reused.status_code == 422 and reused.json()["code"] == "IDEMPOTENCY_KEY_REUSED"
    assert client.post("/v1/vms", json={"name": "twice"}).status_code == 201  # no key: a new VM every time


def test_the_idempotency_cache_is_bounded_in_bytes():
    """Probe answers of 128 KiB each under a 1 MiB cache: the cache stays within its bytes, the
    newest answers replay, the oldest were dropped; an answer larger than the cache ran once and
    its retry is refused instead of run again."""
    from .conftest import make_client

    with make_client(idempotency_cache_bytes=1 << 20, max_probes_per_second=1000) as c:
        vm = c.post("/v1/vms", json={}).json()["id"]
        shm = c.post(f"/v1/vms/{vm}/shared-memory", json={"size": 1 << 20}).json()["id"]
        body = {"guest_phys_addr": 1 << 32, "memory_size": 1 << 20, "shared": {"shared_memory_id": shm, "offset": 0}}
        assert c.put(f"/v1/vms/{vm}/memslots/0", json=body).status_code == 201
        probe = {"ops": [{"op": "read", "guest_phys_addr": 1 << 32, "length": 65536}]}
        for i in range(30):
            assert c.post(f"/v1/vms/{vm}/probe", json=probe, headers={"idempotency-key": f"p{i}"}).status_code == 200
        cache = c.app.state.idempotency
        assert 0 < cache.bytes <= 1 << 20
        assert (
            c.post(f"/v1/vms/{vm}/probe", json=probe, headers={"idempotency-key": "p29"}).headers.get(
                "idempotent-replayed"
            )
            == "true"
        )
        assert (
            "idempotent-replayed"
            not in c.post(f"/v1/vms/{vm}/probe", json=probe, headers={"idempotency-key": "p0"}).headers
        )
        big = {"ops": [{"op": "read", "guest_phys_addr": (1 << 32) + i * 65536, "length": 65536} for i in range(16)]}
        assert c.post(f"/v1/vms/{vm}/probe", json=big, headers={"idempotency-key": "big"}).status_code == 200
        retry = c.post(f"/v1/vms/{vm}/probe", json=big, headers={"idempotency-key": "big"})
        assert retry.status_code == 409 and retry.json()["code"] == "IDEMPOTENCY_ANSWER_NOT_KEPT"
        assert cache.bytes <= 1 << 20
