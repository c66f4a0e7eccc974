"""Private <-> shared conversion and the attribute map, checked by a real guest."""

from __future__ import annotations

import errno

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .conftest import GiB, MiB, VMHelper

BASE = 4 * GiB
PAGE = 4096


def convert(vm: VMHelper, gpa: int, size: int, to: str, **kw):
    return vm.c.post(f"{vm.base}/memory/convert", json={"guest_phys_addr": gpa, "size": size, "to": to, **kw})


def attrs(vm: VMHelper, **params) -> list[tuple[int, int, str]]:
    body = vm.c.get(f"{vm.base}/memory/attributes", params=params).json()
    assert body["enforcement"] == "daemon"
    return [(r["guest_phys_addr"], r["size"], r["state"]) for r in body["ranges"]]


def probe(vm: VMHelper, *ops):
    r = vm.c.post(f"{vm.base}/probe", json={"ops": list(ops)})
    assert r.status_code == 200, r.text
    return r.json()["results"]


def read(gpa: int, length: int) -> dict:
    return {"op": "read", "guest_phys_addr": gpa, "length": length}


def write(gpa: int, data: bytes) -> dict:
    return {"op": "write", "guest_phys_addr": gpa, "length": len(data), "data_hex": data.hex()}


def events_since(client, seq: int) -> list:
    return client.app.state.core.events.since(seq)


def test_a_new_slot_starts_private_unless_its_guest_memfd_is_init_shared_or_it_has_no_private_part(vm):
    vm.put_slot(0, BASE, 4 * MiB, gmem=vm.gmem(4 * MiB, flags=[]), shm=vm.shm())
    vm.put_slot(1, BASE + 4 * MiB, 4 * MiB, gmem=vm.gmem(4 * MiB, flags=["mmap", "init_shared"]))
    vm.put_slot(2, BASE + 8 * MiB, 4 * MiB, shm=vm.shm())
    assert attrs(vm) == [(BASE, 4 * MiB, "private"), (BASE + 4 * MiB, 8 * MiB, "shared")]


def test_to_shared_punches_the_private_side_the_guest_reads_zeros(vm):
    vm.put_slot(0, BASE, 4 * MiB, gmem=vm.gmem())  # mmap + init_shared: guest_memfd-only slot
    assert convert(vm, BASE, 4 * MiB, "private").json()["discarded"] == []  # no shared backing to drop
    pattern = b"private-pattern!" * 4
    assert probe(vm, write(BASE + 0x5000, pattern))[0]["ok"]
    assert bytes.fromhex(probe(vm, read(BASE + 0x5000, len(pattern)))[0]["data_hex"]) == pattern
    r = convert(vm, BASE + 0x4000, 0x2000, "shared").json()
    assert r["changed"] == [
        {"guest_phys_addr": BASE + 0x4000, "size": 0x2000, "slot": 0, "from": "private", "to": "shared"}
    ]
    assert r["discarded"][0]["reason"] == "convert_to_shared" and r["discarded"][0]["offset"] == 0x4000
    seen = probe(vm, read(BASE + 0x5000, len(pattern)))[0]
    assert seen["ok"] and seen["data_hex"] == "00" * len(pattern) and seen["state"] == "shared"


def test_to_private_discards_the_shared_backing(client, vm):
    s = vm.shm()
    vm.put_slot(0, BASE, 4 * MiB, gmem=vm.gmem(4 * MiB, flags=[]), shm=s)  # starts private
    assert convert(vm, BASE, 4 * MiB, "shared").status_code == 200
    assert probe(vm, write(BASE + 0x1000, b"shared-data"))[0]["ok"]
    shm_map = client.app.state.core.registry.vms[vm.id].shms[s].port.mapping
    assert shm_map.read(0x1000, 11) == b"shared-data"  # the guest wrote the shared part
    r = convert(vm, BASE, 0x2000, "private").json()
    assert r["discarded"][0]["shared_memory_id"] == s and r["discarded"][0]["reason"] == "convert_to_private"
    assert shm_map.read(0x1000, 11) == bytes(11)
    assert probe(vm, read(BASE + 0x1000, 11))[0]["data_hex"] == "00" * 11


def test_idempotent_and_mixed_ranges_announce_only_changes(client, vm):
    vm.put_slot(0, BASE, 4 * MiB, gmem=vm.gmem(4 * MiB, flags=[]), shm=vm.shm())
    seq = client.app.state.core.events.seq
    same = convert(vm, BASE, 4 * MiB, "private").json()
    assert same["changed"] == [] and same["unchanged"] == [{"guest_phys_addr": BASE, "size": 4 * MiB}]
    assert events_since(client, seq) == []  # nothing changed, nothing announced
    convert(vm, BASE + MiB, MiB, "shared")
    seq = client.app.state.core.events.seq
    mixed = convert(vm, BASE, 4 * MiB, "shared").json()
    assert [(c["guest_phys_addr"], c["size"]) for c in mixed["changed"]] == [(BASE, MiB), (BASE + 2 * MiB, 2 * MiB)]
    assert mixed["unchanged"] == [{"guest_phys_addr": BASE + MiB, "size": MiB}]
    kinds = [e.type for e in events_since(client, seq)]
    assert kinds.count("memory.converted") == 2 and kinds.count("memory.invalidate_start") == 2
    assert attrs(vm) == [(BASE, 4 * MiB, "shared")]


