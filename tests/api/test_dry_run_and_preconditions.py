"""?dry_run=true checks every rule without touching the kernel; ETag / If-Match guard changes."""

from __future__ import annotations

from .conftest import GiB, MiB


def test_dry_run_put_validates_but_creates_nothing(client, vm):
    s = vm.shm(4 * MiB)
    seq = client.app.state.core.events.seq
    body = {"guest_phys_addr": GiB, "memory_size": 4 * MiB, "shared": {"shared_memory_id": s}}
    r = client.put(f"{vm.base}/memslots/3", json=body, params={"dry_run": "true"})
    assert r.status_code == 201 and r.headers["memslotd-dry-run"] == "true" and r.json()["slot"] == 3
    assert client.get(f"{vm.base}/memslots").json()["total"] == 0 and client.app.state.core.events.since(seq) == []
    probe = client.post(f"{vm.base}/probe", json={"ops": [{"op": "read", "guest_phys_addr": GiB, "length": 8}]})
    assert probe.json()["results"][0]["exit"]["reason"] == "mmio"  # the kernel has no slot there
    bad = client.put(f"{vm.base}/memslots/3", json={**body, "memory_size": 8 * MiB}, params={"dry_run": "true"})
    assert bad.status_code == 422 and bad.json()["code"] == "RANGE_OUTSIDE_BACKING"


def test_dry_run_delete_and_batch(client, vm):
    s = vm.shm(8 * MiB)
    vm.put_slot(0, 0, 4 * MiB, shm=s)
    r = client.delete(f"{vm.base}/memslots/0", params={"dry_run": "true"})
    assert r.status_code == 204 and r.headers["memslotd-dry-run"] == "true"
    assert client.get(f"{vm.base}/memslots/0").status_code == 200
    ops = [{"op": "delete", "slot": 0},
           {"op": "create", "slot": 1, "guest_phys_addr": 0, "memory_size": 4 * MiB,
            "shared": {"shared_memory_id": s, "offset": 4 * MiB}}]
    r = client.post(f"{vm.base}/memslots:batch", json={"ops": ops}, params={"dry_run": "true"})
    assert r.status_code == 200 and [x["result"] for x in r.json()["results"]] == ["deleted", "created"]
    assert [x["slot"] for x in client.get(f"{vm.base}/memslots").json()["items"]] == [0]  # nothing applied
    failing = client.post(f"{vm.base}/memslots:batch", json={"ops": ops[1:]}, params={"dry_run": "true"})
    assert failing.status_code == 409 and failing.json()["extra"]["index"] == 0  # overlaps slot 0, which stays


def test_etags_and_conditional_requests(client, vm):
    s = vm.shm(4 * MiB)
    created = vm.put_slot(0, 0, 4 * MiB, shm=s)
    etag = created.headers["etag"]
    assert client.get(f"{vm.base}/memslots/0").headers["etag"] == etag
    body = {"guest_phys_addr": GiB, "memory_size": 4 * MiB, "shared": {"shared_memory_id": s}}
    moved = client.put(f"{vm.base}/memslots/0", json=body, headers={"if-match": etag})
    assert moved.status_code == 200 and moved.headers["etag"] != etag
    stale = client.put(f"{vm.base}/memslots/0", json={**body, "guest_phys_addr": 2 * GiB}, headers={"if-match": etag})
    assert stale.status_code == 412 and stale.json()["code"] == "PRECONDITION_FAILED"
    create_only = client.put(f"{vm.base}/memslots/0", json=body, headers={"if-none-match": "*"})
    assert create_only.status_code == 412
    assert client.delete(f"{vm.base}/memslots/0", headers={"if-match": etag}).status_code == 412
    assert client.delete(f"{vm.base}/memslots/0", headers={"if-match": moved.headers["etag"]}).status_code == 204
    recreated = client.put(f"{vm.base}/memslots/0", json=body, headers={"if-none-match": "*"})
    assert recreated.status_code == 201 and recreated.headers["etag"] != moved.headers["etag"]
