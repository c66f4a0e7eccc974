"""Batch memslot operations and the kernel's full slot budget."""

from __future__ import annotations

import errno

from .conftest import GiB, MiB, VMHelper, make_client

PAGE = 4096


def batch(vm, *ops):
    return vm.c.post(f"{vm.base}/memslots:batch", json={"ops": list(ops)})


def create(gpa: int, size: int, shm: str, offset: int = 0, slot: int | None = None) -> dict:
    op = {
        "op": "create",
        "guest_phys_addr": gpa,
        "memory_size": size,
        "shared": {"shared_memory_id": shm, "offset": offset},
    }
    return op if slot is None else {**op, "slot": slot}


def slots(vm) -> list[int]:
    return [s["slot"] for s in vm.c.get(f"{vm.base}/memslots", params={"limit": 1000}).json()["items"]]


def test_ops_apply_in_order_and_events_follow_the_commit(client, vm):
    s = vm.shm(16 * MiB)
    seq = client.app.state.core.events.seq
    r = batch(
        vm,
        create(0, 4 * MiB, s),
        create(4 * MiB, 4 * MiB, s, 4 * MiB, slot=9),
        {"op": "delete", "slot": 0},
        create(0, 4 * MiB, s),
    )
    assert r.status_code == 200, r.text
    assert [(x["op"], x["slot"], x["result"]) for x in r.json()["results"]] == [
        ("create", 0, "created"),
        ("create", 9, "created"),
        ("delete", 0, "deleted"),
        ("create", 0, "created"),
    ]
    assert slots(vm) == [0, 9]
    kinds = [(e.type, e.data.get("slot")) for e in client.app.state.core.events.since(seq)]
    assert kinds == [
        ("memslot.created", 0),
        ("memslot.created", 9),
        ("memory.invalidate_start", None),
        ("memory.invalidate_end", None),
        ("memslot.deleted", 0),
        ("memslot.created", 0),
    ]
    again = batch(vm, create(0, 4 * MiB, s, slot=0))
    assert again.json()["results"][0]["result"] == "unchanged"


def test_deletes_of_back_to_back_backing_share_one_invalidation(client, vm):
    """Slots 0-2 sit back to back in one shared memory: deleting them in one batch invalidates
    one file range (one pair, every GPA range listed); slot 3 elsewhere gets its own pair."""
    s = vm.shm(16 * MiB)
    ops = [create(GiB + i * 8 * MiB, 2 * MiB, s, i * 2 * MiB, slot=i) for i in range(3)]
    assert batch(vm, *ops, create(2 * GiB, 2 * MiB, s, 12 * MiB, slot=3)).status_code == 200
    seq = client.app.state.core.events.seq
    assert batch(vm, *[{"op": "delete", "slot": i} for i in range(4)]).status_code == 200
    events = client.app.state.core.events.since(seq)
    assert [(e.type, e.data.get("slot")) for e in events] == [
        ("memory.invalidate_start", None),
        ("memory.invalidate_end", None),
        ("memslot.deleted", 0),
        ("memslot.deleted", 1),
        ("memslot.deleted", 2),
        ("memory.invalidate_start", None),
        ("memory.invalidate_end", None),
        ("memslot.deleted", 3),
    ]
    first = events[0].data
    assert (first["shared_memory_id"], first["shared_offset"], first["shared_length"]) == (s, 0, 6 * MiB)
    assert [(g["slot"], g["guest_phys_addr"], g["size"]) for g in first["gpa_ranges"]] == [
        (i, GiB + i * 8 * MiB, 2 * MiB) for i in range(3)
    ]
    assert events[5].data["shared_offset"] == 12 * MiB and events[5].data["shared_length"] == 2 * MiB


def test_a_rule_broken_half_way_applies_nothing(client, vm):
    s = vm.shm(16 * MiB)
    batch(vm, create(0, 4 * MiB, s, slot=1))
    seq = client.app.state.core.events.seq
    r = batch(vm, {"op": "delete", "slot": 1}, create(8 * MiB, 4 * MiB, s, 8 * MiB), create(9 * MiB, 4 * MiB, s))
    body = r.json()
    assert r.status_code == 409 and body["code"] == "BATCH_FAILED"
    assert body["extra"]["index"] == 2 and body["extra"]["cause"] == "SLOT_OVERLAP"
    assert slots(vm) == [1] and client.app.state.core.events.since(seq) == []
    assert batch(vm, {"op": "delete", "slot": 7}).json()["extra"]["cause"] == "SLOT_NOT_FOUND"
    assert batch(vm, *[{"op": "delete", "slot": 1}] * 4097).status_code == 422


class FailingVMFd:
    """Test double: a VM fd whose Nth KVM_SET_USER_MEMORY_REGION2 fails with ENOMEM (the real
    kernel cannot be made to run out of memory on demand). Every other call is real and counted
    (``fail_on_call=-1``: only count)."""

    def __init__(self, real, fail_on_call: int):
        self._real, self._calls, self._fail_on = real, 0, fail_on_call

    def set_user_memory_region2(self, *args):
        self._calls += 1
        if self._calls == self._fail_on:
            raise OSError(errno.ENOMEM, "injected")
        return self._real.set_user_memory_region2(*args)

    def delete_user_memory_region(self, slot):
        self._calls += 1
        if self._calls == self._fail_on:
            raise OSError(errno.ENOMEM, "injected")
        return self._real.delete_user_memory_region(slot)

    def set_user_memory_regions(self, regions):
        for applied, region in enumerate(regions):
            self._calls += 1
            if self._calls == self._fail_on:
                return applied, errno.ENOMEM
            done, error = self._real.set_user_memory_regions([region])
            if error:
                return applied, error
        return len(regions), 0

    def __getattr__(self, name):
        return getattr(self._real, name)