def test_a_conversion_across_two_slots_changes_and_discards_in_each_slots_guest_memfd(vm):
    vm.put_slot(0, BASE, 2 * MiB, gmem=vm.gmem(2 * MiB, flags=[]), shm=vm.shm(2 * MiB))
    vm.put_slot(1, BASE + 2 * MiB, 2 * MiB, gmem=vm.gmem(2 * MiB, flags=[]), shm=vm.shm(2 * MiB))
    r = convert(vm, BASE + MiB, 2 * MiB, "shared").json()
    assert [(c["slot"], c["guest_phys_addr"], c["size"]) for c in r["changed"]] == [
        (0, BASE + MiB, MiB),
        (1, BASE + 2 * MiB, MiB),
    ]
    assert len({d["guest_memfd_id"] for d in r["discarded"]}) == 2
    assert attrs(vm) == [(BASE, MiB, "private"), (BASE + MiB, 2 * MiB, "shared"), (BASE + 3 * MiB, MiB, "private")]
    assert attrs(vm, gpa_start=BASE + MiB + PAGE, gpa_end=BASE + 2 * MiB) == [(BASE + MiB + PAGE, MiB - PAGE, "shared")]


@pytest.mark.parametrize(
    "gpa, size, to, status, code",
    [
        (BASE + 1, PAGE, "shared", 422, "RANGE_NOT_ALIGNED"),  # SA4
        (BASE, 0, "shared", 422, None),  # SA3: size 0 fails the schema
        (BASE, PAGE, "secret", 422, None),
        (BASE, 6 * MiB, "shared", 409, "RANGE_NOT_COVERED"),  # extra.gaps names the gap
        (BASE + 4 * MiB, PAGE, "private", 409, "NO_PRIVATE_PART"),
        (64 * GiB, PAGE, "shared", 409, "RANGE_NOT_COVERED"),
    ],
    ids=[
        "SA4_an_address_off_a_page_boundary_is_422_RANGE_NOT_ALIGNED",
        "SA3_size_0_fails_the_schema",
        "an_unknown_target_state_fails_the_schema",
        "a_range_over_a_gap_between_slots_is_409_RANGE_NOT_COVERED",
        "a_shared_only_slot_cannot_become_private_409_NO_PRIVATE_PART",
        "a_range_outside_every_slot_is_409_RANGE_NOT_COVERED",
    ],
)
def test_a_conversion_that_cannot_be_done_is_refused_with_the_rules_code(vm, gpa, size, to, status, code):
    vm.put_slot(0, BASE, 2 * MiB, gmem=vm.gmem(2 * MiB))
    vm.put_slot(1, BASE + 4 * MiB, 2 * MiB, shm=vm.shm(2 * MiB))
    r = convert(vm, gpa, size, to)
    assert r.status_code == status and (code is None or r.json()["code"] == code), r.text
    if size == 6 * MiB:
        assert r.json()["extra"]["gaps"] == [{"guest_phys_addr": BASE + 2 * MiB, "size": 2 * MiB}]


def test_deleting_a_slot_drops_its_converted_ranges_and_a_recreated_slot_starts_from_its_default(client, vm):
    g = vm.gmem(2 * MiB, flags=[])
    vm.put_slot(0, BASE, 2 * MiB, gmem=g)
    convert(vm, BASE, MiB, "shared")
    client.delete(f"{vm.base}/memslots/0")
    assert attrs(vm) == []
    vm.put_slot(0, BASE, 2 * MiB, gmem=g)
    assert attrs(vm) == [(BASE, 2 * MiB, "private")]


class FailingGuestMemfd:
    """Test double: a guest_memfd whose Nth punch-hole fails with EIO (the real kernel
    cannot be made to fail a page-aligned punch on demand). Everything else is real."""

    def __init__(self, real, fail_on_call: int):
        self._real = real
        self._calls = 0
        self._fail_on = fail_on_call

    def punch_hole(self, offset: int, length: int) -> None:
        self._calls += 1
        if self._calls == self._fail_on:
            raise OSError(errno.EIO, "injected failure")
        self._real.punch_hole(offset, length)

    def __getattr__(self, name):
        return getattr(self._real, name)


