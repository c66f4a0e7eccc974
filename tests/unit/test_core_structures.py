"""The core's data structures, without a kernel."""

from __future__ import annotations

import errno
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sortedcontainers import SortedDict

from memslotd.core.attributes import PRIVATE, SHARED, AttributeMap
from memslotd.core.errors import (
    CapabilityMissing,
    Conflict,
    HostResourcesExhausted,
    InvalidRequest,
    KernelError,
    kernel_error,
)
from memslotd.core.events import CursorGone, EventLog
from memslotd.core.ranges import Range, check_aligned_range
from memslotd.core.slot_table import Backing, FreeIds, GmemBindings, MemslotTable, Slot
from memslotd.core.sorted_keys import floor_key, higher_key


def slot(i: int, start: int, size: int) -> Slot:
    return Slot(i, start, size, (), Backing("shm-1", 0), None, 0, "shared_memory", 0.0)


def test_an_aligned_start_and_size_make_the_half_open_range():
    assert check_aligned_range(4096, 8192, 4096, what="x") == Range(4096, 12288)


@pytest.mark.parametrize(
    "start, size, code",
    [
        (0, 0, "RANGE_EMPTY"),
        (1, 4096, "RANGE_NOT_ALIGNED"),
        ((1 << 53) - 4096, 8192, "RANGE_OVERFLOW"),
    ],
    ids=[
        "an_empty_range_is_RANGE_EMPTY",
        "an_unaligned_start_is_RANGE_NOT_ALIGNED",
        "an_end_past_2_to_the_53_is_RANGE_OVERFLOW",
    ],
)
def test_a_range_that_cannot_be_a_memory_range_is_refused_with_its_code(start, size, code):
    with pytest.raises(InvalidRequest) as e:
        check_aligned_range(start, size, 4096, what="x")
    assert e.value.code == code


def _three_slots() -> MemslotTable:
    """Slots 0, 1 and 3 at [0, 100), [200, 300), [400, 500)."""
    t = MemslotTable(8)
    t.add(slot(0, 0, 100))
    t.add(slot(1, 200, 100))
    t.add(slot(3, 400, 100))
    return t


def test_the_slot_table_hands_out_the_lowest_free_id():
    t = _three_slots()
    assert t.lowest_free_id() == 2
    t.remove(0)
    assert t.lowest_free_id() == 0 and len(t) == 2


def test_the_slot_table_finds_the_first_overlap_in_gpa_order_ignoring_the_slot_being_changed():
    t = _three_slots()
    assert t.first_overlap(Range(50, 60)).slot_id == 0
    assert t.first_overlap(Range(100, 200)) is None
    assert t.first_overlap(Range(150, 250)).slot_id == 1
    assert t.first_overlap(Range(0, 1000)).slot_id == 0
    assert t.first_overlap(Range(250, 260), ignore=1) is None
    assert [s.slot_id for s in t.overlapping(Range(99, 401))] == [0, 1, 3]


def test_the_slot_table_pages_in_gpa_order_with_the_next_pages_start():
    t = _three_slots()
    items, nxt = t.page(Range(0, 1000), None, 2)
    assert [s.slot_id for s in items] == [0, 1] and nxt == 200
    items, nxt = t.page(Range(0, 1000), nxt, 2)
    assert [s.slot_id for s in items] == [3] and nxt is None


@given(st.lists(st.tuples(st.integers(0, 50), st.integers(1, 10)), max_size=40), st.integers(0, 60), st.integers(1, 15))
def test_first_overlap_matches_brute_force(spans, qstart, qsize):
    t = MemslotTable(64)
    placed: list[Range] = []
    for i, (start, size) in enumerate(spans):
        r = Range.of(start, size)
        if t.first_overlap(r) is None:
            assert not any(p.overlaps(r) for p in placed)
            t.add(slot(i, start, size))
            placed.append(r)
        else:
            assert any(p.overlaps(r) for p in placed)
    q = Range.of(qstart, qsize)
    assert (t.first_overlap(q) is not None) == any(p.overlaps(q) for p in placed)


@given(st.lists(st.integers(0, 300), max_size=120, unique=True), st.lists(st.integers(-5, 305), max_size=30))
def test_neighbour_lookups_match_brute_force(keys, queries):
    sd = SortedDict()
    sd._list._reset(4)  # many small sublists, so lookups cross sublist boundaries
    for k in keys:
        sd[k] = None
    for x in queries:
        assert floor_key(sd, x) == max((k for k in keys if k <= x), default=None)
        assert higher_key(sd, x) == min((k for k in keys if k > x), default=None)


