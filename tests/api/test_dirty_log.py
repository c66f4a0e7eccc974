"""Dirty logging: the pages a real guest wrote, and nothing else."""

from __future__ import annotations

from .conftest import GiB, MiB

PAGE = 4096


def pages_of(ranges: list[dict]) -> set[int]:
    return {(r["guest_phys_addr"] - GiB) // PAGE + i for r in ranges for i in range(r["size"] // PAGE)}


def test_dirty_log_holds_every_page_the_guest_wrote_and_no_page_it_never_touched(client, vm):
    """The rule (KVM_GET_DIRTY_LOG): every page the guest wrote since the previous fetch is
    dirty; a page it only read may be too. With TDP and no PML (AMD SVM, the lab) KVM maps a
    page writable on its first fault, read or write, and counts it dirty at that moment
    (``make_spte``); shadow paging (PVM) write-protects and counts only real writes. A page
    the guest never touched is never dirty, and a fetch re-arms the log."""
    s = vm.shm(2 * MiB)
    assert vm.put_slot(0, GiB, 2 * MiB, shm=s, flags=["log_dirty_pages"]).status_code == 201
    assert client.post(f"{vm.base}/memslots/0/dirty-log").json()["dirty_pages"] == 0
    client.post(
        f"{vm.base}/probe",
        json={
            "ops": [
                {"op": "write", "guest_phys_addr": GiB + 3 * PAGE + 10, "length": 1, "data_hex": "aa"},
                {"op": "write", "guest_phys_addr": GiB + 63 * PAGE, "length": 2 * PAGE, "data_hex": "bb" * 2 * PAGE},
                {"op": "read", "guest_phys_addr": GiB + 200 * PAGE, "length": 8},
            ]
        },
    )
    log = client.post(f"{vm.base}/memslots/0/dirty-log").json()
    written, read = {3, 63, 64}, {200}  # 63 and 64 straddle a 64-page word of the bitmap
    assert log["pages"] == 512
    assert written <= pages_of(log["ranges"]) <= written | read, log["ranges"]
    assert log["dirty_pages"] == len(pages_of(log["ranges"]))
    assert client.post(f"{vm.base}/memslots/0/dirty-log").json()["ranges"] == []  # fetching re-arms
    client.post(
        f"{vm.base}/probe", json={"ops": [{"op": "write", "guest_phys_addr": GiB, "length": 1, "data_hex": "01"}]}
    )
    raw = client.post(f"{vm.base}/memslots/0/dirty-log", params={"format": "bitmap"})
    assert raw.headers["content-type"] == "application/octet-stream" and raw.content[0] == 1 and len(raw.content) == 64


def test_the_dirty_log_of_a_slot_without_log_dirty_pages_is_409_DIRTY_LOGGING_OFF(client, vm):
    vm.put_slot(0, GiB, 2 * MiB, shm=vm.shm(2 * MiB))
    r = client.post(f"{vm.base}/memslots/0/dirty-log")
    assert r.status_code == 409 and r.json()["code"] == "DIRTY_LOGGING_OFF"
