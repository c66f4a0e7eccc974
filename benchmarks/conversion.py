"""Conversion cases: a populated range vs a raw punch of the same size; a million fragments."""

from __future__ import annotations

import time
import tracemalloc
from typing import Any

from memslotd.core.attributes import PRIVATE, SHARED, AttributeMap
from memslotd.core.ranges import Range
from memslotd.kvm import KVMSystem

from ._harness import daemon

GiB = 1 << 30


def populated_convert_vs_raw_punch(size_gib: int) -> dict[str, Any]:
    """Convert ``size_gib`` of allocated guest_memfd to shared through the API (which punches it)
    against fallocate(PUNCH_HOLE) of an equally allocated guest_memfd, in the same run."""
    size = size_gib * GiB
    with KVMSystem.open() as system, system.create_vm(0) as vm, vm.create_guest_memfd(size, 0) as gmem:
        gmem.allocate(0, size)
        t = time.perf_counter()
        gmem.punch_hole(0, size)
        raw = time.perf_counter() - t
    with daemon() as (c, _):
        vm_id = c.post("/v1/vms", json={}).json()["id"]
        g = c.post(f"/v1/vms/{vm_id}/guest-memfds", json={"size": size}).json()["id"]
        c.post(f"/v1/vms/{vm_id}/guest-memfds/{g}/allocate", json={"offset": 0, "length": size})
        c.put(
            f"/v1/vms/{vm_id}/memslots/0",
            json={"guest_phys_addr": 1 << 40, "memory_size": size, "private": {"guest_memfd_id": g}},
        )
        t = time.perf_counter()
        r = c.post(f"/v1/vms/{vm_id}/memory/convert", json={"guest_phys_addr": 1 << 40, "size": size, "to": "shared"})
        api = time.perf_counter() - t
        assert r.status_code == 200 and r.json()["changed"], r.text
    return {
        "size_gib": size_gib,
        "raw_punch_ms": round(raw * 1e3, 1),
        "convert_ms": round(api * 1e3, 1),
        "ratio": round(api / raw, 3),
        "goal": "<= 1.2",
    }


def _alternating(fragments: int, page: int = 4096) -> AttributeMap:
    amap = AttributeMap()
    amap.add(Range(0, fragments * page), PRIVATE)
    for i in range(1, fragments, 2):
        amap.assign(Range.of(i * page, page), SHARED)
    return amap


def million_fragments(fragments: int = 1_000_000) -> dict[str, Any]:
    """Attribute map with ``fragments`` alternating runs: memory per fragment, time per update.
    Time and memory are measured in separate builds (tracemalloc slows allocation ~10x)."""
    page = 4096
    t = time.perf_counter()
    amap = _alternating(fragments, page)
    build = time.perf_counter() - t
    assert len(amap) == fragments
    n = 20_000
    t = time.perf_counter()
    for i in range(n):  # flip a fragment and flip it back: merges and splits in the middle of the map
        j = (i * 7919) % fragments
        amap.assign(Range.of(j * page, page), PRIVATE if j % 2 else SHARED)
        amap.assign(Range.of(j * page, page), SHARED if j % 2 else PRIVATE)
    per_update = (time.perf_counter() - t) / (2 * n)
    t = time.perf_counter()
    runs = sum(1 for _ in amap.runs(Range(0, fragments * page)))
    scan = time.perf_counter() - t
    del amap
    tracemalloc.start()
    base = tracemalloc.take_snapshot()
    amap = _alternating(fragments, page)
    used = sum(s.size_diff for s in tracemalloc.take_snapshot().compare_to(base, "filename"))
    tracemalloc.stop()
    del amap  # held until the snapshot above
    return {
        "fragments": runs,
        "bytes_per_fragment": round(used / fragments, 1),
        "map_mib": round(used / 2**20, 1),
        "build_us_per_update": round(build / (fragments / 2) * 1e6, 2),
        "update_us": round(per_update * 1e6, 2),
        "full_scan_s": round(scan, 2),
    }