@given(st.lists(st.tuples(st.sampled_from(["take", "give", "lowest", "highest"]), st.integers(0, 15)), max_size=80))
def test_free_ids_match_a_set(operations):
    used: set[int] = set()
    free = FreeIds(16, used)
    for op, slot_id in operations:
        if op == "take":
            used.add(slot_id)  # the slot table marks an id used; FreeIds only reads it
        elif op == "give" and slot_id in used:
            used.discard(slot_id)
            free.give_back(slot_id)
        elif op == "lowest":
            assert free.lowest() == min(set(range(16)) - used, default=None)
        elif op == "highest":
            assert free.highest() == max(set(range(16)) - used, default=None)


@given(st.lists(st.tuples(st.integers(0, 40), st.integers(1, 6), st.sampled_from([PRIVATE, SHARED])), max_size=30))
def test_bulk_attribute_updates_equal_one_at_a_time(spans):
    disjoint: list[tuple[Range, str]] = []
    for start, size, state in spans:
        r = Range.of(start * 4, size)  # gaps and touching neighbours both occur
        if not any(r.overlaps(other) for other, _ in disjoint):
            disjoint.append((r, state))
    one, bulk = AttributeMap(), AttributeMap()
    for r, state in disjoint:
        one.add(r, state)
    bulk.add_many([(r.start, r.end, state) for r, state in disjoint])
    assert list(one.runs(Range(0, 1000))) == list(bulk.runs(Range(0, 1000))) and len(one) == len(bulk)
    assert one.private_bytes == bulk.private_bytes
    half = [r for r, _ in disjoint[::2]]
    for r in half:
        one.remove(r)
    bulk.remove_many([(r.start, r.end) for r in half])
    assert list(one.runs(Range(0, 1000))) == list(bulk.runs(Range(0, 1000))) and len(one) == len(bulk)
    assert one.private_bytes == bulk.private_bytes


def test_a_guest_memfd_range_overlap_names_the_bound_slot_except_the_one_ignored_until_unbound():
    b = GmemBindings()
    b.bind(Range(0, 10), 1)
    b.bind(Range(20, 30), 2)
    assert b.overlapping(Range(5, 6)) == (1, Range(0, 10))
    assert b.overlapping(Range(10, 20)) is None
    assert b.overlapping(Range(25, 40), ignore=2) is None
    b.unbind(0)
    assert b.overlapping(Range(0, 10)) is None


class PageModel:
    """The obviously-correct model: one state per page."""

    def __init__(self) -> None:
        self.pages: dict[int, str] = {}

    def runs(self) -> list[tuple[int, int, str]]:
        out: list[tuple[int, int, str]] = []
        for p in sorted(self.pages):
            if out and out[-1][1] == p and out[-1][2] == self.pages[p]:
                out[-1] = (out[-1][0], p + 1, out[-1][2])
            else:
                out.append((p, p + 1, self.pages[p]))
        return out


ops = st.lists(
    st.tuples(
        st.sampled_from(["add", "remove", "assign"]),
        st.integers(0, 60),
        st.integers(1, 12),
        st.sampled_from([PRIVATE, SHARED]),
    ),
    max_size=60,
)


@settings(max_examples=300)
@given(ops)
def test_attribute_map_equals_a_per_page_model(operations):
    amap, model = AttributeMap(), PageModel()
    for op, start, size, state in operations:
        r = Range.of(start, size)
        if op == "add":
            if any(p in model.pages for p in range(r.start, r.end)):
                continue  # add only covers new ground (slots never overlap)
            amap.add(r, state)
            model.pages.update({p: state for p in range(r.start, r.end)})
        elif op == "remove":
            amap.remove(r)
            for p in range(r.start, r.end):
                model.pages.pop(p, None)
        else:
            changed = amap.assign(r, state)
            expected = {p for p in range(r.start, r.end) if model.pages.get(p, state) != state}
            assert {p for c, _ in changed for p in range(c.start, c.end)} == expected
            for c, old in changed:
                assert all(model.pages[p] == old for p in range(c.start, c.end))
            model.pages.update({p: state for p in range(r.start, r.end) if p in model.pages})
        got = [(r.start, r.end, s) for r, s in amap.runs(Range(0, 1000))]
        assert got == model.runs()
        assert len(amap) == len(model.runs())  # runs are always maximal
        assert amap.private_bytes == sum(1 for v in model.pages.values() if v == PRIVATE)


