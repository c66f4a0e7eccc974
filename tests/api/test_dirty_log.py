"""Dirty logging: the pages a real guest wrote, and nothing else."""

from __future__ import annotations

from .conftest import GiB, MiB

PAGE = 4096


def test_dirty_log_reports_exactly_what_the_guest_wrote(client, vm):
    s = vm.shm(2 * MiB)
    assert vm.put_slot(0, GiB, 2 * MiB, shm=s, flags=["log_dirty_pages"]).status_code == 201
    assert client.post(f"{vm.base}/memslots/0/dirty-log").json()["dirty_pages"] == 0
    client.post(f"{vm.base}/probe", json={"ops": [
        {"op": "write", "guest_phys_addr": GiB + 3 * PAGE + 10, "length": 1, "data_hex": "aa"},
        {"op": "write", "guest_phys_addr": GiB + 63 * PAGE, "length": 2 * PAGE, "data_hex": "bb" * 2 * PAGE},
        {"op": "read", "guest_phys_addr": GiB + 200 * PAGE, "length": 8},
    ]})
    log = client.post(f"{vm.base}/memslots/0/dirty-log").json()
    assert log["pages"] == 512 and log["dirty_pages"] == 3
    assert log["ranges"] == [{"guest_phys_addr": GiB + 3 * PAGE, "size": PAGE},
                             {"guest_phys_addr": GiB + 63 * PAGE, "size": 2 * PAGE}]  # across a 64-page word
    assert client.post(f"{vm.base}/memslots/0/dirty-log").json()["ranges"] == []  # fetching re-arms
    client.post(f"{vm.base}/probe", json={"ops": [{"op": "write", "guest_phys_addr": GiB, "length": 1, "data_hex": "01"}]})
    raw = client.post(f"{vm.base}/memslots/0/dirty-log", params={"format": "bitmap"})
    assert raw.headers["content-type"] == "application/octet-stream" and raw.content[0] == 1 and len(raw.content) == 64


def test_dirty_log_needs_the_flag(client, vm):
    vm.put_slot(0, GiB, 2 * MiB, shm=vm.shm(2 * MiB))
    r = client.post(f"{vm.base}/memslots/0/dirty-log")
    assert r.status_code == 409 and r.json()["code"] == "DIRTY_LOGGING_OFF"