def test_a_conversion_failing_half_way_is_500_CONVERSION_PARTIAL_naming_exactly_what_changed(client, vm):
    g = vm.gmem(4 * MiB, flags=[])
    vm.put_slot(0, BASE, 4 * MiB, gmem=g)
    convert(vm, BASE + MiB, MiB, "shared")
    convert(vm, BASE + 3 * MiB, MiB // 2, "shared")  # still private: [0,1M) [2M,3M) [3.5M,4M)
    record = client.app.state.core.registry.vms[vm.id].gmems[g]
    record.port = FailingGuestMemfd(record.port, fail_on_call=2)
    seq = client.app.state.core.events.seq
    r = convert(vm, BASE, 4 * MiB, "shared")
    record.port = record.port._real
    body = r.json()
    assert r.status_code == 500 and body["code"] == "CONVERSION_PARTIAL" and body["errno"] == errno.EIO
    assert [(c["guest_phys_addr"], c["size"]) for c in body["extra"]["changed"]] == [(BASE, MiB)]
    assert body["extra"]["failed_at"] == {"guest_phys_addr": BASE + 2 * MiB, "size": MiB}
    # the map says exactly what was done
    assert attrs(vm) == [
        (BASE, 2 * MiB, "shared"),
        (BASE + 2 * MiB, MiB, "private"),
        (BASE + 3 * MiB, MiB // 2, "shared"),
        (BASE + 3 * MiB + MiB // 2, MiB // 2, "private"),
    ]
    # every announced invalidation is closed: done, failed (errno), never attempted (cancelled)
    kinds = [
        (
            e.type,
            e.data["gpa_ranges"][0]["guest_phys_addr"] - BASE if "gpa_ranges" in e.data else None,
            e.data.get("error"),
            e.data.get("cancelled"),
        )
        for e in events_since(client, seq)
    ]
    assert kinds == [
        ("memory.invalidate_start", 0, None, None),
        ("memory.invalidate_start", 2 * MiB, None, None),
        ("memory.invalidate_start", 3 * MiB + MiB // 2, None, None),
        ("memory.invalidate_end", 0, None, None),
        ("memory.converted", None, None, None),
        ("memory.invalidate_end", 2 * MiB, errno.EIO, None),
        ("memory.invalidate_end", 3 * MiB + MiB // 2, None, True),
    ]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(
        st.tuples(st.integers(0, 15), st.integers(1, 8), st.sampled_from(["private", "shared"])),
        min_size=1,
        max_size=12,
    )
)
def test_random_conversions_keep_the_map_equal_to_a_per_page_model(client, steps):
    vm_id = client.post("/v1/vms", json={}).json()["id"]
    vm = VMHelper(client, vm_id)
    try:
        unit = 16 * PAGE  # slot 0: pages 0..7, hole 8..9 (none), slot 1: pages 10..15
        vm.put_slot(0, BASE, 8 * unit, gmem=vm.gmem(8 * unit, flags=[]), shm=vm.shm(8 * unit))
        vm.put_slot(1, BASE + 10 * unit, 6 * unit, gmem=vm.gmem(6 * unit, flags=[]))
        model = {p: "private" for p in [*range(0, 8), *range(10, 16)]}
        for start, length, to in steps:
            pages = range(start, min(start + length, 16))
            r = convert(vm, BASE + start * unit, len(pages) * unit, to)
            if any(p not in model for p in pages):
                assert r.status_code == 409
                continue
            assert r.status_code == 200, r.text
            changed = {(c["guest_phys_addr"] - BASE) // unit for c in r.json()["changed"]}
            assert changed <= {p for p in pages if model[p] != to}
            model.update({p: to for p in pages})
        expected = []
        for p in sorted(model):
            if expected and expected[-1][0] + expected[-1][1] == BASE + p * unit and expected[-1][2] == model[p]:
                expected[-1] = (expected[-1][0], expected[-1][1] + unit, model[p])
            else:
                expected.append((BASE + p * unit, unit, model[p]))
        assert attrs(vm) == expected
    finally:
        client.delete(f"/v1/vms/{vm_id}")


def test_a_one_tib_range_converts_and_stays_one_run():
    from .conftest import make_client

    with make_client(max_bytes_per_vm=1 << 41, max_bytes_total=1 << 41) as client:  # the quota counts what a
        vm = VMHelper(client, client.post("/v1/vms", json={}).json()["id"])  # guest_memfd can commit: a TiB
        TiB = 1 << 40
        g = vm.gmem(TiB, flags=[])  # sparse: the kernel allocates nothing until touched
        assert vm.put_slot(0, TiB, TiB, gmem=g).status_code == 201
        r = convert(vm, TiB, TiB, "shared").json()
        assert r["changed"] == [{"guest_phys_addr": TiB, "size": TiB, "slot": 0, "from": "private", "to": "shared"}]
        assert r["discarded"][0]["length"] == TiB  # one punch of the whole guest_memfd range
        assert attrs(vm) == [(TiB, TiB, "shared")]
        assert client.get(vm.base).json()["private_bytes"] == 0
        convert(vm, TiB + 4096, 4096, "private")
        assert client.get(vm.base).json()["private_bytes"] == 4096