def test_a_kernel_failure_half_way_rolls_the_kernel_back(client, vm):
    s = vm.shm(16 * MiB)
    assert batch(vm, create(GiB, 4 * MiB, s, slot=0)).status_code == 200
    host = client.app.state.core.registry.vms[vm.id].shms[s].port.mapping
    host.write(0, b"survives")
    record = client.app.state.core.registry.vms[vm.id]
    record.port = FailingVMFd(record.port, fail_on_call=3)
    seq = client.app.state.core.events.seq
    r = batch(
        vm,
        {"op": "delete", "slot": 0},
        create(2 * GiB, 4 * MiB, s, 4 * MiB, slot=1),
        create(3 * GiB, 4 * MiB, s, 8 * MiB),
    )
    body = r.json()
    assert r.status_code == 503 and body["extra"]["index"] == 2 and body["errno_name"] == "ENOMEM"
    assert body["ioctl"] == "KVM_SET_USER_MEMORY_REGION2" and body["extra"]["cause"] == "HOST_RESOURCES_EXHAUSTED"
    record.port = record.port._real
    assert client.app.state.core.events.since(seq) == []
    assert slots(vm) == [0]
    probe = vm.c.post(
        f"{vm.base}/probe",
        json={
            "ops": [
                {"op": "read", "guest_phys_addr": GiB, "length": 8},  # slot 0 is back, same memory
                {"op": "read", "guest_phys_addr": 2 * GiB, "length": 8},  # slot 1 was removed again
            ]
        },
    ).json()["results"]
    assert bytes.fromhex(probe[0]["data_hex"]) == b"survives"
    assert probe[1]["exit"]["reason"] == "mmio"


def test_rolled_back_delete_keeps_converted_ranges(vm):
    g = vm.gmem(4 * MiB, flags=[])
    vm.put_slot(0, GiB, 4 * MiB, gmem=g)
    vm.c.post(f"{vm.base}/memory/convert", json={"guest_phys_addr": GiB, "size": MiB, "to": "shared"})
    r = batch(vm, {"op": "delete", "slot": 0}, {"op": "delete", "slot": 3})
    assert r.status_code == 404
    ranges = vm.c.get(f"{vm.base}/memory/attributes").json()["ranges"]
    assert [(x["size"], x["state"]) for x in ranges] == [(MiB, "shared"), (3 * MiB, "private")]


def test_all_32764_slots_are_created_listed_and_deleted_and_a_full_table_is_429_SLOT_BUDGET_EXHAUSTED(client, vm):
    total = client.get("/v1/capabilities").json()["max_memslots"]
    s = vm.shm(total * PAGE)
    for start in range(0, total, 4096):
        ops = [create(i * 2 * PAGE, PAGE, s, i * PAGE, slot=i) for i in range(start, min(start + 4096, total))]
        r = batch(vm, *ops)
        assert r.status_code == 200, r.text
    assert client.get(vm.base).json()["memslots"] == {"used": total, "free": 0, "max": total}
    extra = vm.put_slot(1, 1 << 40, PAGE, shm=s)  # id 1 is taken by a different slot: conflict
    assert extra.status_code == 409
    seen, cursor = 0, None
    while True:
        params = {"limit": 1000, **({"cursor": cursor} if cursor else {})}
        page = client.get(f"{vm.base}/memslots", params=params).json()
        seen += len(page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == total
    full = client.post(
        f"{vm.base}/memslots", json={"guest_phys_addr": 1 << 40, "memory_size": PAGE, "shared": {"shared_memory_id": s}}
    )
    assert full.status_code == 429 and full.json()["code"] == "SLOT_BUDGET_EXHAUSTED"
    auto = batch(vm, create(1 << 40, PAGE, s))  # a batch create without an id: the same answer
    assert auto.status_code == 429 and auto.json()["extra"]["cause"] == "SLOT_BUDGET_EXHAUSTED"
    probe = client.post(f"{vm.base}/probe", json={"ops": [{"op": "read", "guest_phys_addr": 0, "length": 8}]})
    assert probe.status_code == 429 and probe.json()["code"] == "SLOT_BUDGET_EXHAUSTED"
    for start in range(0, total, 4096):
        r = batch(vm, *[{"op": "delete", "slot": i} for i in range(start, min(start + 4096, total))])
        assert r.status_code == 200
    assert client.get(vm.base).json()["memslots"]["used"] == 0


def test_a_broken_rule_reaches_no_ioctl(client, vm):
    """Every op is validated before the first ioctl: a batch refused at its last op made none."""
    s = vm.shm(16 * MiB)
    record = client.app.state.core.registry.vms[vm.id]
    record.port = counting = FailingVMFd(record.port, fail_on_call=-1)
    r = batch(
        vm,
        create(GiB, 4 * MiB, s, slot=0),
        create(2 * GiB, 4 * MiB, s, 4 * MiB, slot=1),
        create(3 * GiB, 4 * MiB, s, 15 * MiB, slot=2),
    )  # past the end of the shared memory
    record.port = counting._real
    assert r.status_code == 422 and r.json()["extra"]["index"] == 2
    assert counting._calls == 0 and slots(vm) == []


def test_the_slot_quota_holds_inside_a_batch():
    with make_client(max_slots_per_vm=2) as c:
        vm = VMHelper(c, c.post("/v1/vms", json={}).json()["id"])
        s = vm.shm(16 * MiB)
        r = batch(vm, *[create(GiB + i * 4 * MiB, 4 * MiB, s, i * 4 * MiB) for i in range(3)])
        assert r.json()["extra"]["cause"] == "SLOT_QUOTA" and r.json()["extra"]["index"] == 2
        assert slots(vm) == []
