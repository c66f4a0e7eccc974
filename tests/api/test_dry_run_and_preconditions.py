"""?dry_run=true checks every rule without touching the kernel; ETag / If-Match guard changes."""

from __future__ import annotations

from .conftest import GiB, MiB


def test_a_dry_run_put_checks_every_rule_and_creates_nothing_in_the_daemon_or_the_kernel(client, vm):
    s = vm.shm(4 * MiB)
    seq = client.app.state.core.events.seq
    body = {"guest_phys_addr": GiB, "memory_size": 4 * MiB, "shared": {"shared_memory_id": s}}
    r = client.put(f"{vm.base}/memslots/3", json=body, params={"dry_run": "true"})
    assert r.status_code == 200 and r.headers["memslotd-dry-run"] == "true" and r.json()["slot"] == 3
    assert "location" not in r.headers and "etag" not in r.headers  # nothing exists to point at
    assert client.get(f"{vm.base}/memslots").json()["total"] == 0 and client.app.state.core.events.since(seq) == []
    probe = client.post(f"{vm.base}/probe", json={"ops": [{"op": "read", "guest_phys_addr": GiB, "length": 8}]})
    assert probe.json()["results"][0]["exit"]["reason"] == "mmio"  # the kernel has no slot there
    bad = client.put(f"{vm.base}/memslots/3", json={**body, "memory_size": 8 * MiB}, params={"dry_run": "true"})
    assert bad.status_code == 422 and bad.json()["code"] == "RANGE_OUTSIDE_BACKING"


def test_a_dry_run_delete_is_204_and_the_slot_stays(client, vm):
    vm.put_slot(0, 0, 4 * MiB, shm=vm.shm(8 * MiB))
    r = client.delete(f"{vm.base}/memslots/0", params={"dry_run": "true"})
    assert r.status_code == 204 and r.headers["memslotd-dry-run"] == "true"
    assert client.get(f"{vm.base}/memslots/0").status_code == 200


def test_a_dry_run_batch_answers_every_op_applies_none_and_names_the_index_that_would_fail(client, vm):
    s = vm.shm(8 * MiB)
    vm.put_slot(0, 0, 4 * MiB, shm=s)
    ops = [
        {"op": "delete", "slot": 0},
        {
            "op": "create",
            "slot": 1,
            "guest_phys_addr": 0,
            "memory_size": 4 * MiB,
            "shared": {"shared_memory_id": s, "offset": 4 * MiB},
        },
    ]
    r = client.post(f"{vm.base}/memslots:batch", json={"ops": ops}, params={"dry_run": "true"})
    assert r.status_code == 200 and [x["result"] for x in r.json()["results"]] == ["deleted", "created"]
    assert [x["slot"] for x in client.get(f"{vm.base}/memslots").json()["items"]] == [0]  # nothing applied
    failing = client.post(f"{vm.base}/memslots:batch", json={"ops": ops[1:]}, params={"dry_run": "true"})
    assert failing.status_code == 409 and failing.json()["extra"]["index"] == 0  # overlaps slot 0, which stays


def test_a_put_or_delete_with_an_if_match_etag_a_change_outdated_is_412_PRECONDITION_FAILED(client, vm):
    s = vm.shm(4 * MiB)
    created = vm.put_slot(0, 0, 4 * MiB, shm=s)
    etag = created.headers["etag"]
    assert client.get(f"{vm.base}/memslots/0").headers["etag"] == etag
    body = {"guest_phys_addr": GiB, "memory_size": 4 * MiB, "shared": {"shared_memory_id": s}}
    moved = client.put(f"{vm.base}/memslots/0", json=body, headers={"if-match": etag})
    assert moved.status_code == 200 and moved.headers["etag"] != etag
    stale = client.put(f"{vm.base}/memslots/0", json={**body, "guest_phys_addr": 2 * GiB}, headers={"if-match": etag})
    assert stale.status_code == 412 and stale.json()["code"] == "PRECONDITION_FAILED"
    assert client.delete(f"{vm.base}/memslots/0", headers={"if-match": etag}).status_code == 412
    assert client.delete(f"{vm.base}/memslots/0", headers={"if-match": moved.headers["etag"]}).status_code == 204


