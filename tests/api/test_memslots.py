"""Memslot endpoints: every kernel rule checked before the ioctl, with its code and status."""

from __future__ import annotations

import pytest

from tests.helpers import fd_count

from .conftest import GiB, MiB


def test_a_put_creates_the_slot_201_at_its_location_and_an_identical_put_is_200_unchanged(client, vm):
    g = vm.gmem()
    r = vm.put_slot(7, 4 * GiB, 4 * MiB, gmem=g)
    assert r.status_code == 201 and r.headers["location"].endswith("/memslots/7")
    slot = r.json()
    assert slot["guest_backing"] == "guest_memfd" and slot["userspace_addr_source"] == "guest_memfd_mmap"
    assert slot["immutable"] is True and slot["private"] == {"guest_memfd_id": g, "offset": 0}
    again = vm.put_slot(7, 4 * GiB, 4 * MiB, gmem=g)
    assert again.status_code == 200 and again.json() == slot
    assert client.get(f"{vm.base}/memslots/7").json() == slot


def test_slots_are_listed_by_id_and_a_guest_memfd_lists_the_slots_bound_to_it(client, vm):
    g, s = vm.gmem(), vm.shm()
    assert vm.put_slot(7, 4 * GiB, 4 * MiB, gmem=g).status_code == 201
    assert vm.put_slot(2, 0, 4 * MiB, shm=s).json()["guest_backing"] == "shared_memory"
    listing = client.get(f"{vm.base}/memslots").json()
    assert [i["slot"] for i in listing["items"]] == [2, 7] and listing["total"] == 2
    assert client.get(f"{vm.base}/guest-memfds/{g}").json()["bindings"] == [
        {"slot": 7, "offset": 0, "size": 4 * MiB, "guest_phys_addr": 4 * GiB}
    ]


def test_a_deleted_slot_is_unbound_and_deleting_it_again_is_404_SLOT_NOT_FOUND(client, vm):
    g = vm.gmem()
    assert vm.put_slot(7, 4 * GiB, 4 * MiB, gmem=g).status_code == 201
    assert client.delete(f"{vm.base}/memslots/7").status_code == 204
    assert client.get(f"{vm.base}/memslots/7").json()["code"] == "SLOT_NOT_FOUND"
    r = client.delete(f"{vm.base}/memslots/7")
    assert r.status_code == 404 and r.json()["code"] == "SLOT_NOT_FOUND"
    assert client.get(f"{vm.base}/guest-memfds/{g}").json()["bindings"] == []


def test_post_picks_the_lowest_free_id(client, vm):
    s = vm.shm(16 * MiB)
    vm.put_slot(0, 0, 4 * MiB, shm=s)
    vm.put_slot(2, 8 * MiB, 4 * MiB, shm=s, shm_offset=8 * MiB)
    body = {"guest_phys_addr": 4 * MiB, "memory_size": 4 * MiB, "shared": {"shared_memory_id": s, "offset": 4 * MiB}}
    r = client.post(f"{vm.base}/memslots", json=body)
    assert r.status_code == 201 and r.json()["slot"] == 1


def test_a_slot_with_both_parts_is_backed_by_its_shared_part_where_private_memory_is_never_faulted(vm):
    g, s = vm.gmem(4 * MiB, flags=[]), vm.shm()
    slot = vm.put_slot(0, 4 * GiB, 4 * MiB, shm=s, gmem=g).json()
    # a non-mmap guest_memfd is never faulted on a host without private memory: the guest sees the shared part
    assert slot["guest_backing"] == "shared_memory" and slot["userspace_addr_source"] == "shared_memory"


def test_private_only_non_mappable_slot_reports_no_guest_backing(vm):
    g = vm.gmem(4 * MiB, flags=[])
    slot = vm.put_slot(0, 4 * GiB, 4 * MiB, gmem=g).json()
    assert slot["guest_backing"] == "none" and slot["userspace_addr_source"] == "none"


