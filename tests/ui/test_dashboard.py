"""The dashboard in a real browser: Playwright driving Debian's headless Chromium.

One daemon on TCP with a token file serves every test of this module; the sparse layout of
issue 15 is made once with real guest_memfds and shared memory (slots at 2 MiB, 16 MiB,
4 GiB and 8 GiB; 12 private/shared runs made by conversions inside slot 0). Screenshots go
to test-artifacts/ (git-ignored) for a reviewer to look at.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import expect, sync_playwright

from tests.e2e.test_security import ADMIN, READER, free_port
from tests.helpers import start_daemon

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
VIEWER, LISTENER = "viewer-token-0123456789", "listener-token-0123456789"  # only `read`; only `events`
SIZES = {"wide": (1400, 1000), "narrow": (800, 900), "huge": (2560, 1300)}
#: run boundaries inside slot 0 (KiB from its start): 12 runs, several of them one page
RUN_EDGES_KIB = [0, 4, 8, 64, 68, 1024, 1028, 2048, 4096, 4100, 6144, 6148, 8192]

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason="Debian chromium is not installed (make test installs it as root)"
)


def _token_file(tmp: Path) -> Path:
    path = tmp / "tokens.toml"
    entries = [
        ("orchestrator", ["admin"], ADMIN),
        ("dashboard", ["read", "events"], READER),
        ("viewer", ["read"], VIEWER),
        ("listener", ["events"], LISTENER),
    ]
    path.write_text(
        "".join(
            f'[[tokens]]\nname = "{n}"\nscopes = {s!r}\nsha256 = "{hashlib.sha256(t.encode()).hexdigest()}"\n\n'
            for n, s, t in entries
        ).replace("'", '"')
    )
    path.chmod(0o600)
    return path


def make_sparse_layout(api: httpx.Client) -> str:
    """Issue 15's layout; returns the VM id. The big guest_memfds are never populated."""

    def post(path: str, body: dict[str, Any]) -> str:
        r = api.post(path, json=body)
        assert r.status_code == 201, r.text
        return str(r.json()["id"])

    vm = post("/v1/vms", {"name": "sparse"})
    base = f"/v1/vms/{vm}"
    low = post(f"{base}/guest-memfds", {"size": 8 * MiB, "name": "ram-low"})
    low_shared = post(f"{base}/shared-memory", {"size": 8 * MiB, "name": "ram-low-shared"})
    vga = post(f"{base}/shared-memory", {"size": 16 * MiB, "name": "vga"})
    high = post(f"{base}/guest-memfds", {"size": 4 * GiB, "flags": ["mmap", "init_shared"], "name": "ram-high"})
    top = post(f"{base}/guest-memfds", {"size": 8 * GiB, "flags": ["mmap"], "name": "ram-top"})
    for slot, body in enumerate(
        [
            {
                "guest_phys_addr": 2 * MiB,
                "memory_size": 8 * MiB,
                "private": {"guest_memfd_id": low},
                "shared": {"shared_memory_id": low_shared},
            },
            {"guest_phys_addr": 16 * MiB, "memory_size": 16 * MiB, "shared": {"shared_memory_id": vga}},
            {"guest_phys_addr": 4 * GiB, "memory_size": 4 * GiB, "private": {"guest_memfd_id": high}},
            {"guest_phys_addr": 8 * GiB, "memory_size": 8 * GiB, "private": {"guest_memfd_id": top}},
        ]
    ):
        r = api.put(f"{base}/memslots/{slot}", json=body)
        assert r.status_code == 201, r.text
    for start, end in zip(RUN_EDGES_KIB[1::2], RUN_EDGES_KIB[2::2], strict=True):  # every second run to shared
        r = api.post(
            f"{base}/memory/convert",
            json={"guest_phys_addr": 2 * MiB + start * KiB, "size": (end - start) * KiB, "to": "shared"},
        )
        assert r.status_code == 200, r.text
    runs = api.get(f"{base}/memory/attributes", params={"gpa_start": 2 * MiB, "gpa_end": 10 * MiB}).json()["ranges"]
    assert len(runs) == 12
    return vm


