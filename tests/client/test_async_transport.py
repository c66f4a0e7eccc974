"""AsyncClient's transport against the real daemon over its Unix socket: keep-alive reuse,
reconnects after the daemon closed a connection, concurrent calls, error mapping, timeouts,
cancellation; and over TCP with a token and mutual TLS."""

from __future__ import annotations

import asyncio
import gc
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from memslotd.client import AsyncClient, BadRequest, Client, Conflict, NotFound, TransportError, Unauthorized
from tests.helpers import Daemon, start_daemon

MiB = 1 << 20
IDLE_S = 1.0  # the daemon closes keep-alive connections idle this long
NOBODY = "vm-000000000000"  # an events filter nothing matches: a long-poll that waits


@pytest.fixture(scope="module")
def d() -> Iterator[Daemon]:
    tmp = Path(tempfile.mkdtemp(prefix="msd-"))
    daemon = start_daemon(tmp, "--idle-timeout-s", str(IDLE_S))
    yield daemon
    daemon.stop()
    shutil.rmtree(tmp, ignore_errors=True)


def counting_opens(a: AsyncClient) -> list[int]:
    """Count the connections the client opens (the endpoint's ``open`` still does the work)."""
    opened: list[int] = []
    real_open = a.endpoint.open

    async def open_counted() -> Any:
        opened.append(1)
        return await real_open()

    a.endpoint.open = open_counted  # type: ignore[method-assign]
    return opened


def test_sequential_calls_reuse_one_keep_alive_connection(d):
    async def scenario() -> None:
        async with AsyncClient(str(d.socket_path)) as a:
            opened = counting_opens(a)
            await a.health()
            (first,) = a._transport._idle
            for _ in range(20):
                await a.list_vms()
            assert a._transport._idle == [first] and len(opened) == 1 and a._transport._open == 1

    asyncio.run(scenario())


def test_a_connection_the_daemon_closed_while_idle_is_replaced(d):
    async def scenario() -> None:
        async with AsyncClient(str(d.socket_path)) as a:
            opened = counting_opens(a)
            await a.health()
            (stale,) = a._transport._idle
            await asyncio.sleep(IDLE_S + 0.5)  # the loop runs: it sees the daemon's close
            assert stale.closed
            assert (await a.health()).status == "ok"
            assert len(opened) == 2 and a._transport._idle[0] is not stale and a._transport._open == 1

    asyncio.run(scenario())


def test_a_request_sent_on_a_connection_closed_unnoticed_is_sent_again_once(d):
    async def scenario() -> None:
        async with AsyncClient(str(d.socket_path)) as a:
            opened = counting_opens(a)
            vm = await a.create_vm()
            (stale,) = a._transport._idle
            time.sleep(IDLE_S + 0.5)  # the loop is blocked: the daemon's close is not seen yet
            assert not stale.closed
            shm = await a.create_shared_memory(vm.id, 2 * MiB, name="once")  # a POST: not idempotent
            assert len(opened) == 2 and stale.closed
            assert [s.id for s in (await a.list_shared_memory(vm.id)).items] == [shm.id], "created exactly once"
            await a.delete_vm(vm.id)

    asyncio.run(scenario())


def test_concurrent_calls_never_share_a_connection_and_stay_within_the_cap(d):
    async def scenario() -> None:
        async with AsyncClient(str(d.socket_path)) as a:
            a._transport.max_connections = 3
            opened = counting_opens(a)
            vm = await a.create_vm()
            shms = await asyncio.gather(*(a.create_shared_memory(vm.id, 4096, name=f"c{i}") for i in range(24)))
            assert sorted(s.name for s in shms) == sorted(f"c{i}" for i in range(24))
            got = await asyncio.gather(*(a.get_shared_memory(vm.id, s.id) for s in shms * 2))
            assert [g.id for g in got] == [s.id for s in shms * 2], "every call got its own answer"
            assert len(opened) <= 3 and a._transport._open <= 3 and not a._transport._waiting
            await a.delete_vm(vm.id)

    asyncio.run(scenario())