def test_attribute_runs_are_clipped_to_the_window_asked_for():
    amap = AttributeMap()
    amap.add(Range(0, 100), PRIVATE)
    amap.assign(Range(40, 60), SHARED)
    assert [(r.start, r.end, s) for r, s in amap.runs(Range(50, 70))] == [(50, 60, SHARED), (60, 70, PRIVATE)]
    assert amap.state_at(45) == SHARED and amap.state_at(100) is None


def _five_events_three_kept() -> EventLog:
    log = EventLog(max_events=3)
    for i in range(5):
        log.append("vm.created", f"vm-{i}", {})
    return log


def test_the_event_log_resumes_after_any_seq_it_still_holds():
    log = _five_events_three_kept()
    assert [e.seq for e in log.since(2)] == [3, 4, 5]
    assert log.since(5) == []


def test_a_cursor_expired_from_another_boot_or_from_the_future_is_gone():
    log = _five_events_three_kept()
    with pytest.raises(CursorGone) as gone:
        log.since(1)
    assert gone.value.reason == "expired" and gone.value.oldest_seq == 3
    with pytest.raises(CursorGone):
        log.since(2, boot_id="another-boot")
    with pytest.raises(CursorGone):
        log.since(99)


def test_the_event_log_drops_its_oldest_events_to_stay_within_its_bytes():
    log = EventLog(max_events=1000, max_bytes=500)
    for _ in range(50):
        log.append("memory.converted", "vm-1", {"pad": "x" * 50})
    assert log.retained_bytes <= 500 and log.oldest_seq > 1


@pytest.mark.parametrize(
    "code, error",
    [
        (errno.ENOMEM, HostResourcesExhausted),
        (errno.EMFILE, HostResourcesExhausted),
        (errno.EEXIST, Conflict),
        (errno.ENOTTY, CapabilityMissing),
        (errno.EINVAL, InvalidRequest),
        (errno.EIO, KernelError),
    ],
    ids=[
        "ENOMEM_is_HostResourcesExhausted",
        "EMFILE_is_HostResourcesExhausted",
        "EEXIST_is_Conflict",
        "ENOTTY_is_CapabilityMissing",
        "EINVAL_is_InvalidRequest",
        "EIO_is_KernelError",
    ],
)
def test_a_kernel_errno_becomes_its_domain_error_carrying_the_errno_and_the_ioctl(code, error):
    exc = OSError(code, "x")
    exc.ioctl = "KVM_SET_USER_MEMORY_REGION2"  # type: ignore[attr-defined]
    got = kernel_error(exc, "x")
    assert isinstance(got, error)
    assert got.extra["errno"] == code and got.extra["ioctl"] == "KVM_SET_USER_MEMORY_REGION2"


def test_vm_mutations_are_serialized_and_the_queue_is_bounded():
    import asyncio

    from memslotd.core.errors import NotFound, VMBusy
    from memslotd.core.records import VMRecord

    async def scenario() -> None:
        vm = VMRecord("vm-1", "default", None, port=None, slots=MemslotTable(4), max_pending=2)  # type: ignore[arg-type]
        order: list[str] = []
        release = asyncio.Event()

        async def first() -> None:
            async with vm.mutation():
                order.append("first")
                await release.wait()

        async def second() -> None:
            async with vm.mutation():
                order.append("second")

        t1 = asyncio.create_task(first())
        await asyncio.sleep(0)
        t2 = asyncio.create_task(second())
        await asyncio.sleep(0)
        with pytest.raises(VMBusy):  # two already pending: the third is refused, not queued
            async with vm.mutation():
                pass
        release.set()
        await asyncio.gather(t1, t2)
        assert order == ["first", "second"]
        vm.deleted = True
        with pytest.raises(NotFound):
            async with vm.mutation():
                pass

    asyncio.run(scenario())


@given(st.sets(st.integers(0, 300), max_size=80), st.integers(1, 301))
def test_dirty_ranges_match_the_set_bits(dirty, pages):
    from memslotd.core.dirty_log import dirty_ranges

    words = bytearray((pages + 63) // 64 * 8)
    for p in dirty:
        if p < len(words) * 8:
            words[p // 8] |= 1 << (p % 8)
    got = dirty_ranges(bytes(words), 1 << 32, 4096, pages)
    pages_out = [((g - (1 << 32)) // 4096) + i for g, n in got for i in range(n // 4096)]
    assert pages_out == sorted(p for p in dirty if p < pages)
    assert all(a[0] + a[1] < b[0] for a, b in itertools.pairwise(got))  # maximal runs