class Rig:
    def __init__(self, url: str, api: httpx.Client, browser: Any, vm: str):
        self.url, self.api, self.browser, self.vm = url, api, browser, vm

    def page(self, token: str | None = READER, size: str = "wide", dark: bool = False) -> Any:
        width, height = SIZES[size]
        page = self.browser.new_page(
            viewport={"width": width, "height": height}, color_scheme="dark" if dark else "light"
        )
        page.errors = []
        page.on("pageerror", lambda e: page.errors.append(str(e)))
        page.goto(f"{self.url}/ui/" + (f"#token={token}" if token else ""))
        return page


@pytest.fixture(scope="module")
def rig() -> Iterator[Rig]:
    tmp = Path(tempfile.mkdtemp(prefix="msd-ui-"))
    port = free_port()
    d = start_daemon(tmp, "--tcp", f"127.0.0.1:{port}", "--token-file", str(_token_file(tmp)))
    url = f"http://127.0.0.1:{port}"
    api = httpx.Client(base_url=url, headers={"authorization": f"Bearer {ADMIN}"}, timeout=30)
    try:
        vm = make_sparse_layout(api)
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=CHROMIUM,
                args=[
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-quic",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                ],
            )
            yield Rig(url, api, browser, vm)
            browser.close()
    finally:
        api.close()
        d.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
    assert (ARTIFACTS / f"{name}.png").stat().st_size > 10_000


# Every visible element lies inside its own panel (scrolling frames count as the element),
# panels are disjoint, and the map's slots, holes and tick labels do not overlap each other.
OVERLAPS_JS = """() => {
  const out = [], R = (e) => e.getBoundingClientRect();
  const meet = (a, b) => a.left < b.right - 0.5 && b.left < a.right - 0.5 && a.top < b.bottom - 0.5 && b.top < a.bottom - 0.5;
  const name = (e) => e.tagName + (e.id ? "#" + e.id : "") + (e.className && e.className.baseVal === undefined ? "." + e.className : "");
  const panels = ["header", "#notice", "#vms", "#detail", "#feed"].map((s) => document.querySelector(s)).filter((e) => e && !e.hidden);
  panels.forEach((a, i) => panels.slice(i + 1).forEach((b) => { if (meet(R(a), R(b))) out.push(`${name(a)} overlaps ${name(b)}`); }));
  const inside = (p, pr, node) => {  // a scrolling frame is checked itself; what it clips is not
    for (const e of node.children) {
      const r = R(e), cs = getComputedStyle(e);
      if (r.width && r.height && (r.left < pr.left - 1 || r.right > pr.right + 1 || r.top < pr.top - 1 || r.bottom > pr.bottom + 1))
        out.push(`${name(e)} leaves ${name(p)}`);
      if (cs.overflowX === "visible" && cs.overflowY === "visible") inside(p, pr, e);
    }
  };
  for (const p of panels) inside(p, R(p), p);
  for (const sel of ["#map .slot, #map .gap", "#map .tick", "#map .lane-bar"]) {
    const els = [...document.querySelectorAll(sel)];
    els.forEach((a, i) => els.slice(i + 1).forEach((b) => { if (meet(R(a), R(b))) out.push(`${name(a)} overlaps ${name(b)}: ${a.textContent} / ${b.textContent}`); }));
  }
  for (const slot of document.querySelectorAll("#map .slot")) {  // a slot's labels stay clear of its runs
    const bar = R(slot.querySelector(".runs"));
    for (const t of slot.querySelectorAll(".slot-label, .slot-names")) if (meet(R(t), bar)) out.push(`${t.textContent} is under the runs of slot ${slot.dataset.slot}`);
  }
  return out;
}"""


