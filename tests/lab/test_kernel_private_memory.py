"""Kernel-enforced private memory, proven by a guest: the seed's two-part memslot, real
``KVM_EXIT_MEMORY_FAULT`` exits and real memory errors.

These need a kernel with memory attributes (a ``sw_protected`` VM type) and, for memory
errors, CONFIG_MEMORY_FAILURE: the lab kernel (``make lab-test``) has both. On a host
without them each test skips with the reason; inside the lab a missing feature fails.
"""

from __future__ import annotations

import errno

import pytest

from tests.api.conftest import GiB, MiB, make_client
from tests.kernel_facts import kernel_facts, require_feature

pytestmark = [pytest.mark.lab, pytest.mark.kvm]

GPA = 4 * GiB
PAGE = 4096
A, B = "a5" * 16, "b7" * 16


def private_vm(c) -> str:
    vm_type = kernel_facts().private_vm_type()
    require_feature(
        vm_type is not None,
        "this host offers no VM type with kernel-enforced private memory "
        f"(VM types: {list(kernel_facts().vm_types)}, none with KVM_MEMORY_ATTRIBUTE_PRIVATE)",
    )
    r = c.post("/v1/vms", json={"type": vm_type})
    assert r.status_code == 201, r.text
    assert r.json()["conversion_enforcement"] == "kernel"
    return str(r.json()["id"])


def probe(c, base: str, *ops: dict) -> list[dict]:
    r = c.post(f"{base}/probe", json={"ops": list(ops)})
    assert r.status_code == 200, r.text
    assert r.json()["enforcement"] == "kernel"
    return list(r.json()["results"])


def read_op(length: int = 16) -> dict:
    return {"op": "read", "guest_phys_addr": GPA, "length": length}


def states(c, base: str) -> list[tuple[int, int, str]]:
    body = c.get(f"{base}/memory/attributes").json()
    assert body["enforcement"] == "kernel"
    return [(r["guest_phys_addr"], r["size"], r["state"]) for r in body["ranges"]]


def test_two_part_memslot_guest_sees_the_side_the_kernel_attribute_selects():
    """The seed's memslot: shared part (shared memory) + private part (guest_memfd without mmap).
    The guest reads the private side while private and the shared side once shared; conversion
    discards the stale side (QEMU's order); the host never reads the private bytes."""
    with make_client() as c:
        base = f"/v1/vms/{private_vm(c)}"
        shm = c.post(f"{base}/shared-memory", json={"size": 2 * MiB}).json()["id"]
        gmem = c.post(f"{base}/guest-memfds", json={"size": 2 * MiB}).json()["id"]
        slot = c.put(
            f"{base}/memslots/0",
            json={
                "guest_phys_addr": GPA,
                "memory_size": 2 * MiB,
                "shared": {"shared_memory_id": shm},
                "private": {"guest_memfd_id": gmem},
            },
        )
        assert slot.status_code == 201, slot.text
        assert slot.json()["guest_backing"] == "per_attribute"
        assert states(c, base) == [(GPA, 2 * MiB, "private")]  # guest_memfd RAM starts private (as QEMU's)

        assert c.post(f"{base}/shared-memory/{shm}/bytes", json={"offset": 0, "data_hex": A}).status_code == 200
        wrote, seen = probe(c, base, {"op": "write", "guest_phys_addr": GPA, "length": 16, "data_hex": B}, read_op())
        assert wrote["ok"] and (seen["data_hex"], seen["state"]) == (B, "private")
        host_shm = c.get(f"{base}/shared-memory/{shm}/bytes", params={"offset": 0, "length": 16}).json()
        assert host_shm["data_hex"] == A  # a private write never reaches userspace memory
        assert host_shm["backs"] == [{"slot": 0, "guest_phys_addr": GPA, "size": 16, "state": "private"}]
        refused = c.get(f"{base}/guest-memfds/{gmem}/bytes", params={"offset": 0, "length": 16})
        assert refused.status_code == 409 and refused.json()["code"] == "GMEM_NOT_MAPPABLE"  # the host cannot read B

        to_shared = c.post(f"{base}/memory/convert", json={"guest_phys_addr": GPA, "size": PAGE, "to": "shared"}).json()
        assert to_shared["enforcement"] == "kernel"
        assert to_shared["discarded"] == [
            {
                "reason": "convert_to_shared",
                "guest_memfd_id": gmem,
                "shared_memory_id": None,
                "offset": 0,
                "length": PAGE,
                "guest_phys_addr": GPA,
                "size": PAGE,
            }
        ]
        assert states(c, base) == [(GPA, PAGE, "shared"), (GPA + PAGE, 2 * MiB - PAGE, "private")]
        assert probe(c, base, read_op())[0]["data_hex"] == A  # the kernel now routes the page to userspace_addr

        c.post(f"{base}/memory/convert", json={"guest_phys_addr": GPA, "size": PAGE, "to": "private"})
        assert states(c, base) == [(GPA, 2 * MiB, "private")]
        assert probe(c, base, read_op())[0]["data_hex"] == "00" * 16  # B was discarded with the punch
        assert (
            c.get(f"{base}/shared-memory/{shm}/bytes", params={"offset": 0, "length": 16}).json()["data_hex"]
            == "00" * 16
        )  # and A with the shared side's discard


def test_probe_reports_efault_for_a_shared_page_without_shared_backing():
    """A slot with only a private part, converted to shared: the guest's access finds no
    userspace memory. KVM_RUN fails with EFAULT and (x86 ``kvm_handle_error_pfn``) fills in no
    memory-fault details: the probe reports exit ``fault`` with the errno, ``memory.fault``
    names the access's range, and nothing answers 500."""
    with make_client() as c:
        base = f"/v1/vms/{private_vm(c)}"
        gmem = c.post(f"{base}/guest-memfds", json={"size": 2 * MiB}).json()["id"]
        c.put(
            f"{base}/memslots/0",
            json={"guest_phys_addr": GPA, "memory_size": 2 * MiB, "private": {"guest_memfd_id": gmem}},
        )
        assert probe(c, base, read_op(8))[0]["ok"]  # private: served from the guest_memfd
        c.post(f"{base}/memory/convert", json={"guest_phys_addr": GPA, "size": PAGE, "to": "shared"})
        seq = c.app.state.core.events.seq
        result = probe(c, base, read_op(8))[0]
        assert (result["ok"], result["state"]) == (False, "shared")
        assert result["exit"] == {
            "reason": "fault",
            "gpa": None,
            "size": None,
            "flags": None,
            "is_write": None,
            "errno": errno.EFAULT,
            "errno_name": "EFAULT",
        }
        faults = [e.data for e in c.app.state.core.events.since(seq) if e.type == "memory.fault"]
        assert [(f["gpa"], f["size"], f["private"], f["errno_name"], f["exit_reason"]) for f in faults] == [
            (GPA, 8, False, "EFAULT", "fault")
        ]
        assert probe(c, base, {**read_op(8), "guest_phys_addr": GPA + PAGE})[0]["ok"]  # the vCPU runs on
