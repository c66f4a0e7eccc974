"""The guest probe endpoint: a real vCPU, bounded requests, honest exits."""

from __future__ import annotations

import pytest

from memslotd.kvm import KVMSystem
from tests.helpers import fd_count

from .conftest import GiB, MiB

BASE = 4 * GiB


def probe(vm, *ops):
    return vm.c.post(f"{vm.base}/probe", json={"ops": list(ops)})


def test_a_probe_reads_and_writes_exactly_the_requested_bytes_of_a_shared_slot(client, vm):
    s = vm.shm(2 * MiB)
    vm.put_slot(0, 0x100000, 2 * MiB, shm=s)
    host = client.app.state.core.registry.vms[vm.id].shms[s].port.mapping
    host.write(0x10, b"hello")
    r = probe(
        vm,
        {"op": "read", "guest_phys_addr": 0x100010, "length": 5},
        {"op": "write", "guest_phys_addr": 0x100020, "length": 2, "data_hex": "abcd"},
    )
    results = r.json()["results"]
    assert results[0]["data_hex"] == b"hello".hex() and results[0]["state"] == "shared"
    assert results[1]["ok"] and host.read(0x20, 2) == b"\xab\xcd"
    assert host.read(0x1F, 1) == b"\x00" and host.read(0x22, 1) == b"\x00"  # exactly the requested bytes


def test_probe_reports_mmio_for_unmapped_gpa_and_keeps_working(vm):
    vm.put_slot(0, BASE, 2 * MiB, gmem=vm.gmem(2 * MiB))
    results = probe(
        vm,
        {"op": "read", "guest_phys_addr": 64 * GiB, "length": 8},
        {"op": "read", "guest_phys_addr": BASE, "length": 8},
    ).json()["results"]
    assert (
        results[0]["ok"] is False and results[0]["exit"]["reason"] == "mmio" and results[0]["exit"]["gpa"] == 64 * GiB
    )
    assert results[0]["state"] is None
    assert results[1]["ok"] and results[1]["data_hex"] == "00" * 8


def test_probe_reaches_the_top_of_the_guest_physical_address_space(vm):
    # The guest's MAXPHYADDR is the host's (46 bits on some of these machines, 48 in the lab):
    # read it from KVM, never pin it. Where it exceeds 47 bits the top lies above the canonical
    # split of the probe's identity map.
    with KVMSystem.open() as system:
        phys_bits = min(system.get_supported_cpuid().phys_bits, 48)
    high = (1 << phys_bits) - 2 * MiB
    vm.put_slot(0, high, 2 * MiB, shm=vm.shm(2 * MiB))
    assert (
        probe(
            vm,
            {"op": "write", "guest_phys_addr": high, "length": 3, "data_hex": "010203"},
            {"op": "read", "guest_phys_addr": high, "length": 3},
        ).json()["results"][1]["data_hex"]
        == "010203"
    )


def test_the_probe_windows_slot_exists_only_during_a_probe_and_probes_leak_no_fd(client, vm):
    vm.put_slot(0, BASE, 2 * MiB, gmem=vm.gmem(2 * MiB))
    probe(vm, {"op": "read", "guest_phys_addr": BASE, "length": 8})  # creates the vCPU and window once
    before = fd_count()
    for _ in range(5):
        assert probe(vm, {"op": "read", "guest_phys_addr": BASE, "length": 8}).status_code == 200
    assert fd_count() == before
    listing = client.get(f"{vm.base}/memslots").json()
    assert [i["slot"] for i in listing["items"]] == [0]  # the window's slot is gone again


READ = {"op": "read", "guest_phys_addr": BASE, "length": 8}


@pytest.mark.parametrize(
    "ops, code",
    [
        ([], None),
        ([READ] * 65, "PROBE_TOO_MANY_OPS"),
        ([{**READ, "length": (64 << 10) + 1}], None),
        ([{**READ, "guest_phys_addr": 0xFFE00000}], "PROBE_OUT_OF_BOUNDS"),
        ([{**READ, "guest_phys_addr": 1 << 48}], "PROBE_OUT_OF_BOUNDS"),
        ([{"op": "write", "guest_phys_addr": BASE, "length": 2}], "PROBE_DATA_LENGTH"),
        ([{"op": "write", "guest_phys_addr": BASE, "length": 2, "data_hex": "zz"}], None),
    ],
    ids=[
        "no_op_fails_the_schema",
        "more_than_64_ops_is_PROBE_TOO_MANY_OPS",
        "an_op_over_64_KiB_fails_the_schema",
        "the_probe_window_is_PROBE_OUT_OF_BOUNDS",
        "a_gpa_at_2_to_the_48_is_PROBE_OUT_OF_BOUNDS",
        "a_write_without_its_length_of_data_is_PROBE_DATA_LENGTH",
        "data_that_is_not_hex_fails_the_schema",
    ],
)
def test_a_probe_past_its_bounds_is_422_with_the_bounds_code(vm, ops, code):
    r = probe(vm, *ops)
    assert r.status_code == 422 and (code is None or r.json()["code"] == code), r.text


def test_probing_more_distinct_gib_regions_than_the_table_pool_holds_keeps_reading_real_memory(vm):
    """The probe maps each GiB region it touches with append-only page tables from a fixed pool
    (384 pages); touching 450 distinct regions must keep working (the pool is rebuilt), and the
    guest still reads real memory afterwards."""
    s = vm.shm(2 * MiB)
    vm.put_slot(0, BASE, 2 * MiB, shm=s)
    vm.c.post(
        f"{vm.base}/probe", json={"ops": [{"op": "write", "guest_phys_addr": BASE, "length": 2, "data_hex": "cafe"}]}
    )
    for first in range(0, 450, 64):
        ops = [
            {"op": "read", "guest_phys_addr": (8 + g) * GiB, "length": 1} for g in range(first, min(first + 64, 450))
        ]
        r = probe(vm, *ops)
        assert r.status_code == 200, r.text
        assert all(x["exit"]["reason"] == "mmio" for x in r.json()["results"])  # nothing maps those GPAs
    r = probe(vm, {"op": "read", "guest_phys_addr": BASE, "length": 2})
    assert r.json()["results"][0]["data_hex"] == "cafe"