def test_a_put_with_if_none_match_star_is_412_on_an_existing_slot_and_creates_a_missing_one(client, vm):
    s = vm.shm(4 * MiB)
    body = {"guest_phys_addr": GiB, "memory_size": 4 * MiB, "shared": {"shared_memory_id": s}}
    first = vm.put_slot(0, GiB, 4 * MiB, shm=s)
    create_only = client.put(f"{vm.base}/memslots/0", json=body, headers={"if-none-match": "*"})
    assert create_only.status_code == 412
    assert client.delete(f"{vm.base}/memslots/0").status_code == 204
    recreated = client.put(f"{vm.base}/memslots/0", json=body, headers={"if-none-match": "*"})
    assert recreated.status_code == 201 and recreated.headers["etag"] != first.headers["etag"]  # same body, new slot


def _dry(r):
    assert r.headers.get("memslotd-dry-run") == "true", (r.status_code, r.text)
    return r


def _state(client):
    """Everything a dry run must leave alone: the event log and every object."""
    vms = client.get("/v1/vms").json()["items"]
    objects = {
        vm["id"]: (
            client.get(f"/v1/vms/{vm['id']}/guest-memfds").json(),
            client.get(f"/v1/vms/{vm['id']}/shared-memory").json(),
            client.get(f"/v1/vms/{vm['id']}/memslots").json(),
            client.get(f"/v1/vms/{vm['id']}/memory/attributes").json(),
        )
        for vm in vms
    }
    return client.app.state.core.events.seq, vms, objects


def test_dry_run_creates_answer_what_would_be_made_and_make_nothing(client, vm):
    shm = vm.shm()
    before = _state(client)
    made = _dry(client.post("/v1/vms", json={"name": "planned"}, params={"dry_run": "true"}))
    assert made.status_code == 200 and "location" not in made.headers
    assert made.json()["name"] == "planned" and "id" not in made.json() and made.json()["memslots"]["used"] == 0
    g = _dry(
        client.post(f"{vm.base}/guest-memfds", json={"size": 4 * MiB, "flags": ["mmap"]}, params={"dry_run": "true"})
    )
    assert g.status_code == 200 and g.json() == {"name": None, "size": 4 * MiB, "flags": ["mmap"], "bindings": []}
    s = _dry(client.post(f"{vm.base}/shared-memory", json={"size": 4 * MiB}, params={"dry_run": "true"}))
    assert s.status_code == 200 and s.json()["size"] == 4 * MiB and "id" not in s.json()
    post = _dry(
        client.post(
            f"{vm.base}/memslots",
            params={"dry_run": "true"},
            json={"guest_phys_addr": 0, "memory_size": 4 * MiB, "shared": {"shared_memory_id": shm}},
        )
    )
    assert post.status_code == 200 and post.json()["slot"] == 0 and "location" not in post.headers
    assert _state(client) == before
    # the rules still hold in a dry run
    assert client.post(f"{vm.base}/guest-memfds", json={"size": 4095}, params={"dry_run": "true"}).status_code == 422


def test_dry_run_of_a_vm_delete_says_what_it_would_release(client, vm):
    g, s = vm.gmem(4 * MiB), vm.shm(4 * MiB)
    vm.put_slot(0, 0, 4 * MiB, gmem=g)
    vm.put_slot(1, GiB, 4 * MiB, shm=s)
    before = _state(client)
    r = _dry(client.delete(vm.base, params={"dry_run": "true"}))
    assert r.status_code == 200
    body = r.json()
    assert body["memslots"] == [0, 1] and body["guest_memfds"] == [g] and body["shared_memory"] == [s]
    assert body["guest_memfd_bytes"] == body["shared_memory_bytes"] == 4 * MiB and body["slot_bytes"] == 8 * MiB
    assert body["invalidations"][0]["gpa_ranges"] == [{"slot": 0, "guest_phys_addr": 0, "size": 4 * MiB}]
    assert _state(client) == before
    assert client.delete("/v1/vms/vm-0123456789ab", params={"dry_run": "true"}).json()["code"] == "VM_NOT_FOUND"


