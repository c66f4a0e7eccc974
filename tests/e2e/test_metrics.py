"""Prometheus metrics after real traffic."""

from __future__ import annotations

MiB, GiB = 1 << 20, 1 << 30


def test_metrics_cover_requests_state_conversions_and_events(daemon):
    with daemon.client() as c:
        vm = c.post("/v1/vms", json={}).json()["id"]
        g = c.post(f"/v1/vms/{vm}/guest-memfds", json={"size": 4 * MiB}).json()["id"]
        c.put(
            f"/v1/vms/{vm}/memslots/0",
            json={"guest_phys_addr": 4 * GiB, "memory_size": 4 * MiB, "private": {"guest_memfd_id": g}},
        )
        c.post(f"/v1/vms/{vm}/memory/convert", json={"guest_phys_addr": 4 * GiB, "size": MiB, "to": "private"})
        c.get(f"/v1/vms/{vm}/memslots/9")  # a 404
        text = c.get("/metrics").text
    assert 'route="/v1/vms/{vm_id}/memslots/{slot}",status="201"' in text  # by route template, not by path
    assert 'route="/v1/vms/{vm_id}/memslots/{slot}",status="404"' in text
    assert "memslotd_vms 1.0" in text
    assert f'memslotd_memslots{{vm_id="{vm}"}} 1.0' in text
    samples = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }
    assert samples[f'memslotd_guest_memfd_bytes{{vm_id="{vm}"}}'] == 4 * MiB
    assert "memslotd_conversions_total 0.0" in text  # INIT_SHARED is off: already private, nothing changed
    assert "memslotd_events_total" in text and "memslotd_event_subscribers 0.0" in text
