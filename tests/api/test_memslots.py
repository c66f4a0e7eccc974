"""Memslot endpoints: every kernel rule checked before the ioctl, with its code and status."""

from __future__ import annotations

import pytest

from tests.helpers import fd_count

from .conftest import GiB, MiB


def test_put_create_idempotent_get_list_delete(client, vm):
    g, s = vm.gmem(), vm.shm()
    r = vm.put_slot(7, 4 * GiB, 4 * MiB, gmem=g)
    assert r.status_code == 201 and r.headers["location"].endswith("/memslots/7")
    slot = r.json()
    assert slot["guest_backing"] == "guest_memfd" and slot["userspace_addr_source"] == "guest_memfd_mmap"
    assert slot["immutable"] is True and slot["private"] == {"guest_memfd_id": g, "offset": 0}
    again = vm.put_slot(7, 4 * GiB, 4 * MiB, gmem=g)
    assert again.status_code == 200 and again.json() == slot
    assert vm.put_slot(2, 0, 4 * MiB, shm=s).json()["guest_backing"] == "shared_memory"
    listing = client.get(f"{vm.base}/memslots").json()
    assert [i["slot"] for i in listing["items"]] == [2, 7] and listing["total"] == 2
    assert client.get(f"{vm.base}/memslots/7").json() == slot
    assert client.get(f"{vm.base}/guest-memfds/{g}").json()["bindings"] == [
        {"slot": 7, "offset": 0, "size": 4 * MiB, "guest_phys_addr": 4 * GiB}]
    assert client.delete(f"{vm.base}/memslots/7").status_code == 204
    assert client.get(f"{vm.base}/memslots/7").json()["code"] == "SLOT_NOT_FOUND"
    assert client.delete(f"{vm.base}/memslots/7").status_code == 404
    assert client.get(f"{vm.base}/guest-memfds/{g}").json()["bindings"] == []


def test_post_picks_the_lowest_free_id(client, vm):
    s = vm.shm(16 * MiB)
    vm.put_slot(0, 0, 4 * MiB, shm=s)
    vm.put_slot(2, 8 * MiB, 4 * MiB, shm=s, shm_offset=8 * MiB)
    body = {"guest_phys_addr": 4 * MiB, "memory_size": 4 * MiB, "shared": {"shared_memory_id": s, "offset": 4 * MiB}}
    r = client.post(f"{vm.base}/memslots", json=body)
    assert r.status_code == 201 and r.json()["slot"] == 1


def test_both_parts_in_one_slot(client, vm):
    g, s = vm.gmem(4 * MiB, flags=[]), vm.shm()
    slot = vm.put_slot(0, 4 * GiB, 4 * MiB, shm=s, gmem=g).json()
    # a non-mmap guest_memfd is never faulted on a host without private memory: the guest sees the shared part
    assert slot["guest_backing"] == "shared_memory" and slot["userspace_addr_source"] == "shared_memory"


def test_private_only_non_mappable_slot_reports_no_guest_backing(vm):
    g = vm.gmem(4 * MiB, flags=[])
    slot = vm.put_slot(0, 4 * GiB, 4 * MiB, gmem=g).json()
    assert slot["guest_backing"] == "none" and slot["userspace_addr_source"] == "none"


@pytest.mark.parametrize("slot_id, gpa, size, code", [
    (32764, 0, 4 * MiB, "SLOT_ID_OUT_OF_RANGE"),   # M2 (path bound is 65535; the kernel's is 32763)
    (0, 4096 + 1, 4 * MiB, "RANGE_NOT_ALIGNED"),   # M5
    (0, 0, 4 * MiB + 1, "RANGE_NOT_ALIGNED"),      # M4
    (0, (1 << 52) - 4096, 2 * 4096, "RANGE_OVERFLOW"),  # M9/X1
])
def test_rejected_shapes(vm, slot_id, gpa, size, code):
    s = vm.shm(8 * MiB)
    r = vm.put_slot(slot_id, gpa, size, shm=s)
    assert r.status_code == 422 and r.json()["code"] == code


def test_slot_id_out_of_kernel_range(vm):
    s = vm.shm()
    r = vm.put_slot(40000, 0, 4 * MiB, shm=s)
    assert r.status_code == 422 and r.json()["code"] == "SLOT_ID_OUT_OF_RANGE"


def test_flag_rules(vm):
    g, s = vm.gmem(), vm.shm()
    r = vm.put_slot(0, 4 * GiB, 4 * MiB, gmem=g, flags=["log_dirty_pages"])
    assert r.status_code == 422 and r.json()["code"] == "FLAGS_INCOMPATIBLE"
    r = vm.put_slot(0, 4 * GiB, 4 * MiB, gmem=g, flags=["readonly"])
    assert r.json()["code"] == "FLAGS_INCOMPATIBLE"
    assert vm.put_slot(1, 0, 4 * MiB, shm=s, flags=["readonly"]).status_code == 201
    assert vm.put_slot(2, 8 * GiB, 4 * MiB, gmem=vm.gmem(), flags=["bogus"]).status_code == 422


