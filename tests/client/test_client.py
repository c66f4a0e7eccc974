"""The Python client against the real daemon: typed models, typed errors, resuming events."""

from __future__ import annotations

import asyncio
import signal
import threading
import time

import pytest

from memslotd.client import AsyncClient, BadRequest, Client, Conflict, CursorGone, NotFound
from tests.helpers import patience, start_daemon

MiB, GiB = 1 << 20, 1 << 30


def test_the_sync_client_drives_every_use_case_and_answers_typed_models(daemon):
    with Client(str(daemon.socket_path)) as c:
        assert c.capabilities().conversion_enforcement == "daemon"
        vm = c.create_vm(name="client")
        g = c.create_guest_memfd(vm.id, 4 * MiB, ["mmap", "init_shared"], name="ram")
        slot = c.put_memslot(vm.id, 0, 4 * GiB, 4 * MiB, guest_memfd_id=g.id)
        assert slot.guest_backing == "guest_memfd" and slot.private.guest_memfd_id == g.id
        assert (
            c.probe(
                vm.id,
                [
                    {"op": "write", "guest_phys_addr": 4 * GiB, "length": 2, "data_hex": "beef"},
                    {"op": "read", "guest_phys_addr": 4 * GiB, "length": 2},
                ],
            )
            .results[1]
            .data_hex
            == "beef"
        )
        result = c.convert(vm.id, 4 * GiB, MiB, "private")
        assert result.changed[0].from_ == "shared" and result.enforcement == "daemon"
        assert [r.state for r in c.attributes(vm.id).ranges] == ["private", "shared"]
        shm = c.create_shared_memory(vm.id, 2 * MiB)
        c.put_memslot(vm.id, 5, 8 * GiB, 2 * MiB, shared_memory_id=shm.id, flags=["log_dirty_pages"])
        c.probe(vm.id, [{"op": "write", "guest_phys_addr": 8 * GiB + 4096, "length": 1, "data_hex": "01"}])
        assert [(r.guest_phys_addr, r.size) for r in c.dirty_log(vm.id, 5).ranges] == [(8 * GiB + 4096, 4096)]
        batch = c.batch(vm.id, [{"op": "delete", "slot": 0}])
        assert batch.results[0].result == "deleted"
        assert "memslotd_vms" in c.metrics()


def test_a_problem_raises_the_exception_of_its_status_carrying_its_code(daemon):
    with Client(str(daemon.socket_path)) as c:
        with pytest.raises(NotFound) as e:
            c.get_vm("vm-000000000000")
        assert e.value.code == "VM_NOT_FOUND" and e.value.status == 404
        vm = c.create_vm()
        with pytest.raises(BadRequest) as bad:
            c.create_guest_memfd(vm.id, 4097)
        assert bad.value.code == "RANGE_NOT_ALIGNED"
        g = c.create_guest_memfd(vm.id, 2 * MiB)
        c.put_memslot(vm.id, 0, 0, 2 * MiB, guest_memfd_id=g.id)
        with pytest.raises(Conflict) as conflict:
            c.delete_guest_memfd(vm.id, g.id)
        assert conflict.value.code == "GMEM_BOUND"


def test_the_async_client_creates_lists_and_deletes_a_vm(daemon):
    async def scenario() -> None:
        async with AsyncClient(str(daemon.socket_path)) as c:
            vm = await c.create_vm(name="async")
            vms = await c.list_vms()
            assert [v.id for v in vms.items] == [vm.id]
            await c.delete_vm(vm.id)

    asyncio.run(scenario())


def test_event_iterator_resumes_after_a_dropped_connection(daemon):
    with Client(str(daemon.socket_path)) as c:
        vm = c.create_vm()
        stream = c.events(vm_id=vm.id, types=["guest_memfd.*"])
        seen: list[int] = []

        def consume() -> None:
            for event in stream:
                seen.append(event["seq"])
                if len(seen) == 20:
                    return

        t = threading.Thread(target=consume)
        t.start()
        time.sleep(0.3)
        for i in range(10):
            c.create_guest_memfd(vm.id, 4096, name=f"g{i}")
        stream.connection.socket.shutdown(2)  # the network drops the connection mid-stream
        for g in c.list_guest_memfds(vm.id).items:
            c.delete_guest_memfd(vm.id, g.id)
        t.join(patience(20))
        assert len(seen) == 20 and seen == sorted(set(seen)), "each event once, in order, across the reconnect"
        assert stream.reconnects >= 1


