"""Batch memslot operations and the kernel's full slot budget."""

from __future__ import annotations

import errno

from .conftest import GiB, MiB

PAGE = 4096


def batch(vm, *ops):
    return vm.c.post(f"{vm.base}/memslots:batch", json={"ops": list(ops)})


def create(gpa: int, size: int, shm: str, offset: int = 0, slot: int | None = None) -> dict:
    op = {"op": "create", "guest_phys_addr": gpa, "memory_size": size, "shared": {"shared_memory_id": shm, "offset": offset}}
    return op if slot is None else {**op, "slot": slot}


def slots(vm) -> list[int]:
    return [s["slot"] for s in vm.c.get(f"{vm.base}/memslots", params={"limit": 1000}).json()["items"]]


def test_ops_apply_in_order_and_events_follow_the_commit(client, vm):
    s = vm.shm(16 * MiB)
    seq = client.app.state.core.events.seq
    r = batch(vm, create(0, 4 * MiB, s), create(4 * MiB, 4 * MiB, s, 4 * MiB, slot=9), {"op": "delete", "slot": 0},
              create(0, 4 * MiB, s))
    assert r.status_code == 200, r.text
    assert [(x["op"], x["slot"], x["result"]) for x in r.json()["results"]] == [
        ("create", 0, "created"), ("create", 9, "created"), ("delete", 0, "deleted"), ("create", 0, "created")]
    assert slots(vm) == [0, 9]
    kinds = [(e.type, e.data.get("slot")) for e in client.app.state.core.events.since(seq)]
    assert kinds == [("memslot.created", 0), ("memslot.created", 9), ("memory.invalidate_start", None),
                     ("memory.invalidate_end", None), ("memslot.deleted", 0), ("memslot.created", 0)]
    again = batch(vm, create(0, 4 * MiB, s, slot=0))
    assert again.json()["results"][0]["result"] == "unchanged"


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
    kernel cannot be made to run out of memory on demand). Every other call is real."""

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
    r = batch(vm, {"op": "delete", "slot": 0}, create(2 * GiB, 4 * MiB, s, 4 * MiB, slot=1), create(3 * GiB, 4 * MiB, s, 8 * MiB))
    body = r.json()
    assert r.status_code == 503 and body["extra"]["index"] == 2 and body["errno_name"] == "ENOMEM"
    record.port = record.port._real
    assert client.app.state.core.events.since(seq) == []
    assert slots(vm) == [0]
    probe = vm.c.post(f"{vm.base}/probe", json={"ops": [
        {"op": "read", "guest_phys_addr": GiB, "length": 8},        # slot 0 is back, same memory
        {"op": "read", "guest_phys_addr": 2 * GiB, "length": 8},    # slot 1 was removed again
    ]}).json()["results"]
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


def test_all_32764_slots_created_listed_and_deleted(client, vm):
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
    full = client.post(f"{vm.base}/memslots", json={"guest_phys_addr": 1 << 40, "memory_size": PAGE,
                                                    "shared": {"shared_memory_id": s}})
    assert full.status_code == 429 and full.json()["code"] in ("SLOT_BUDGET_EXHAUSTED", "SLOT_QUOTA")
    probe = client.post(f"{vm.base}/probe", json={"ops": [{"op": "read", "guest_phys_addr": 0, "length": 8}]})
    assert probe.status_code == 429 and probe.json()["code"] == "SLOT_BUDGET_EXHAUSTED"
    for start in range(0, total, 4096):
        r = batch(vm, *[{"op": "delete", "slot": i} for i in range(start, min(start + 4096, total))])
        assert r.status_code == 200
    assert client.get(vm.base).json()["memslots"]["used"] == 0