def test_dry_run_convert_reports_changes_and_discards_and_keeps_the_data(client, vm):
    g = vm.gmem(4 * MiB)
    vm.put_slot(0, GiB, 4 * MiB, gmem=g)  # mmap + init_shared: starts shared
    written = client.post(
        f"{vm.base}/probe", json={"ops": [{"op": "write", "guest_phys_addr": GiB, "length": 2, "data_hex": "beef"}]}
    )
    assert written.json()["results"][0]["ok"]
    assert (
        client.post(
            f"{vm.base}/memory/convert", json={"guest_phys_addr": GiB, "size": 2 * MiB, "to": "private"}
        ).status_code
        == 200
    )
    before = _state(client)
    body = {"guest_phys_addr": GiB, "size": 4 * MiB, "to": "shared"}
    r = _dry(client.post(f"{vm.base}/memory/convert", json=body, params={"dry_run": "true"}))
    assert r.status_code == 200
    plan = r.json()
    assert plan["changed"] == [{"guest_phys_addr": GiB, "size": 2 * MiB, "slot": 0, "from": "private", "to": "shared"}]
    assert plan["unchanged"] == [{"guest_phys_addr": GiB + 2 * MiB, "size": 2 * MiB}]
    assert plan["discarded_bytes"] == 2 * MiB and plan["discarded"][0]["guest_memfd_id"] == g
    assert _state(client) == before
    read = client.post(f"{vm.base}/probe", json={"ops": [{"op": "read", "guest_phys_addr": GiB, "length": 2}]})
    assert read.json()["results"][0]["data_hex"] == "beef"  # the guest_memfd was not punched
    real = client.post(f"{vm.base}/memory/convert", json=body)
    assert {k: v for k, v in real.json().items()} == plan  # the dry run said exactly what happened
    bad = client.post(f"{vm.base}/memory/convert", json={**body, "size": 8 * MiB}, params={"dry_run": "true"})
    assert bad.status_code == 409 and bad.json()["code"] == "RANGE_NOT_COVERED"


def test_dry_run_of_object_operations_changes_nothing(client, vm):
    g, s = vm.gmem(4 * MiB), vm.shm(4 * MiB)
    before = _state(client)
    for method, path, body in (
        ("DELETE", f"/guest-memfds/{g}", None),
        ("DELETE", f"/shared-memory/{s}", None),
        ("POST", f"/guest-memfds/{g}/allocate", {"offset": 0, "length": 4096}),
    ):
        r = _dry(client.request(method, vm.base + path, json=body, params={"dry_run": "true"}))
        assert r.status_code == 204, (path, r.text)
    punch = _dry(
        client.post(
            f"{vm.base}/guest-memfds/{g}/punch-hole", json={"offset": 0, "length": 4096}, params={"dry_run": "true"}
        )
    )
    assert punch.status_code == 200 and punch.json()["length"] == 4096
    assert _state(client) == before


def test_dry_run_is_refused_where_it_means_nothing(client, vm):
    g = vm.gmem(4 * MiB)
    for method, path, body in (
        ("POST", "/probe", {"ops": [{"op": "read", "guest_phys_addr": 0, "length": 1}]}),
        ("POST", f"/guest-memfds/{g}/inject-error", {"offset": 0}),
        ("POST", "/memslots/0/dirty-log", None),
    ):
        r = client.request(method, vm.base + path, json=body, params={"dry_run": "true"})
        assert r.status_code == 422 and r.json()["code"] == "DRY_RUN_UNSUPPORTED", (path, r.text)
        assert "dry_run" in r.json()["detail"] or "dry-run" in r.json()["detail"]
