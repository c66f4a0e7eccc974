"""Each use case of the core, through its public face (``memslotd.core``), without HTTP.

The read models, request values and errors are the ones the API maps to the wire; the event
log is read by seq, so every test says exactly which events a use case announced.
"""

from __future__ import annotations

import pytest

from memslotd.core import (
    MAX_BATCH_OPS,
    Backing,
    BatchFailed,
    BatchOp,
    Conflict,
    CursorGone,
    InvalidRequest,
    MemoryCore,
    NotFound,
    ProbeOp,
    ShuttingDown,
    SlotRequest,
)

pytestmark = pytest.mark.anyio
MiB, GiB = 1 << 20, 1 << 30


def announced(core: MemoryCore, seq: int) -> list[tuple[str, object]]:
    """(type, the data's slot or id) of every event after ``seq``."""
    return [(e.type, e.data.get("slot", e.data.get("id"))) for e in core.events.since(seq)]


async def vm_with_gmem(core: MemoryCore, size: int = 4 * MiB) -> tuple[str, str]:
    vm = await core.vms.create("default", None)
    assert vm.id is not None
    gmem = await core.memory_objects.create_gmem(vm.id, size, ["mmap", "init_shared"])
    assert gmem.id is not None
    return vm.id, gmem.id


def private(gmem_id: str, gpa: int, size: int = 2 * MiB, offset: int = 0) -> SlotRequest:
    return SlotRequest(gpa, size, private=Backing(gmem_id, offset))


async def test_a_vm_is_created_listed_and_deleted_with_everything_it_owns(core: MemoryCore):
    seq = core.events.seq
    vm_id, gmem_id = await vm_with_gmem(core)
    shm = await core.memory_objects.create_shm(vm_id, 2 * MiB, None, "ram")
    await core.memslots.put(vm_id, 0, private(gmem_id, 4 * GiB))
    view = core.vms.get(vm_id)
    assert (view.memslots_used, view.guest_memfds, view.shared_memory_regions, view.slot_bytes) == (1, 1, 1, 2 * MiB)
    assert [v.id for v in core.vms.list()] == [vm_id] and core.vms.count() == 1
    assert core.vms.release(vm_id)["memslots"] == [0]  # a dry-run delete names what it would release

    await core.vms.delete(vm_id)
    assert core.vms.count() == 0
    assert [t for t, _ in announced(core, seq)] == [
        "vm.created",
        "guest_memfd.created",
        "shared_memory.created",
        "memslot.created",
        "memory.invalidate_start",
        "memory.invalidate_end",
        "memslot.deleted",
        "guest_memfd.deleted",
        "shared_memory.deleted",
        "vm.deleted",
    ]
    assert shm.name == "ram"
    with pytest.raises(NotFound) as gone:
        core.vms.get(vm_id)
    assert gone.value.code == "VM_NOT_FOUND"


async def test_a_dry_run_answers_what_would_be_made_and_changes_nothing(core: MemoryCore):
    seq = core.events.seq
    plan = await core.vms.create("default", "demo", dry_run=True)
    assert plan.id is None and plan.name == "demo" and plan.memslots_max == core.host.capabilities.max_memslots
    vm_id, gmem_id = await vm_with_gmem(core)
    seq = core.events.seq
    gmem_plan = await core.memory_objects.create_gmem(vm_id, 2 * MiB, ["init_shared", "mmap"], dry_run=True)
    assert gmem_plan.id is None and gmem_plan.flags == ("mmap", "init_shared")
    slot_plan, created = await core.memslots.put(vm_id, 3, private(gmem_id, 4 * GiB), dry_run=True)
    assert created and slot_plan.slot.slot_id == 3
    assert core.memslots.list(vm_id, 0, 1 << 53, None, 10).total == 0 and core.events.since(seq) == []


async def test_names_are_unique_among_vms_and_among_a_vms_objects(core: MemoryCore):
    await core.vms.create("default", "demo")
    with pytest.raises(Conflict) as taken:
        await core.vms.create("default", "demo")
    assert taken.value.code == "NAME_TAKEN"
    vm_id, _ = await vm_with_gmem(core)
    await core.memory_objects.create_shm(vm_id, 2 * MiB, None, "ram")
    with pytest.raises(Conflict, match="ram") as taken:
        await core.memory_objects.create_gmem(vm_id, 2 * MiB, [], "ram")
    assert taken.value.code == "NAME_TAKEN"


