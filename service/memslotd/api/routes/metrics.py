"""Prometheus ``GET /metrics``: gauges read from live state at scrape time, plus counters."""

from __future__ import annotations

from collections.abc import Iterator

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from ...core import MemoryCore
from ..routing import ApiRoute

router = APIRouter(tags=["host"], route_class=ApiRoute)


class CoreCollector(Collector):
    """Reads the core when scraped: nothing to keep in sync on the hot path."""

    def __init__(self) -> None:
        self.core: MemoryCore | None = None

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        core = self.core
        if core is None:
            return
        vms = core.vms.list()
        yield GaugeMetricFamily("memslotd_vms", "VMs", value=len(vms))
        slots = GaugeMetricFamily("memslotd_memslots", "memslots per VM", labels=["vm_id"])
        gmem = GaugeMetricFamily("memslotd_guest_memfd_bytes", "guest_memfd bytes per VM", labels=["vm_id"])
        shm = GaugeMetricFamily("memslotd_shared_memory_bytes", "shared-memory bytes per VM", labels=["vm_id"])
        for vm in vms:
            label = [str(vm.id)]  # a listed VM has one (only a dry-run plan has none)
            slots.add_metric(label, vm.memslots_used)
            gmem.add_metric(label, vm.guest_memfd_bytes)
            shm.add_metric(label, vm.shared_memory_bytes)
        yield from (slots, gmem, shm)
        st = core.host.stats
        for name, doc, value in (
            ("conversions", "converted ranges", st.conversions),
            ("converted_bytes", "bytes converted", st.converted_bytes),
            ("discarded_bytes", "bytes discarded by conversions", st.discarded_bytes),
            ("punched_bytes", "bytes punched by punch-hole requests", st.punched_bytes),
            ("probes", "probe requests", st.probes),
            ("probe_ops", "probe guest accesses", st.probe_ops),
            ("events", "events emitted", core.events.seq),
            ("event_subscribers_dropped", "subscribers cut off for falling behind", core.events.dropped_subscribers),
        ):
            yield CounterMetricFamily(f"memslotd_{name}", doc, value=value)
        yield GaugeMetricFamily(
            "memslotd_event_subscribers", "live event subscribers", value=core.events.subscriber_count
        )
        yield GaugeMetricFamily(
            "memslotd_events_retained_bytes", "bytes of the resume window", value=core.events.retained_bytes
        )


COLLECTOR = CoreCollector()
REGISTRY.register(COLLECTOR)


@router.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
async def metrics(request: Request) -> Response:
    COLLECTOR.core = request.app.state.core
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