@pytest.mark.parametrize("size", SIZES)  # the two sizes, and a 2560 px screen
def test_sparse_layout_shows_every_slot_and_run_readably_without_overlap(rig, size):
    for dark in (False, True):
        page = rig.page(size=size, dark=dark)
        expect(page.locator("#conn")).to_have_text("live")
        slots = page.locator("#map .slot[data-slot]")
        expect(slots).to_have_count(4)
        expect(page.locator('#map .slot[data-slot="0"] [data-run]')).to_have_count(12)
        for i in range(4):
            slot = page.locator(f'#map .slot[data-slot="{i}"]')
            box = slot.bounding_box()
            assert box["width"] >= 24, (i, box)
            label = slot.locator(".slot-label")
            assert label.inner_text().startswith(f"#{i}") and label.bounding_box()["width"] > 10
            assert slot.get_attribute("aria-label").startswith(f"slot {i}, ")
        names = [page.locator(f'#map .slot[data-slot="{i}"] .slot-names').all_inner_texts() for i in range(4)]
        assert names == [["ram-low", "ram-low-shared"], ["vga"], ["ram-high"], ["ram-top"]]
        runs = page.locator("#map [data-run]")
        assert runs.count() == 12 + 3  # slot 0's runs, and one run in each other slot
        for i in range(runs.count()):
            box = runs.nth(i).bounding_box()
            assert box["width"] >= 2 and box["height"] >= 2, (i, box)
        holes = page.locator("#map .gap")
        assert [" ".join(holes.nth(i).inner_text().split()) for i in range(holes.count())] == [
            "… 2 MiB hole …",
            "… 6 MiB hole …",
            "… 3.97 GiB hole …",
        ]
        ticks = page.locator("#map .tick").all_inner_texts()
        assert {"0x0", "0x200000", "0x1000000", "0x100000000", "0x200000000", "0x400000000"} <= set(ticks)
        assert page.locator("#map .lane-bar[data-binding]").count() == 5  # 3 guest_memfds, 2 shared-memory regions
        assert page.locator("#slots tbody tr").count() == 4
        assert page.evaluate(OVERLAPS_JS) == []
        shot(page, f"dashboard-{size}{'-dark' if dark else ''}")
        assert not page.errors, page.errors
        page.close()


def test_slot_table_names_backings_explains_guest_sees_and_sorts(rig):
    page = rig.page()
    rows = page.locator("#slots tbody tr")
    expect(rows).to_have_count(4)
    first = rows.nth(0).inner_text()
    assert "ram-low" in first and "ram-low-shared" in first and "12 runs" in first
    assert "private only in memslotd's map" in first  # daemon enforcement: the guest reads shared memory
    assert "mmap-able but not init_shared" in rows.nth(3).inner_text()  # ram-top: guest_backing none, in words
    assert "guest_memfd «ram-high» directly" in rows.nth(2).inner_text()
    page.locator("#slots th button", has_text="size").click()
    expect(rows.nth(0)).to_have_attribute("data-slot", "0")  # 8 MiB is the smallest
    page.locator("#slots th button", has_text="size").click()
    expect(rows.nth(0)).to_have_attribute("data-slot", "3")
    expect(page.locator("#slots th[aria-sort=descending]")).to_have_count(1)
    assert not page.errors, page.errors
    page.close()