@pytest.mark.parametrize(
    "slot_id, gpa, size, code",
    [
        (32764, 0, 4 * MiB, "SLOT_ID_OUT_OF_RANGE"),  # M2 (path bound is 65535; the kernel's is 32763)
        (0, 4096 + 1, 4 * MiB, "RANGE_NOT_ALIGNED"),  # M5
        (0, 0, 4 * MiB + 1, "RANGE_NOT_ALIGNED"),  # M4
        (0, (1 << 52) - 4096, 2 * 4096, "RANGE_OVERFLOW"),  # M9/X1
    ],
    ids=[
        "M2_slot_id_32764_is_SLOT_ID_OUT_OF_RANGE",
        "M5_unaligned_gpa_is_RANGE_NOT_ALIGNED",
        "M4_unaligned_size_is_RANGE_NOT_ALIGNED",
        "M9_X1_an_end_past_2_to_the_52_is_RANGE_OVERFLOW",
    ],
)
def test_a_slot_shape_the_kernel_refuses_is_422_with_the_rules_code(vm, slot_id, gpa, size, code):
    s = vm.shm(8 * MiB)
    r = vm.put_slot(slot_id, gpa, size, shm=s)
    assert r.status_code == 422 and r.json()["code"] == code


def test_a_slot_id_between_the_kernels_limit_and_the_paths_is_422_SLOT_ID_OUT_OF_RANGE(vm):
    s = vm.shm()
    r = vm.put_slot(40000, 0, 4 * MiB, shm=s)
    assert r.status_code == 422 and r.json()["code"] == "SLOT_ID_OUT_OF_RANGE"


@pytest.mark.parametrize("flag", ["log_dirty_pages", "readonly"])
def test_m3_a_slot_with_a_private_part_takes_no_flag_422_FLAGS_INCOMPATIBLE(vm, flag):
    r = vm.put_slot(0, 4 * GiB, 4 * MiB, gmem=vm.gmem(), flags=[flag])
    assert r.status_code == 422 and r.json()["code"] == "FLAGS_INCOMPATIBLE"


def test_a_shared_only_slot_may_be_readonly(vm):
    assert vm.put_slot(1, 0, 4 * MiB, shm=vm.shm(), flags=["readonly"]).status_code == 201


def test_m3_an_unknown_flag_name_fails_the_schema_with_422(vm):
    assert vm.put_slot(2, 8 * GiB, 4 * MiB, gmem=vm.gmem(), flags=["bogus"]).status_code == 422


@pytest.mark.parametrize(
    "size, backing, code",
    [
        (8 * MiB, lambda g, s: {"shm": s}, "RANGE_OUTSIDE_BACKING"),
        (4 * MiB, lambda g, s: {"gmem": g, "gmem_offset": 4096}, "RANGE_OUTSIDE_BACKING"),  # B4
        (2 * MiB, lambda g, s: {"gmem": g, "gmem_offset": 100}, "RANGE_NOT_ALIGNED"),  # M7
        (2 * MiB, lambda g, s: {"shm": "shm-000000000000"}, "SHARED_MEMORY_NOT_FOUND"),
        (2 * MiB, lambda g, s: {"gmem": "gmem-000000000000"}, "GUEST_MEMFD_NOT_FOUND"),  # B1
        (4096, lambda g, s: {}, "SLOT_NO_BACKING"),
    ],
    ids=[
        "a_shared_part_past_the_shared_memory_end_is_RANGE_OUTSIDE_BACKING",
        "B4_a_private_part_past_the_guest_memfd_end_is_RANGE_OUTSIDE_BACKING",
        "M7_an_unaligned_guest_memfd_offset_is_RANGE_NOT_ALIGNED",
        "an_unknown_shared_memory_is_SHARED_MEMORY_NOT_FOUND",
        "B1_an_unknown_guest_memfd_is_GUEST_MEMFD_NOT_FOUND",
        "a_slot_with_neither_part_is_SLOT_NO_BACKING",
    ],
)
def test_a_backing_the_slot_cannot_use_is_refused_with_the_rules_code(vm, size, backing, code):
    g, s = vm.gmem(4 * MiB), vm.shm(4 * MiB)
    assert vm.put_slot(0, 0, size, **backing(g, s)).json()["code"] == code


def test_o1_an_overlapping_gpa_range_is_409_SLOT_OVERLAP_naming_the_other_slot(vm):
    assert vm.put_slot(0, 4 * GiB, 4 * MiB, gmem=vm.gmem(8 * MiB)).status_code == 201
    r = vm.put_slot(1, 4 * GiB + 2 * MiB, 4 * MiB, shm=vm.shm(8 * MiB))
    assert r.status_code == 409 and r.json()["code"] == "SLOT_OVERLAP" and r.json()["extra"] == {"slot": 0}


