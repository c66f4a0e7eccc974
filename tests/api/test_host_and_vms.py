"""Host endpoints and VM lifecycle."""

from __future__ import annotations

import os

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
        assert per_type == {"vm_type": name, "memory_attributes": ["private"] if expected.memory_attributes & 8 else [],
                            "memory_attributes_ioctl": expected.attributes_ioctl,
                            "guest_memfd_flags": expected.gmem_flag_names,
                            "conversion_enforcement": "kernel" if expected.private_memory else "daemon"}, name
    assert (caps["user_memory2"], caps["guest_memfd"], caps["memory_fault_info"]) == \
        (facts.user_memory2, facts.guest_memfd, facts.memory_fault_info)
    assert caps["memory_failure"] is facts.memory_failure
    assert caps["page_size"] == os.sysconf("SC_PAGE_SIZE")
    assert caps["reserved_gpa_ranges"][0] == {"guest_phys_addr": 0xFFE00000, "size": 2 * MiB,
                                              "purpose": "guest probe window (code and page tables)"}


def test_health_version_and_boot_id_header(client):
    h = client.get("/v1/healthz")
    assert h.json()["status"] == "ok"
    assert h.headers["memslotd-boot-id"] == h.json()["boot_id"]
    assert client.get("/v1/version").json()["api"] == "v1"


def test_vm_lifecycle(client):
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


def test_unsupported_vm_type_is_501(client):
    r = client.post("/v1/vms", json={"type": "snp"})
    assert r.status_code == 501 and r.json()["code"] == "CAPABILITY_MISSING"


def test_bad_bodies(client):
    assert client.post("/v1/vms", json={"bogus": 1}).json()["code"] == "VALIDATION_FAILED"
    assert client.post("/v1/vms", json={"name": "white space"}).status_code == 422
    r = client.post("/v1/vms", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["code"] == "MALFORMED_JSON"
    r = client.post("/v1/vms", content=b"{}", headers={"content-type": "text/plain"})
    assert r.status_code == 415
    r = client.post("/v1/vms", content=b"{" + b" " * (70 << 10) + b"}", headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["code"] == "BODY_TOO_LARGE"
    assert client.get("/v1/nope").json()["code"] == "ROUTE_NOT_FOUND"


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


def test_vm_quota(client):
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
        assert c.post(f"/v1/vms/{vm}/probe", json=probe, headers={"idempotency-key": "p29"}).headers.get(
            "idempotent-replayed") == "true"
        assert "idempotent-replayed" not in c.post(f"/v1/vms/{vm}/probe", json=probe,
                                                   headers={"idempotency-key": "p0"}).headers
        big = {"ops": [{"op": "read", "guest_phys_addr": (1 << 32) + i * 65536, "length": 65536} for i in range(16)]}
        assert c.post(f"/v1/vms/{vm}/probe", json=big, headers={"idempotency-key": "big"}).status_code == 200
        retry = c.post(f"/v1/vms/{vm}/probe", json=big, headers={"idempotency-key": "big"})
        assert retry.status_code == 409 and retry.json()["code"] == "IDEMPOTENCY_ANSWER_NOT_KEPT"
        assert cache.bytes <= 1 << 20