async def test_a_bound_memory_object_cannot_be_deleted(core: MemoryCore):
    vm_id, gmem_id = await vm_with_gmem(core)
    shm = await core.memory_objects.create_shm(vm_id, 2 * MiB, None)
    assert shm.id is not None
    await core.memslots.put(vm_id, 0, private(gmem_id, 4 * GiB))
    await core.memslots.put(vm_id, 1, SlotRequest(8 * GiB, 2 * MiB, shared=Backing(shm.id, 0)))
    assert [(b.slot, b.guest_phys_addr) for b in core.memory_objects.get_gmem(vm_id, gmem_id).bindings] == [
        (0, 4 * GiB)
    ]
    assert core.memory_objects.get_shm(vm_id, shm.id).used_by_slots == (1,)
    with pytest.raises(Conflict) as bound:
        await core.memory_objects.delete_gmem(vm_id, gmem_id)
    assert bound.value.code == "GMEM_BOUND"
    with pytest.raises(Conflict) as used:
        await core.memory_objects.delete_shm(vm_id, shm.id)
    assert used.value.code == "SHARED_MEMORY_IN_USE"
    await core.memslots.delete(vm_id, 0)
    await core.memory_objects.delete_gmem(vm_id, gmem_id)
    assert core.memory_objects.list_gmems(vm_id) == []


async def test_a_memslot_put_is_idempotent_and_answers_the_read_model(core: MemoryCore):
    vm_id, gmem_id = await vm_with_gmem(core)
    seq = core.events.seq
    first, created = await core.memslots.put(vm_id, "0", private(gmem_id, 4 * GiB))
    again, created_again = await core.memslots.put(vm_id, 0, private(gmem_id, 4 * GiB))
    assert (created, created_again) == (True, False) and again == first
    assert first.slot.immutable and first.guest_backing == "guest_memfd"
    assert core.memslots.get(vm_id, "0").slot.etag == first.slot.etag
    assert announced(core, seq) == [("memslot.created", 0)]


async def test_slot_ids_are_taken_as_clients_write_them(core: MemoryCore):
    vm_id, gmem_id = await vm_with_gmem(core)
    with pytest.raises(NotFound) as no_vm:
        await core.memslots.put("vm-0", "x", private(gmem_id, 4 * GiB))
    assert no_vm.value.code == "VM_NOT_FOUND"  # the VM first, then the slot id
    with pytest.raises(InvalidRequest) as bad_id:
        await core.memslots.put(vm_id, "x", private(gmem_id, 4 * GiB))
    assert bad_id.value.code == "SLOT_ID_OUT_OF_RANGE"
    with pytest.raises(NotFound) as no_slot:
        core.memslots.get(vm_id, "x")
    assert no_slot.value.code == "SLOT_NOT_FOUND"


async def test_overlapping_slots_are_refused_and_leave_no_state(core: MemoryCore):
    vm_id, gmem_id = await vm_with_gmem(core)
    await core.memslots.put(vm_id, 0, private(gmem_id, 4 * GiB))
    seq = core.events.seq
    with pytest.raises(Conflict) as overlap:
        await core.memslots.put(vm_id, 1, private(gmem_id, 4 * GiB + 1 * MiB, offset=2 * MiB))
    assert overlap.value.code == "SLOT_OVERLAP" and overlap.value.extra["slot"] == 0
    assert core.memslots.list(vm_id, 0, 1 << 53, None, 10).total == 1 and core.events.since(seq) == []


async def test_slots_list_in_gpa_order_a_page_at_a_time(core: MemoryCore):
    vm_id, gmem_id = await vm_with_gmem(core, 8 * MiB)
    for slot, gpa in ((2, 4 * GiB), (0, 8 * GiB), (1, 6 * GiB)):
        await core.memslots.put(vm_id, slot, private(gmem_id, gpa, offset=slot * 2 * MiB))
    first = core.memslots.list(vm_id, 0, 1 << 53, None, 2)
    rest = core.memslots.list(vm_id, 0, 1 << 53, first.next_gpa, 2)
    assert [v.slot.slot_id for v in first.items + rest.items] == [2, 1, 0] and rest.next_gpa is None


async def test_conversion_changes_the_map_and_announces_only_what_changed(core: MemoryCore):
    vm_id, gmem_id = await vm_with_gmem(core)
    shm = await core.memory_objects.create_shm(vm_id, 2 * MiB, None)
    assert shm.id is not None
    req = SlotRequest(4 * GiB, 2 * MiB, shared=Backing(shm.id, 0), private=Backing(gmem_id, 0))
    await core.memslots.put(vm_id, 0, req)
    seq = core.events.seq
    result = await core.memory.convert(vm_id, 4 * GiB, 1 * MiB, "private")
    assert [(c["from"], c["to"], c["size"]) for c in result.changed] == [("shared", "private", 1 * MiB)]
    again = await core.memory.convert(vm_id, 4 * GiB, 1 * MiB, "private")
    assert again.changed == [] and again.unchanged == [{"guest_phys_addr": 4 * GiB, "size": 1 * MiB}]
    page = core.memory.attributes(vm_id, 0, 1 << 53, 10)
    assert [(r.guest_phys_addr, r.size, r.state) for r in page.ranges] == [
        (4 * GiB, 1 * MiB, "private"),
        (4 * GiB + 1 * MiB, 1 * MiB, "shared"),
    ]
    assert [t for t, _ in announced(core, seq)] == [
        "memory.invalidate_start",
        "memory.invalidate_end",
        "memory.converted",
    ]


