"""guest_memfd and shared-memory endpoints."""

from __future__ import annotations

import pytest

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


def _mem_available() -> int:
    from memslotd.core.limits import read_meminfo

    return read_meminfo().available


def test_allocating_past_the_byte_quota_is_507_and_commits_nothing(client):
    from .conftest import make_client

    with make_client(max_bytes_per_vm=64 * MiB, max_bytes_total=1 << 40) as c:
        vm_id = c.post("/v1/vms", json={}).json()["id"]
        base = f"/v1/vms/{vm_id}"
        # sparse objects cost nothing: 128 MiB of guest_memfds under a 64 MiB quota
        g1, g2 = (c.post(f"{base}/guest-memfds", json={"size": 64 * MiB}).json()["id"] for _ in range(2))
        assert c.post(f"{base}/guest-memfds/{g1}/allocate", json={"offset": 0, "length": 48 * MiB}).status_code == 204
        # allocating what is already committed commits nothing new
        assert c.post(f"{base}/guest-memfds/{g1}/allocate", json={"offset": 0, "length": 48 * MiB}).status_code == 204
        before = _mem_available()
        r = c.post(f"{base}/guest-memfds/{g2}/allocate", json={"offset": 0, "length": 32 * MiB})
        assert r.status_code == 507 and r.json()["code"] == "VM_MEMORY_QUOTA", r.text
        assert r.json()["extra"]["committed"] == 48 * MiB and r.json()["extra"]["requested"] == 32 * MiB
        assert _mem_available() > before - 16 * MiB  # the refused 32 MiB were never populated
        # punching gives the budget back
        assert c.post(f"{base}/guest-memfds/{g1}/punch-hole", json={"offset": 0, "length": 32 * MiB}).status_code == 200
        assert c.post(f"{base}/guest-memfds/{g2}/allocate", json={"offset": 0, "length": 32 * MiB}).status_code == 204


def test_a_huge_allocate_is_refused_before_the_kernel_sees_it():
    """A 1 TiB guest_memfd exceeds the default quota; under a configured quota larger than the
    host, an allocate the host cannot give is 503 HOST_MEMORY_LOW, and nothing was committed."""
    from .conftest import make_client

    with make_client() as c:
        vm_id = c.post("/v1/vms", json={}).json()["id"]
        r = c.post(f"/v1/vms/{vm_id}/guest-memfds", json={"size": 1 << 40})
        assert r.status_code == 507 and r.json()["code"] in ("VM_MEMORY_QUOTA", "DAEMON_MEMORY_QUOTA")
    with make_client(max_bytes_per_vm=1 << 42, max_bytes_total=1 << 42) as c:
        vm_id = c.post("/v1/vms", json={}).json()["id"]
        size = 2 * _mem_available()
        g = c.post(f"/v1/vms/{vm_id}/guest-memfds", json={"size": size}).json()["id"]
        before = _mem_available()
        r = c.post(f"/v1/vms/{vm_id}/guest-memfds/{g}/allocate", json={"offset": 0, "length": size})
        assert r.status_code == 503 and r.json()["code"] == "HOST_MEMORY_LOW", r.text
        assert r.json()["extra"]["requested"] == size and r.json()["extra"]["mem_available"] > 0
        assert r.headers["retry-after"]
        assert _mem_available() > before - 1024 * MiB


def test_default_byte_quota_is_below_mem_total(client):
    from memslotd.core.limits import read_meminfo

    mem_total = read_meminfo().total
    limits = client.get("/v1/limits").json()
    assert 0 < limits["max_bytes_total"] <= mem_total - limits["memory_reserve_bytes"] < mem_total
    assert limits["max_bytes_per_vm"] <= limits["max_bytes_total"] and limits["host_mem_total"] == mem_total


def test_hugepages_without_a_reserved_pool_say_which_sysctl_to_set(client, vm):
    from memslotd.core.limits import hugepage_pool

    if hugepage_pool(2 * MiB)[0]:
        pytest.skip("this host has a 2M huge page pool")
    r = client.post(f"{vm.base}/shared-memory", json={"size": 2 * MiB, "hugepages": "2M"})
    assert r.status_code == 501 and r.json()["code"] == "HUGEPAGES_NOT_RESERVED"
    assert "vm.nr_hugepages" in r.json()["detail"]


def test_kernel_error_details_keep_their_closing_parenthesis():
    import errno

    from memslotd.core.errors import kernel_error

    detail = kernel_error(OSError(errno.EINVAL, "Invalid argument"), "allocate", ioctl="fallocate").detail
    assert detail == "allocate: fallocate failed with EINVAL (Invalid argument)"
    assert kernel_error(OSError(errno.EIO, ""), "x").detail == "x: syscall failed with EIO"


def test_names_are_unique_within_a_vm(client, vm):
    r = client.post(f"{vm.base}/guest-memfds", json={"size": 4096, "name": "ram0"})
    assert r.status_code == 201 and r.json()["name"] == "ram0"
    dup = client.post(f"{vm.base}/shared-memory", json={"size": 4096, "name": "ram0"})
    assert dup.status_code == 409 and dup.json()["code"] == "NAME_TAKEN"
    assert client.post(f"{vm.base}/shared-memory", json={"size": 4096, "name": "ram1"}).json()["name"] == "ram1"
    assert client.post(f"{vm.base}/shared-memory", json={"size": 4096, "name": "bad name"}).status_code == 422