def test_b5_an_overlapping_guest_memfd_range_is_409_GMEM_RANGE_BOUND_and_the_range_after_it_binds(vm):
    g = vm.gmem(8 * MiB)
    assert vm.put_slot(0, 4 * GiB, 4 * MiB, gmem=g).status_code == 201
    r = vm.put_slot(1, 8 * GiB, 4 * MiB, gmem=g, gmem_offset=2 * MiB)
    assert r.status_code == 409 and r.json()["code"] == "GMEM_RANGE_BOUND"
    assert vm.put_slot(1, 8 * GiB, 4 * MiB, gmem=g, gmem_offset=4 * MiB).status_code == 201


def test_a_slot_over_the_probe_window_is_409_GPA_RESERVED(vm):
    r = vm.put_slot(2, 0xFFE00000, 2 * MiB, shm=vm.shm(8 * MiB))
    assert r.status_code == 409 and r.json()["code"] == "GPA_RESERVED"


def test_m11_any_change_of_a_slot_with_a_private_part_is_409_SLOT_IMMUTABLE(vm):
    g = vm.gmem(8 * MiB)
    vm.put_slot(0, 4 * GiB, 4 * MiB, gmem=g)
    for change in ({"gpa": 8 * GiB, "size": 4 * MiB}, {"gpa": 4 * GiB, "size": 2 * MiB}):
        r = vm.put_slot(0, change["gpa"], change["size"], gmem=g)
        assert r.status_code == 409 and r.json()["code"] == "SLOT_IMMUTABLE"
    # dropping the private part (the 6.18.y use-after-free) is refused too
    r = vm.put_slot(0, 4 * GiB, 4 * MiB, shm=vm.shm())
    assert r.status_code == 409 and r.json()["code"] == "SLOT_IMMUTABLE"


def test_m12_a_shared_only_slot_moves_and_toggles_dirty_logging_in_place(vm):
    s = vm.shm()
    vm.put_slot(0, 0, 4 * MiB, shm=s)
    moved = vm.put_slot(0, 1 * GiB, 4 * MiB, shm=s)
    assert moved.status_code == 200 and moved.json()["guest_phys_addr"] == GiB and moved.json()["generation"] == 2
    logged = vm.put_slot(0, 1 * GiB, 4 * MiB, shm=s, flags=["log_dirty_pages"])
    assert logged.status_code == 200 and logged.json()["flags"] == ["log_dirty_pages"]


def test_m11_a_size_change_of_a_shared_only_slot_is_409_SLOT_EXISTS(vm):
    s = vm.shm()
    assert vm.put_slot(0, 1 * GiB, 4 * MiB, shm=s).status_code == 201
    r = vm.put_slot(0, 1 * GiB, 2 * MiB, shm=s)
    assert r.status_code == 409 and r.json()["code"] == "SLOT_EXISTS"


def test_the_slot_list_pages_by_cursor_in_id_order_and_filters_by_a_gpa_window(client, vm):
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


def test_refused_slot_requests_leave_no_slot_no_binding_and_no_fd(client, vm):
    g = vm.gmem(4 * MiB)
    before = fd_count()
    for _ in range(10):
        vm.put_slot(0, 4 * GiB, 8 * MiB, gmem=g)
        vm.put_slot(0, 4 * GiB + 1, 4 * MiB, gmem=g)
        vm.put_slot(0, 4 * GiB, 4 * MiB, gmem=g, flags=["readonly"])
    assert fd_count() == before
    assert client.get(f"{vm.base}/memslots").json()["total"] == 0
    assert client.get(f"{vm.base}/guest-memfds/{g}").json()["bindings"] == []


def test_a_slot_past_max_slots_per_vm_is_429_SLOT_QUOTA():
    from .conftest import make_client

    with make_client(max_slots_per_vm=1) as c:
        vm_id = c.post("/v1/vms", json={}).json()["id"]
        shm = c.post(f"/v1/vms/{vm_id}/shared-memory", json={"size": 8 * MiB}).json()["id"]
        body = {"guest_phys_addr": 0, "memory_size": 4 * MiB, "shared": {"shared_memory_id": shm}}
        assert c.put(f"/v1/vms/{vm_id}/memslots/0", json=body).status_code == 201
        r = c.put(f"/v1/vms/{vm_id}/memslots/1", json={**body, "guest_phys_addr": 8 * MiB})
        assert r.status_code == 429 and r.json()["code"] == "SLOT_QUOTA"