async def test_a_batch_applies_in_order_and_announces_after(core: MemoryCore):
    vm_id, gmem_id = await vm_with_gmem(core, 8 * MiB)
    await core.memslots.put(vm_id, 0, private(gmem_id, 4 * GiB))
    seq = core.events.seq
    results = await core.batch.apply(
        vm_id,
        [
            BatchOp("create", 1, private(gmem_id, 6 * GiB, offset=2 * MiB)),
            BatchOp("delete", 0),
            BatchOp("create", None, private(gmem_id, 8 * GiB, offset=4 * MiB)),
        ],
    )
    assert [(r["slot"], r["result"]) for r in results] == [(1, "created"), (0, "deleted"), (0, "created")]
    assert [(t, s) for t, s in announced(core, seq)] == [
        ("memslot.created", 1),
        ("memory.invalidate_start", None),
        ("memory.invalidate_end", None),
        ("memslot.deleted", 0),
        ("memslot.created", 0),
    ]


async def test_a_batch_is_all_or_nothing(core: MemoryCore):
    vm_id, gmem_id = await vm_with_gmem(core, 8 * MiB)
    seq = core.events.seq
    with pytest.raises(BatchFailed) as failed:
        await core.batch.apply(
            vm_id,
            [
                BatchOp("create", 1, private(gmem_id, 6 * GiB)),
                BatchOp("create", 2, private(gmem_id, 6 * GiB, offset=2 * MiB)),
            ],
        )
    assert (failed.value.extra["index"], failed.value.cause.code) == (1, "SLOT_OVERLAP")
    assert core.memslots.list(vm_id, 0, 1 << 53, None, 10).total == 0 and core.events.since(seq) == []
    assert MAX_BATCH_OPS == 4096  # the API's schema and the CLI use this one number


async def test_the_dirty_log_needs_the_flag(core: MemoryCore):
    vm_id, _ = await vm_with_gmem(core)
    shm = await core.memory_objects.create_shm(vm_id, 2 * MiB, None)
    assert shm.id is not None
    await core.memslots.put(vm_id, 0, SlotRequest(4 * GiB, 1 * MiB, ("log_dirty_pages",), shared=Backing(shm.id, 0)))
    await core.memslots.put(vm_id, 1, SlotRequest(8 * GiB, 1 * MiB, shared=Backing(shm.id, 1 * MiB)))
    log = await core.memslots.fetch_dirty_log(vm_id, "0")
    assert (log.slot, log.pages, log.ranges) == (0, 256, ())  # no guest ran: nothing dirty
    with pytest.raises(Conflict) as off:
        await core.memslots.fetch_dirty_log(vm_id, 1)
    assert off.value.code == "DIRTY_LOGGING_OFF"


async def test_events_replay_from_a_cursor_exactly_once(core: MemoryCore):
    start = core.events.seq
    vm_id, _ = await vm_with_gmem(core)
    sub = core.events.subscribe(since_seq=start)
    try:
        replayed = sub.drain()
        assert [e.seq for e in replayed] == [start + 1, start + 2] and sub.drain() == []
        await core.vms.delete(vm_id)
        assert [e.type for e in sub.drain()] == [
            "memory.invalidate_start",
            "memory.invalidate_end",
            "guest_memfd.deleted",
            "vm.deleted",
        ]
    finally:
        sub.close()
    with pytest.raises(CursorGone) as gone:
        core.events.check_cursor(core.events.seq + 1)
    assert gone.value.reason == "cursor_in_future"


async def test_initial_state_describes_what_exists_now(core: MemoryCore):
    vm_id, gmem_id = await vm_with_gmem(core)
    await core.memslots.put(vm_id, 0, private(gmem_id, 4 * GiB))
    state = [(t, data.get("slot", data.get("id"))) for t, _, data in core.initial_state(vm_id)]
    assert state == [
        ("vm.created", None),
        ("guest_memfd.created", gmem_id),
        ("memslot.created", 0),
        ("memory.attributes", None),
    ]


async def test_no_mutation_once_the_shutdown_began(core: MemoryCore):
    vm_id, gmem_id = await vm_with_gmem(core)
    core.closing = True
    with pytest.raises(ShuttingDown):
        await core.memslots.put(vm_id, 0, private(gmem_id, 4 * GiB))
    with pytest.raises(ShuttingDown):
        await core.vms.create("default", None)
    assert core.vms.get(vm_id).memslots_used == 0  # reads go on


async def test_the_probe_reads_what_the_host_wrote(kvm_core: MemoryCore):
    core = kvm_core
    vm_id, _ = await vm_with_gmem(core)
    shm = await core.memory_objects.create_shm(vm_id, 2 * MiB, None)
    assert shm.id is not None
    await core.memslots.put(vm_id, 0, SlotRequest(4 * GiB, 2 * MiB, shared=Backing(shm.id, 0)))
    await core.host_view.write(vm_id, "shared_memory", shm.id, 0x10, b"host")
    report = await core.probe.probe(vm_id, [ProbeOp("read", 4 * GiB + 0x10, 4)])
    assert report.results[0]["data_hex"] == b"host".hex() and report.enforcement == "daemon"
