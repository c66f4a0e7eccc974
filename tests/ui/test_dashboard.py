"""The dashboard in a real browser: Playwright driving Debian's headless Chromium."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import pytest

from tests.e2e.test_security import ADMIN, READER, free_port, token_file
from tests.helpers import start_daemon

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
MiB, GiB = 1 << 20, 1 << 30

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium is not installed (make test installs it as root)")


@pytest.fixture
def dashboard(short_tmp):
    port = free_port()
    d = start_daemon(short_tmp, "--tcp", f"127.0.0.1:{port}", "--token-file", str(token_file(short_tmp)))
    yield d, f"http://127.0.0.1:{port}"
    d.stop()


def test_dashboard_shows_a_new_slot_in_the_map_and_the_feed(dashboard):
    from playwright.sync_api import expect, sync_playwright

    d, url = dashboard
    api = httpx.Client(base_url=url, headers={"authorization": f"Bearer {ADMIN}"})
    vm = api.post("/v1/vms", json={"name": "ui-demo"}).json()["id"]
    g = api.post(f"/v1/vms/{vm}/guest-memfds", json={"size": 64 * MiB, "flags": []}).json()["id"]
    shm = api.post(f"/v1/vms/{vm}/shared-memory", json={"size": 32 * MiB}).json()["id"]
    api.put(f"/v1/vms/{vm}/memslots/0", json={"guest_phys_addr": 0, "memory_size": 32 * MiB,
                                              "shared": {"shared_memory_id": shm}})
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        page = browser.new_page(viewport={"width": 1400, "height": 800})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(f"{url}/ui/#token={READER}")  # the read-only token: the dashboard never mutates
        expect(page.locator("#conn")).to_have_text("live")
        expect(page.locator("#vm-list li")).to_have_text(f"ui-demo ({vm})")
        expect(page.locator('#map rect.slot-frame[data-slot="0"]')).to_have_count(1)

        # a slot created through the API appears in the map and in the event feed
        api.put(f"/v1/vms/{vm}/memslots/1", json={"guest_phys_addr": 4 * GiB, "memory_size": 64 * MiB,
                                                  "private": {"guest_memfd_id": g}})
        expect(page.locator('#map rect.slot-frame[data-slot="1"]')).to_have_count(1)
        expect(page.locator(f'#map rect.binding[data-binding="{g}"]')).to_have_count(1)
        expect(page.locator('#events li[data-type="memslot.created"]').first).to_be_visible()
        expect(page.locator("#budget-text")).to_have_text("2 / 32764")

        # a conversion recolours the map: private and shared runs, to scale
        api.post(f"/v1/vms/{vm}/memory/convert", json={"guest_phys_addr": 4 * GiB, "size": 32 * MiB, "to": "shared"})
        expect(page.locator('#map rect[data-state="shared"]')).to_have_count(2)  # slot 0, and half of slot 1 (a gap between)
        expect(page.locator('#map rect[data-state="private"]')).to_have_count(1)
        expect(page.locator('#events li[data-type="memory.converted"]').first).to_be_visible()

        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
        assert not errors, errors
        browser.close()
    api.close()
    assert (ARTIFACTS / "dashboard.png").stat().st_size > 10_000