def test_answers_keep_their_typed_errors_and_codes(d, short_tmp):
    async def scenario() -> None:
        async with AsyncClient(str(d.socket_path)) as a:
            with pytest.raises(NotFound) as missing:
                await a.get_vm(NOBODY)
            assert missing.value.code == "VM_NOT_FOUND" and missing.value.status == 404
            vm = await a.create_vm()
            with pytest.raises(BadRequest) as bad:
                await a.create_guest_memfd(vm.id, 4097)
            assert bad.value.code == "RANGE_NOT_ALIGNED" and bad.value.status == 422
            g = await a.create_guest_memfd(vm.id, 2 * MiB)
            await a.put_memslot(vm.id, 0, 0, 2 * MiB, guest_memfd_id=g.id)
            with pytest.raises(Conflict) as conflict:
                await a.delete_guest_memfd(vm.id, g.id)
            assert conflict.value.code == "GMEM_BOUND"
            assert (await a.health()).status == "ok", "an error answer leaves the connection usable"
            assert a._transport._open == 1
            await a.delete_vm(vm.id)
        missing_socket = str(short_tmp / "nothing.sock")
        async with AsyncClient(missing_socket) as gone:
            with pytest.raises(TransportError) as e:
                await gone.health()
            assert e.value.code == "UNREACHABLE" and missing_socket in str(e.value)
            assert gone._transport._open == 0

    asyncio.run(scenario())


def test_a_call_without_an_answer_within_the_timeout_is_a_timeout(d):
    async def scenario() -> None:
        async with AsyncClient(str(d.socket_path), timeout=0.5) as a:
            t = time.monotonic()
            with pytest.raises(TransportError) as e:
                await a.events_page(0, vm_id=NOBODY, wait=10)  # the daemon holds the answer back
            assert e.value.code == "TIMEOUT" and "within 0.5 s" in str(e.value)
            assert time.monotonic() - t < 8, "the timeout, not the daemon's wait, ended the call"
            assert a._transport._open == 0, "a connection with an answer still to come is not reused"
            assert (await a.health()).status == "ok"

    asyncio.run(scenario())
    with Client(str(d.socket_path), timeout=0.5) as c:  # the kernel's SO_RCVTIMEO ends this one
        t = time.monotonic()
        with pytest.raises(TransportError) as e:
            c.events_page(0, vm_id=NOBODY, wait=10)
        assert e.value.code == "TIMEOUT" and "within 0.5 s" in str(e.value) and not c._transport._idle
        assert time.monotonic() - t < 8, "the timeout, not the daemon's wait, ended the call"
        assert c.health().status == "ok"


def test_a_cancelled_call_leaves_no_answer_behind_for_the_next(d):
    async def scenario() -> None:
        async with AsyncClient(str(d.socket_path)) as a:
            poll = asyncio.create_task(a.events_page(0, vm_id=NOBODY, wait=10))
            await asyncio.sleep(0.3)
            poll.cancel()
            with pytest.raises(asyncio.CancelledError):
                await poll
            assert a._transport._open == 0 and not a._transport._idle
            assert (await a.health()).status == "ok"

    asyncio.run(scenario())


def test_calls_waiting_for_a_connection_are_served_in_order_and_may_give_up(d):
    async def scenario() -> None:
        async with AsyncClient(str(d.socket_path), timeout=5) as a:
            a._transport.max_connections = 1
            poll = asyncio.create_task(a.events_page(0, vm_id=NOBODY, wait=1))  # holds the one connection
            await asyncio.sleep(0.1)
            impatient = asyncio.create_task(a.health())
            patient = asyncio.create_task(a.version())
            await asyncio.sleep(0.1)
            impatient.cancel()  # gives up its place in the queue
            assert (await patient).version and "bookmark" in await poll
            with pytest.raises(asyncio.CancelledError):
                await impatient
            assert a._transport._open == 1 and not a._transport._waiting

    asyncio.run(scenario())


def test_a_client_an_ended_loop_left_open_works_from_the_next_loop(d):
    a = AsyncClient(str(d.socket_path))

    async def use() -> None:
        assert (await a.health()).status == "ok"

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)  # each loop ends with its connection open
        asyncio.run(use())
        asyncio.run(use())  # not with the connection of the first loop, which is gone
        asyncio.run(a.aclose())
        gc.collect()


def test_tcp_with_a_token_over_mutual_tls_keeps_one_connection_and_streams_events(short_tmp):
    from tests.e2e.test_security import READER, start_mtls_daemon

    d, port, certs = start_mtls_daemon(short_tmp)
    cert = (str(certs["client.pem"]), str(certs["client.key"]))

    async def scenario(verify: str | bool) -> None:
        async with AsyncClient(url=f"https://127.0.0.1:{port}", token=READER, verify=verify, cert=cert) as a:
            assert (await a.list_vms()).items == []
            with pytest.raises(Unauthorized) as refused:  # a read token may not create
                await a.create_vm()
            assert refused.value.status == 403
            assert (await a.health()).status == "ok" and a._transport._open == 1, "one TLS connection, kept alive"
            async for event in a.events(bookmarks=True):
                assert event["type"] == "bookmark"
                break

    try:
        for verify in (str(certs["ca.pem"]), False):  # the CA's path, or no verification (as httpx)
            asyncio.run(scenario(verify))
    finally:
        d.stop()