def test_backing_rules(vm):
    g, s = vm.gmem(4 * MiB), vm.shm(4 * MiB)
    assert vm.put_slot(0, 0, 8 * MiB, shm=s).json()["code"] == "RANGE_OUTSIDE_BACKING"
    assert vm.put_slot(0, 0, 4 * MiB, gmem=g, gmem_offset=4096).json()["code"] == "RANGE_OUTSIDE_BACKING"  # B4
    assert vm.put_slot(0, 0, 2 * MiB, gmem=g, gmem_offset=100).json()["code"] == "RANGE_NOT_ALIGNED"  # M7
    assert vm.put_slot(0, 0, 2 * MiB, shm="shm-000000000000").json()["code"] == "SHARED_MEMORY_NOT_FOUND"
    assert vm.put_slot(0, 0, 2 * MiB, gmem="gmem-000000000000").json()["code"] == "GUEST_MEMFD_NOT_FOUND"
    r = vm.c.put(f"{vm.base}/memslots/0", json={"guest_phys_addr": 0, "memory_size": 4096})
    assert r.json()["code"] == "SLOT_NO_BACKING"


def test_conflicts(vm):
    g, s = vm.gmem(8 * MiB), vm.shm(8 * MiB)
    assert vm.put_slot(0, 4 * GiB, 4 * MiB, gmem=g).status_code == 201
    r = vm.put_slot(1, 4 * GiB + 2 * MiB, 4 * MiB, shm=s)  # O1
    assert r.status_code == 409 and r.json()["code"] == "SLOT_OVERLAP" and r.json()["extra"] == {"slot": 0}
    r = vm.put_slot(1, 8 * GiB, 4 * MiB, gmem=g, gmem_offset=2 * MiB)  # B5
    assert r.status_code == 409 and r.json()["code"] == "GMEM_RANGE_BOUND"
    assert vm.put_slot(1, 8 * GiB, 4 * MiB, gmem=g, gmem_offset=4 * MiB).status_code == 201
    r = vm.put_slot(2, 0xFFE00000, 2 * MiB, shm=s)
    assert r.status_code == 409 and r.json()["code"] == "GPA_RESERVED"


def test_private_slot_is_immutable(vm):
    g = vm.gmem(8 * MiB)
    vm.put_slot(0, 4 * GiB, 4 * MiB, gmem=g)
    for change in ({"gpa": 8 * GiB, "size": 4 * MiB}, {"gpa": 4 * GiB, "size": 2 * MiB}):
        r = vm.put_slot(0, change["gpa"], change["size"], gmem=g)
        assert r.status_code == 409 and r.json()["code"] == "SLOT_IMMUTABLE"
    # dropping the private part (the 6.18.y use-after-free) is refused too
    r = vm.put_slot(0, 4 * GiB, 4 * MiB, shm=vm.shm())
    assert r.status_code == 409 and r.json()["code"] == "SLOT_IMMUTABLE"


def test_shared_only_slot_can_move_and_toggle_dirty_logging(vm):
    s = vm.shm()
    vm.put_slot(0, 0, 4 * MiB, shm=s)
    moved = vm.put_slot(0, 1 * GiB, 4 * MiB, shm=s)
    assert moved.status_code == 200 and moved.json()["guest_phys_addr"] == GiB and moved.json()["generation"] == 2
    logged = vm.put_slot(0, 1 * GiB, 4 * MiB, shm=s, flags=["log_dirty_pages"])
    assert logged.status_code == 200 and logged.json()["flags"] == ["log_dirty_pages"]
    r = vm.put_slot(0, 1 * GiB, 2 * MiB, shm=s)
    assert r.status_code == 409 and r.json()["code"] == "SLOT_EXISTS"


def test_list_filters_and_paginates(client, vm):
    s = vm.shm(64 * MiB)
    for i in range(10):
        assert vm.put_slot(i, i * 4 * MiB, 2 * MiB, shm=s, shm_offset=i * 4 * MiB).status_code == 201
    page = client.get(f"{vm.base}/memslots", params={"limit": 4}).json()
    assert [i["slot"] for i in page["items"]] == [0, 1, 2, 3] and page["next_cursor"]
    seen = [i["slot"] for i in page["items"]]
    while page["next_cursor"]:
        page = client.get(f"{vm.base}/memslots", params={"limit": 4, "cursor": page["next_cursor"]}).json()
        seen += [i["slot"] for i in page["items"]]
    assert seen == list(range(10))
    window = client.get(f"{vm.base}/memslots", params={"gpa_start": 5 * MiB, "gpa_end": 13 * MiB}).json()
    assert [i["slot"] for i in window["items"]] == [1, 2, 3]


def test_failed_slot_requests_leave_no_state_and_no_fd(client, vm):
    g = vm.gmem(4 * MiB)
    before = fd_count()
    for _ in range(10):
        vm.put_slot(0, 4 * GiB, 8 * MiB, gmem=g)
        vm.put_slot(0, 4 * GiB + 1, 4 * MiB, gmem=g)
        vm.put_slot(0, 4 * GiB, 4 * MiB, gmem=g, flags=["readonly"])
    assert fd_count() == before
    assert client.get(f"{vm.base}/memslots").json()["total"] == 0
    assert client.get(f"{vm.base}/guest-memfds/{g}").json()["bindings"] == []


def test_slot_quota(client):
    from .conftest import make_client

    with make_client(max_slots_per_vm=1) as c:
        vm_id = c.post("/v1/vms", json={}).json()["id"]
        shm = c.post(f"/v1/vms/{vm_id}/shared-memory", json={"size": 8 * MiB}).json()["id"]
        body = {"guest_phys_addr": 0, "memory_size": 4 * MiB, "shared": {"shared_memory_id": shm}}
        assert c.put(f"/v1/vms/{vm_id}/memslots/0", json=body).status_code == 201
        r = c.put(f"/v1/vms/{vm_id}/memslots/1", json={**body, "guest_phys_addr": 8 * MiB})
        assert r.status_code == 429 and r.json()["code"] == "SLOT_QUOTA"
