"""guest_memfd and shared-memory endpoints."""

from __future__ import annotations

from tests.helpers import fd_count

from .conftest import MiB


def test_guest_memfd_crud(client, vm):
    r = client.post(f"{vm.base}/guest-memfds", json={"size": 8 * MiB, "flags": ["mmap", "init_shared"]})
    assert r.status_code == 201
    g = r.json()
    assert g["size"] == 8 * MiB and g["flags"] == ["mmap", "init_shared"] and g["bindings"] == []
    assert client.get(f"{vm.base}/guest-memfds").json()["items"][0]["id"] == g["id"]
    assert client.get(f"{vm.base}/guest-memfds/{g['id']}").json() == g
    assert client.post(f"{vm.base}/guest-memfds/{g['id']}/allocate", json={"offset": 0, "length": 2 * MiB}).status_code == 204
    punch = client.post(f"{vm.base}/guest-memfds/{g['id']}/punch-hole", json={"offset": 0, "length": 2 * MiB})
    assert punch.status_code == 200 and punch.json()["gpa_ranges"] == []
    assert client.delete(f"{vm.base}/guest-memfds/{g['id']}").status_code == 204
    assert client.get(f"{vm.base}/guest-memfds/{g['id']}").json()["code"] == "GUEST_MEMFD_NOT_FOUND"


def test_guest_memfd_rules(client, vm):
    def create(body):
        return client.post(f"{vm.base}/guest-memfds", json=body)

    assert create({"size": 4097}).json()["code"] == "RANGE_NOT_ALIGNED"
    assert create({"size": 0}).status_code == 422
    assert create({"size": "4096"}).status_code == 422  # strict: no coercion
    assert create({"size": 4096, "flags": ["huge"]}).status_code == 422
    assert create({"size": 4096, "flags": ["init_shared"]}).json()["code"] == "FLAGS_INCOMPATIBLE"
    g = vm.gmem(4 * MiB)
    for path in ("allocate", "punch-hole"):
        r = client.post(f"{vm.base}/guest-memfds/{g}/{path}", json={"offset": 4 * MiB, "length": 4096})
        assert r.status_code == 422 and r.json()["code"] == "RANGE_OUTSIDE_BACKING"
        r = client.post(f"{vm.base}/guest-memfds/{g}/{path}", json={"offset": 1, "length": 4096})
        assert r.json()["code"] == "RANGE_NOT_ALIGNED"


def test_punch_hole_reports_bound_gpa_ranges(client, vm):
    g = vm.gmem(8 * MiB)
    assert vm.put_slot(3, 1 << 32, 4 * MiB, gmem=g, gmem_offset=4 * MiB).status_code == 201
    r = client.post(f"{vm.base}/guest-memfds/{g}/punch-hole", json={"offset": 5 * MiB, "length": 2 * MiB})
    assert r.json()["gpa_ranges"] == [{"slot": 3, "guest_phys_addr": (1 << 32) + MiB, "size": 2 * MiB}]


def test_bound_guest_memfd_cannot_be_deleted(client, vm):
    g = vm.gmem()
    assert vm.put_slot(0, 1 << 32, 4 * MiB, gmem=g).status_code == 201
    r = client.delete(f"{vm.base}/guest-memfds/{g}")
    assert r.status_code == 409 and r.json()["code"] == "GMEM_BOUND"
    assert client.delete(f"{vm.base}/memslots/0").status_code == 204
    assert client.delete(f"{vm.base}/guest-memfds/{g}").status_code == 204


def test_shared_memory_crud_and_in_use(client, vm):
    r = client.post(f"{vm.base}/shared-memory", json={"size": 4 * MiB})
    assert r.status_code == 201
    s = r.json()
    assert s["page_size"] == 4096 and s["used_by_slots"] == []
    assert vm.put_slot(0, 0, 4 * MiB, shm=s["id"]).status_code == 201
    assert client.get(f"{vm.base}/shared-memory/{s['id']}").json()["used_by_slots"] == [0]
    assert client.delete(f"{vm.base}/shared-memory/{s['id']}").json()["code"] == "SHARED_MEMORY_IN_USE"
    client.delete(f"{vm.base}/memslots/0")
    assert client.delete(f"{vm.base}/shared-memory/{s['id']}").status_code == 204
    assert client.get(f"{vm.base}/shared-memory").json()["items"] == []


def test_failing_requests_leak_no_fd(client, vm):
    g = vm.gmem()
    before = fd_count()
    for _ in range(20):
        client.post(f"{vm.base}/guest-memfds", json={"size": 4097})
        client.post(f"{vm.base}/guest-memfds", json={"size": 1 << 50})  # kernel/daemon refuses
        client.post(f"{vm.base}/shared-memory", json={"size": 4096, "hugepages": "1G"})
        vm.put_slot(5, 1 << 32, 8 * MiB, gmem=g)  # outside the backing
    assert fd_count() == before


def test_byte_quota_is_507(client):
    from .conftest import make_client

    with make_client(max_bytes_per_vm=8 * MiB) as c:
        vm_id = c.post("/v1/vms", json={}).json()["id"]
        assert c.post(f"/v1/vms/{vm_id}/guest-memfds", json={"size": 8 * MiB}).status_code == 201
        r = c.post(f"/v1/vms/{vm_id}/shared-memory", json={"size": 4096})
        assert r.status_code == 507 and r.json()["code"] == "VM_MEMORY_QUOTA"


def test_names_are_unique_within_a_vm(client, vm):
    r = client.post(f"{vm.base}/guest-memfds", json={"size": 4096, "name": "ram0"})
    assert r.status_code == 201 and r.json()["name"] == "ram0"
    dup = client.post(f"{vm.base}/shared-memory", json={"size": 4096, "name": "ram0"})
    assert dup.status_code == 409 and dup.json()["code"] == "NAME_TAKEN"
    assert client.post(f"{vm.base}/shared-memory", json={"size": 4096, "name": "ram1"}).json()["name"] == "ram1"
    assert client.post(f"{vm.base}/shared-memory", json={"size": 4096, "name": "bad name"}).status_code == 422
