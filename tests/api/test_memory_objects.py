"""guest_memfd and shared-memory endpoints."""

from __future__ import annotations

import pytest

from tests.helpers import fd_count

from .conftest import MiB


def test_a_guest_memfd_reads_as_created_allocates_punches_unbound_and_is_404_once_deleted(client, vm):
    r = client.post(f"{vm.base}/guest-memfds", json={"size": 8 * MiB, "flags": ["mmap", "init_shared"]})
    assert r.status_code == 201
    g = r.json()
    assert g["size"] == 8 * MiB and g["flags"] == ["mmap", "init_shared"] and g["bindings"] == []
    assert client.get(f"{vm.base}/guest-memfds").json()["items"][0]["id"] == g["id"]
    assert client.get(f"{vm.base}/guest-memfds/{g['id']}").json() == g
    assert (
        client.post(f"{vm.base}/guest-memfds/{g['id']}/allocate", json={"offset": 0, "length": 2 * MiB}).status_code
        == 204
    )
    punch = client.post(f"{vm.base}/guest-memfds/{g['id']}/punch-hole", json={"offset": 0, "length": 2 * MiB})
    assert punch.status_code == 200 and punch.json()["gpa_ranges"] == []
    assert client.delete(f"{vm.base}/guest-memfds/{g['id']}").status_code == 204
    assert client.get(f"{vm.base}/guest-memfds/{g['id']}").json()["code"] == "GUEST_MEMFD_NOT_FOUND"


@pytest.mark.parametrize(
    "body, code",
    [
        ({"size": 4097}, "RANGE_NOT_ALIGNED"),  # GC2
        ({"size": 0}, None),  # GC2: 0 fails the schema
        ({"size": "4096"}, None),  # strict: no coercion
        ({"size": 4096, "flags": ["huge"]}, None),  # GC1: an unknown flag name fails the schema
        ({"size": 4096, "flags": ["init_shared"]}, "FLAGS_INCOMPATIBLE"),  # GC1: init_shared is useless without mmap
    ],
    ids=[
        "GC2_a_size_off_a_page_boundary_is_RANGE_NOT_ALIGNED",
        "GC2_size_0_fails_the_schema",
        "a_size_as_a_string_fails_the_strict_schema",
        "GC1_an_unknown_flag_name_fails_the_schema",
        "GC1_init_shared_without_mmap_is_FLAGS_INCOMPATIBLE",
    ],
)
def test_a_guest_memfd_the_kernel_would_refuse_is_422_with_the_rules_code(client, vm, body, code):
    r = client.post(f"{vm.base}/guest-memfds", json=body)
    assert r.status_code == 422 and (code is None or r.json()["code"] == code), r.text


@pytest.mark.parametrize("path", ["allocate", "punch-hole"])
def test_a_range_past_the_guest_memfd_end_is_RANGE_OUTSIDE_BACKING_and_off_a_page_RANGE_NOT_ALIGNED(client, vm, path):
    g = vm.gmem(4 * MiB)
    r = client.post(f"{vm.base}/guest-memfds/{g}/{path}", json={"offset": 4 * MiB, "length": 4096})
    assert r.status_code == 422 and r.json()["code"] == "RANGE_OUTSIDE_BACKING"
    r = client.post(f"{vm.base}/guest-memfds/{g}/{path}", json={"offset": 1, "length": 4096})
    assert r.json()["code"] == "RANGE_NOT_ALIGNED"


def test_a_punch_hole_reports_the_gpa_ranges_of_the_slots_bound_to_the_punched_range(client, vm):
    g = vm.gmem(8 * MiB)
    assert vm.put_slot(3, 1 << 32, 4 * MiB, gmem=g, gmem_offset=4 * MiB).status_code == 201
    r = client.post(f"{vm.base}/guest-memfds/{g}/punch-hole", json={"offset": 5 * MiB, "length": 2 * MiB})
    assert r.json()["gpa_ranges"] == [{"slot": 3, "guest_phys_addr": (1 << 32) + MiB, "size": 2 * MiB}]


def test_deleting_a_bound_guest_memfd_is_409_GMEM_BOUND_until_its_slot_is_deleted(client, vm):
    g = vm.gmem()
    assert vm.put_slot(0, 1 << 32, 4 * MiB, gmem=g).status_code == 201
    r = client.delete(f"{vm.base}/guest-memfds/{g}")
    assert r.status_code == 409 and r.json()["code"] == "GMEM_BOUND"
    assert client.delete(f"{vm.base}/memslots/0").status_code == 204
    assert client.delete(f"{vm.base}/guest-memfds/{g}").status_code == 204


def test_shared_memory_lists_its_slots_and_deleting_it_in_use_is_SHARED_MEMORY_IN_USE(client, vm):
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


def test_refused_object_and_slot_requests_leak_no_fd(client, vm):
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


def test_a_guest_memfd_larger_than_the_default_quota_is_507(client, vm):
    r = client.post(f"{vm.base}/guest-memfds", json={"size": 1 << 40})  # 1 TiB
    assert r.status_code == 507 and r.json()["code"] in ("VM_MEMORY_QUOTA", "DAEMON_MEMORY_QUOTA")


def test_an_allocate_the_host_cannot_give_is_503_HOST_MEMORY_LOW_before_the_kernel_sees_it():
    """Under a configured quota larger than the host, nothing of the refused allocate was committed."""
    from .conftest import make_client

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


def test_the_default_byte_quotas_leave_the_memory_reserve_of_mem_total_free(client):
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


def test_a_kernel_error_detail_names_the_call_the_errno_and_its_message_in_parentheses():
    import errno

    from memslotd.core.errors import kernel_error

    detail = kernel_error(OSError(errno.EINVAL, "Invalid argument"), "allocate", ioctl="fallocate").detail
    assert detail == "allocate: fallocate failed with EINVAL (Invalid argument)"
    assert kernel_error(OSError(errno.EIO, ""), "x").detail == "x: syscall failed with EIO"


def test_an_object_name_taken_in_the_vm_is_409_NAME_TAKEN_and_a_malformed_one_422(client, vm):
    r = client.post(f"{vm.base}/guest-memfds", json={"size": 4096, "name": "ram0"})
    assert r.status_code == 201 and r.json()["name"] == "ram0"
    dup = client.post(f"{vm.base}/shared-memory", json={"size": 4096, "name": "ram0"})
    assert dup.status_code == 409 and dup.json()["code"] == "NAME_TAKEN"
    assert client.post(f"{vm.base}/shared-memory", json={"size": 4096, "name": "ram1"}).json()["name"] == "ram1"
    assert client.post(f"{vm.base}/shared-memory", json={"size": 4096, "name": "bad name"}).status_code == 422