def test_slot_detail_opens_by_keyboard_and_lists_every_run(rig):
    page = rig.page(size="narrow")
    slot0 = page.locator('#map .slot[data-slot="0"]')
    expect(slot0).to_be_visible()
    slot0.hover()
    expect(page.locator("#tip")).to_contain_text("slot 0: 0x200000 – 0xa00000 (8 MiB)")
    slot0.locator('[data-run="1"]').hover()  # a one-page run: 3 px wide, and it has its own details
    expect(page.locator("#tip")).to_have_text("shared run in slot 0 at +0x1000\n0x201000 – 0x202000\n4 KiB")
    slot0.focus()
    page.keyboard.press("ArrowRight")
    expect(page.locator('#map .slot[data-slot="1"]')).to_be_focused()
    page.keyboard.press("ArrowLeft")
    page.keyboard.press("Enter")
    detail = page.locator("#slot-detail")
    expect(detail).to_be_visible()
    expect(detail.locator("h3")).to_contain_text("Slot 0 · 0x200000 – 0xa00000 · 8 MiB")
    expect(detail.locator(".runs-table tbody tr")).to_have_count(12)
    for i in range(12):
        assert detail.locator(f'[data-zoom-run="{i}"]').bounding_box()["width"] >= 2
    shot(page, "dashboard-slot-detail")
    detail.locator("button.close").click()
    expect(detail).to_be_hidden()
    expect(slot0).to_be_focused()  # closing returns to the map

    # a change of this VM re-renders the map: the keyboard focus stays on the same slot
    page.locator('#map .slot[data-slot="2"]').focus()
    shm = rig.api.post(f"/v1/vms/{rig.vm}/shared-memory", json={"size": 2 * MiB, "name": "scratch"}).json()["id"]
    expect(page.locator("#unbound")).to_contain_text("shared memory «scratch» 2 MiB")
    expect(page.locator('#map .slot[data-slot="2"]')).to_be_focused()
    rig.api.delete(f"/v1/vms/{rig.vm}/shared-memory/{shm}")
    expect(page.locator("#unbound")).not_to_contain_text("scratch")
    assert not page.errors, page.errors
    page.close()


def test_feed_starts_with_the_current_state_and_history_then_shows_changes_within_a_second(rig):
    page = rig.page()
    events = page.locator("#events")
    expect(page.locator("#conn")).to_have_text("live")
    expect(events.locator("li.sep.state")).to_contain_text("current state — ")
    expect(events.locator('li.state[data-type="memslot.created"]')).to_have_count(4, timeout=5000)
    expect(events.locator("li.sep.history")).to_have_text(
        re.compile(r"^earlier: (all|the last) \d+ events before connecting$")
    )
    converted = events.locator('li.history[data-type="memory.converted"]').first
    expect(converted.locator(".vm")).to_have_text("sparse")  # the VM's name, not its id
    expect(converted.locator(".sum")).to_contain_text("private → shared (slot 0)")

    g = rig.api.post(f"/v1/vms/{rig.vm}/guest-memfds", json={"size": 2 * MiB, "name": "hotplug"}).json()["id"]
    api_done = time.monotonic()
    live = events.locator('li.live[data-type="guest_memfd.created"]')
    expect(live).to_have_count(1, timeout=1000)  # the deadline: within 1 s of the mutation
    assert time.monotonic() - api_done < 1.0
    expect(live.locator(".sum")).to_have_text("«hotplug» 2 MiB")
    expect(live.locator("time")).to_have_text(re.compile(r"^\d\d:\d\d:\d\d\.\d{3}$"))
    live.locator("summary").click()
    expect(live.locator("pre")).to_contain_text('"name": "hotplug"')

    rig.api.put(
        f"/v1/vms/{rig.vm}/memslots/9",
        json={"guest_phys_addr": 64 * MiB, "memory_size": 2 * MiB, "private": {"guest_memfd_id": g}},
    )
    expect(page.locator('#map .slot[data-slot="9"]')).to_have_count(1, timeout=1000)
    expect(events.locator('li.live[data-type="memslot.created"] .sum')).to_contain_text(
        "slot 9 at 0x4000000 +2 MiB ← guest_memfd «hotplug»"
    )
    expect(page.locator(f'#map .lane-bar[data-binding="{g}"]')).to_have_count(1)

    # filters hide what does not match; pause holds new events until it is released
    page.select_option("#type-filter", "guest_memfd.")
    expect(events.locator('li.ev[data-type="memslot.created"]:visible')).to_have_count(0)
    expect(events.locator('li.ev[data-type="guest_memfd.created"]:visible').first).to_be_visible()
    page.select_option("#type-filter", "")
    page.select_option("#vm-filter", rig.vm)
    page.check("#pause")
    rig.api.delete(f"/v1/vms/{rig.vm}/memslots/9")
    expect(page.locator("#paused")).to_have_text("paused · 3 new")  # invalidate_start/end and the delete
    expect(events.locator('li.live[data-type="memslot.deleted"]')).to_have_count(0)
    page.uncheck("#pause")
    expect(events.locator('li.live[data-type="memslot.deleted"]')).to_have_count(1)
    rig.api.delete(f"/v1/vms/{rig.vm}/guest-memfds/{g}")
    expect(page.locator('#map .slot[data-slot="9"]')).to_have_count(0)
    expect(page.locator("#rate-text")).to_contain_text("events/s")
    shot(page, "dashboard-feed")
    assert not page.errors, page.errors
    page.close()


