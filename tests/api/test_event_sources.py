"""Event sources: what each operation announces, in the right order around the real kernel call."""

from __future__ import annotations

import errno

import pytest

from tests.kernel_facts import EHWPOISON

from .conftest import GiB, MiB, make_client


class RecordingPort:
    """Pass-through spy (not a fake): calls the real kernel object, and records the
    event log's last seq at the moment the kernel call runs."""

    def __init__(self, real, log, calls: list[tuple[str, int]]):
        self._real, self._log, self._calls = real, log, calls

    def __getattr__(self, name):
        attr = getattr(self._real, name)
        if name in ("punch_hole", "delete_user_memory_region", "close"):

            def spy(*args):
                self._calls.append((name, self._log.seq))
                return attr(*args)

            return spy
        return attr


def _brackets(events, calls):
    starts = [e for e in events if e.type == "memory.invalidate_start"]
    ends = [e for e in events if e.type == "memory.invalidate_end"]
    assert len(starts) == len(ends) == len(calls) >= 1
    for start, end, (_, seq_at_call) in zip(starts, ends, calls, strict=True):
        assert start.seq <= seq_at_call < end.seq, "invalidate_start < kernel call < invalidate_end"
        assert start.data == end.data, "same ranges on both sides"


@pytest.mark.parametrize("operation", ["punch", "convert", "slot_delete", "gmem_close"])
def test_invalidate_brackets_every_discard(client, vm, operation):
    core = client.app.state.core
    record = core.registry.vms[vm.id]
    g = vm.gmem(4 * MiB, flags=[])
    if operation != "gmem_close":
        assert vm.put_slot(0, 4 * GiB, 4 * MiB, gmem=g).status_code == 201
    calls: list[tuple[str, int]] = []
    record.gmems[g].port = RecordingPort(record.gmems[g].port, core.events, calls)
    record.port = RecordingPort(record.port, core.events, calls)
    seq = core.events.seq
    if operation == "punch":
        client.post(f"{vm.base}/guest-memfds/{g}/punch-hole", json={"offset": MiB, "length": MiB})
    elif operation == "convert":
        client.post(f"{vm.base}/memory/convert", json={"guest_phys_addr": 4 * GiB, "size": MiB, "to": "shared"})
    elif operation == "slot_delete":
        client.delete(f"{vm.base}/memslots/0")
    else:
        client.delete(f"{vm.base}/guest-memfds/{g}")
    events = core.events.since(seq)
    _brackets(events, calls)
    start = next(e for e in events if e.type == "memory.invalidate_start")
    if operation != "gmem_close":  # file range AND the GPA range of the bound slot
        assert start.data["guest_memfd_id"] == g and start.data["gpa_ranges"][0]["slot"] == 0
    record.port = record.port._real


def test_each_create_and_the_vm_delete_announce_every_object_by_its_id_in_seq_order(client, vm):
    core = client.app.state.core
    seq = core.events.seq
    g, s = vm.gmem(2 * MiB), vm.shm(2 * MiB)
    assert vm.put_slot(0, 4 * GiB, 2 * MiB, gmem=g).status_code == 201
    client.delete(vm.base)
    events = core.events.since(seq)
    assert [e.seq for e in events] == list(range(seq + 1, seq + 1 + len(events)))  # the next seqs, none skipped
    assert {e.vm_id for e in events} == {vm.id}

    def subject(e):  # what the event is about: an object id, a slot, or the VM itself
        return e.data.get("id", e.data.get("slot"))

    assert [(e.type, subject(e)) for e in events[:3]] == [
        ("guest_memfd.created", g),
        ("shared_memory.created", s),
        ("memslot.created", 0),
    ]
    assert [(e.type, subject(e)) for e in events[-4:]] == [
        ("memslot.deleted", 0),
        ("guest_memfd.deleted", g),
        ("shared_memory.deleted", s),
        ("vm.deleted", None),
    ]


def test_memory_error_injection_is_off_by_default(vm):
    r = vm.c.post(f"{vm.base}/guest-memfds/{vm.gmem()}/inject-error", json={"offset": 0})
    assert r.status_code == 403


def test_memory_error_injection_is_real_or_honestly_refused():
    with make_client(enable_memory_error_injection=True) as c:
        caps = c.get("/v1/capabilities").json()
        vm_id = c.post("/v1/vms", json={}).json()["id"]
        base = f"/v1/vms/{vm_id}"
        plain = c.post(f"{base}/guest-memfds", json={"size": 2 * MiB}).json()["id"]
        assert (
            c.post(f"{base}/guest-memfds/{plain}/inject-error", json={"offset": 0}).json()["code"]
            == "GMEM_NOT_MAPPABLE"
        )
        g = c.post(f"{base}/guest-memfds", json={"size": 2 * MiB, "flags": ["mmap", "init_shared"]}).json()["id"]
        c.put(
            f"{base}/memslots/0",
            json={"guest_phys_addr": 4 * GiB, "memory_size": 2 * MiB, "private": {"guest_memfd_id": g}},
        )
        seq = c.app.state.core.events.seq
        r = c.post(f"{base}/guest-memfds/{g}/inject-error", json={"offset": 4096})
        if not caps["memory_failure"]:  # this host: no CONFIG_MEMORY_FAILURE, the kernel says EINVAL
            assert r.status_code == 501 and r.json()["code"] == "CAPABILITY_MISSING"
            assert r.json()["errno"] == errno.EINVAL and r.json()["ioctl"] == "madvise(MADV_HWPOISON)"
            assert [e.type for e in c.app.state.core.events.since(seq)] == []  # nothing pretended
            return
        assert r.status_code == 200, r.text  # a host with memory-failure handling
        assert r.json()["gpa_ranges"] == [{"slot": 0, "guest_phys_addr": 4 * GiB + 4096, "size": 4096}]
        assert [e.type for e in c.app.state.core.events.since(seq)] == ["memory.error"]
        seen = c.post(f"{base}/probe", json={"ops": [{"op": "read", "guest_phys_addr": 4 * GiB + 4096, "length": 8}]})
        exit_ = seen.json()["results"][0]["exit"]
        assert exit_ is not None and exit_["errno"] == EHWPOISON
        c.post(f"{base}/guest-memfds/{g}/punch-hole", json={"offset": 4096, "length": 4096})
        assert c.post(
            f"{base}/probe", json={"ops": [{"op": "read", "guest_phys_addr": 4 * GiB + 4096, "length": 8}]}
        ).json()["results"][0]["ok"]