def test_event_iterator_raises_gone_when_the_daemon_restarted(short_tmp):
    d = start_daemon(short_tmp)
    with Client(str(d.socket_path)) as c:
        c.create_vm()
        stream = c.events(since_seq=0)
        events = iter(stream)
        assert next(events)["type"] == "vm.created"
    assert stream.boot_id
    d.stop(signal.SIGTERM)
    d2 = start_daemon(short_tmp)
    try:
        announced = []
        with pytest.raises(CursorGone):  # reconnects to a daemon with another boot_id
            for event in events:
                announced.append(event["type"])
        assert announced == ["vm.deleted"]  # the graceful stop announced the VM first
    finally:
        d2.stop()


def test_the_client_sends_dry_run_and_preconditions_and_a_stale_if_match_raises_412(daemon):
    with Client(str(daemon.socket_path)) as c:
        vm = c.create_vm()
        shm = c.create_shared_memory(vm.id, 4 * MiB)
        planned = c.put_memslot(vm.id, 0, 0, 4 * MiB, shared_memory_id=shm.id, dry_run=True)
        assert planned.slot == 0 and c.list_memslots(vm.id).total == 0
        c.put_memslot(vm.id, 0, 0, 4 * MiB, shared_memory_id=shm.id, if_none_match="*")
        from memslotd.client.errors import MemslotdError

        with pytest.raises(MemslotdError) as e:
            c.put_memslot(vm.id, 0, GiB, 4 * MiB, shared_memory_id=shm.id, if_match='"stale"')
        assert e.value.status == 412


def test_sequential_calls_share_one_keep_alive_connection(daemon):
    with Client(str(daemon.socket_path)) as c:
        c.health()
        (first,) = c._transport._idle
        for _ in range(20):
            c.list_vms()
        assert c._transport._idle == [first] and first.sock.fileno() >= 0


def test_a_connection_the_daemon_closed_while_idle_is_replaced(daemon):
    with Client(str(daemon.socket_path)) as c:
        vm = c.create_vm()
        (stale,) = c._transport._idle
        time.sleep(5.5)  # uvicorn closes keep-alive connections idle for 5 s
        assert c.get_vm(vm.id).id == vm.id
        assert c._transport._idle[0] is not stale, "the closed connection was replaced"

        async def later() -> None:
            async with AsyncClient(str(daemon.socket_path)) as a:
                await a.health()
                await asyncio.sleep(5.5)
                assert (await a.get_vm(vm.id)).id == vm.id

        asyncio.run(later())


def test_a_request_on_a_connection_closed_while_unprobed_is_sent_again_once(short_tmp):
    # A connection idle for less than probe_idle_after_s is reused without a probe: if the
    # daemon closed it meanwhile, the request (a POST here, not idempotent) goes out again on
    # a fresh connection, and exactly once.
    d = start_daemon(short_tmp, "--idle-timeout-s", "0.5")
    try:
        with Client(str(d.socket_path)) as c:
            c._transport.probe_idle_after_s = 3600.0
            vm = c.create_vm()
            (stale,) = c._transport._idle
            time.sleep(1.0)  # the daemon closes the connection; nobody probes it
            shm = c.create_shared_memory(vm.id, 2 * MiB, name="once")
            assert c._transport._idle[0] is not stale and stale.sock.fileno() == -1
            assert [s.id for s in c.list_shared_memory(vm.id).items] == [shm.id], "created exactly once"
    finally:
        d.stop()


def test_one_client_serves_threads_and_tasks_at_once(daemon):
    with Client(str(daemon.socket_path)) as c:
        vm = c.create_vm()
        errors: list[BaseException] = []

        def worker(i: int) -> None:
            try:
                for j in range(10):
                    c.create_shared_memory(vm.id, 4096, name=f"t{i}-{j}")
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(patience(60))
        assert not errors and len(c.list_shared_memory(vm.id).items) == 40

    async def tasks() -> None:
        async with AsyncClient(str(daemon.socket_path)) as a:
            got = await asyncio.gather(*(a.get_vm(vm.id) for _ in range(16)))
            assert {g.id for g in got} == {vm.id}

    asyncio.run(tasks())


def test_unreachable_daemon_error_names_the_socket(short_tmp):
    from memslotd.client import TransportError

    missing = str(short_tmp / "nothing.sock")
    with Client(missing) as c, pytest.raises(TransportError) as e:
        c.health()
    assert str(e.value).startswith("UNREACHABLE: ") and missing in str(e.value)


def test_a_dry_run_the_daemon_ignored_is_an_error_not_a_silent_change(daemon):
    from memslotd.client import ServerError

    with Client(str(daemon.socket_path)) as c:
        spec = c.openapi()
        takes_dry_run = any(q.get("name") == "dry_run" for q in spec["paths"]["/v1/vms"]["post"].get("parameters", []))
        if takes_dry_run:
            pytest.skip("this daemon honours dry_run on POST /v1/vms")
        with pytest.raises(ServerError) as e:
            c.create_vm(name="dry", dry_run=True)
        assert e.value.code == "DRY_RUN_IGNORED"