@pytest.mark.parametrize(
    ("token", "says", "badge", "feed"),
    [
        pytest.param(
            VIEWER,
            'This token lacks the "events" scope',
            "no events scope",
            'No live events: the token lacks the "events" scope.',
            id="read-only-token",
        ),
        pytest.param(LISTENER, 'This token lacks the "read" scope', "live", None, id="events-only-token"),
        pytest.param(
            None,
            "No token: this daemon listens on TCP and needs a bearer token",
            "no token",
            "No live events: no token.",
            id="no-token",
        ),
    ],
)
def test_a_missing_scope_or_token_is_named_on_the_page_and_never_shown_as_live(rig, request, token, says, badge, feed):
    page = rig.page(token=token)
    expect(page.locator("#notice")).to_contain_text(says)
    expect(page.locator("#conn")).to_have_text(badge)  # "live" only where the stream really is (events scope)
    if feed is not None:
        expect(page.locator("#events li.blocked")).to_have_text(feed)
        page.wait_for_timeout(300)
        assert page.locator("#conn").inner_text() == badge
    if token == VIEWER:
        expect(page.locator('#map .slot[data-slot="0"]')).to_have_count(1)  # `read` is enough for the map
    if token is None:
        expect(page.locator("#notice")).to_contain_text(
            "the scopes read (REST reads: map, tables) and events (the live feed)"
        )
    shot(page, f"dashboard-{request.node.callspec.id}")
    assert not page.errors, page.errors
    page.close()


def test_a_crowded_vm_is_drawn_bounded_in_the_map_and_the_table(rig):
    vm = rig.api.post("/v1/vms", json={"name": "crowd"}).json()["id"]
    shm = rig.api.post(f"/v1/vms/{vm}/shared-memory", json={"size": 4 * GiB, "name": "pool"}).json()["id"]
    ops = [
        {
            "op": "create",
            "slot": i,
            "guest_phys_addr": i * 4 * MiB,
            "memory_size": 2 * MiB,
            "shared": {"shared_memory_id": shm, "offset": i * 2 * MiB},
        }
        for i in range(600)
    ]
    assert rig.api.post(f"/v1/vms/{vm}/memslots:batch", json={"ops": ops}).status_code == 200
    try:
        page = rig.page(size="narrow")
        page.locator(f'#vm-list li[data-vm="{vm}"] button').click()
        expect(page.locator("#map .note")).to_have_text(
            "The map shows the first 256 of 600 slots by GPA; sort the table to reach any slot.", timeout=15_000
        )  # generous: the machine may be busy
        expect(page.locator("#map .slot")).to_have_count(256)
        expect(page.locator("#slots tbody tr")).to_have_count(500)
        expect(page.locator("#slots tfoot")).to_contain_text("first 500 of 600 slots in this order")
        assert page.locator('#map .slot[data-slot="255"]').bounding_box()["width"] >= 24
        assert page.evaluate(
            "() => document.querySelector('#map').scrollWidth > document.querySelector('#map').clientWidth"
        )
        assert page.evaluate(OVERLAPS_JS) == []
        expect(page.locator("#events li.sep.state")).to_contain_text("(first 500 of ")  # the snapshot, bounded
        assert page.locator("#events li").count() <= 502
        page.screenshot(path=str(ARTIFACTS / "dashboard-crowded.png"))  # the viewport: the full page is 500 rows tall
        assert not page.errors, page.errors
        page.close()
    finally:
        assert rig.api.delete(f"/v1/vms/{vm}").status_code == 204
