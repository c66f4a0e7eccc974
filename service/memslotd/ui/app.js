// memslotd dashboard: read-only. State comes from the REST API (scope `read`); changes arrive
// on the event stream (scope `events`), which resumes by seq and re-lists on "gone". The badge
// says "live" only while a subscription is confirmed (its hello arrived). Over TCP the token is
// taken once from the URL fragment (#token=…), kept in sessionStorage, and sent to the stream
// as its first message, so a refusal arrives as a close code the page can explain.

import { el, fmtSize, names } from "./format.js";
import { renderMap, renderSlotDetail } from "./map.js";
import { renderTable } from "./table.js";
import { Feed } from "./feed.js";
import { Series, SAMPLES, bytesChart, rateChart } from "./charts.js";

const HISTORY = 50, POLL_MS = 5000;
const params = new URLSearchParams(location.hash.slice(1));
if (params.get("token")) {
  sessionStorage.setItem("memslotd.token", params.get("token"));
  history.replaceState(null, "", location.pathname);
}
const token = sessionStorage.getItem("memslotd.token");
const headers = token ? { Authorization: `Bearer ${token}` } : {};
const $ = (id) => document.getElementById(id);

const state = { vms: new Map(), selected: null, detail: null, slot: null, cursor: null, bootId: null, live: false };
const bytes = new Series(), rate = { counts: new Array(SAMPLES).fill(0), now: 0 };
const feed = new Feed($("events"), { typeFilter: $("type-filter"), vmFilter: $("vm-filter"), pause: $("pause"), pausedNote: $("paused") });

// ---- status: the badge and the notice say what really is -----------------------------------
function badge(text, kind) { $("conn").textContent = text; $("conn").className = `badge ${kind}`; }
const notices = new Map();
function notice(key, text) {
  if (text) notices.set(key, text); else notices.delete(key);
  $("notice").replaceChildren(...[...notices.values()].map((t) => el("p", {}, t)));
  $("notice").hidden = !notices.size;
}
const HOW = "Open /ui/#token=<token> with a token that has the scopes read (REST reads: map, tables) and events (the live feed).";

class ApiError extends Error {
  constructor(status, problem) { super(problem?.detail || `HTTP ${status}`); Object.assign(this, { status, problem }); }
}

async function api(path) {
  const r = await fetch(path, { headers });
  if (!r.ok) throw new ApiError(r.status, await r.json().catch(() => null));
  return path.startsWith("/v1/events") ? r.text() : r.json();
}

function explainRest(err) {
  $("empty").textContent = "The map and tables need the REST API: see the message above.";
  if (!(err instanceof ApiError)) { notice("rest", `The daemon cannot be reached: ${err.message}`); return; }
  if (err.status === 401) {
    notice("rest", token ? `The daemon refused the token (${err.problem?.detail}). ${HOW}`
      : `No token: this daemon listens on TCP and needs a bearer token. ${HOW}`);
  } else if (err.status === 403 && err.problem?.code === "INSUFFICIENT_SCOPE") {
    notice("rest", `This token lacks the "read" scope, which the memory map, the VM list and the tables need (${err.problem.detail}).`);
  } else {
    notice("rest", `${err.status}: ${err.problem?.detail || err.message}`);
  }
}

// ---- REST state ----------------------------------------------------------------------------
async function allPages(path, key) {
  let cursor = null, out = [];
  do {
    const page = await api(path + (cursor ? `&cursor=${cursor}` : ""));
    out = out.concat(page[key]);
    cursor = page.next_cursor;
  } while (cursor && out.length < 100_000);
  return out;
}

async function loadVMs() {
  const { items } = await api("/v1/vms");
  notice("rest", null);
  state.vms = new Map(items.map((vm) => [vm.id, vm]));
  for (const vm of items) names.learn("vm", vm.id, vm.name);
  if (state.selected && !state.vms.has(state.selected)) state.selected = null;
  if (!state.selected && items.length) state.selected = items[0].id;
  feed.setVMs(items);
  renderVMList();
  await loadDetail();
}

// One load at a time; a change during it makes one more (a steady stream of events on a big
// VM must not keep cancelling loads that take longer than the events' spacing).
let detailBusy = null, detailAgain = false;
function loadDetail() {
  if (detailBusy) { detailAgain = true; return detailBusy; }
  detailBusy = (async () => {
    try {
      do { detailAgain = false; await fetchDetail(); } while (detailAgain);
    } finally { detailBusy = null; }
  })();
  return detailBusy;
}

async function fetchDetail() {
  const id = state.selected;
  if (!id) { state.detail = null; renderDetail(); return; }
  const base = `/v1/vms/${id}`;
  const [vm, slots, attrs, gmems, shms] = await Promise.all([
    api(base), allPages(`${base}/memslots?limit=1000`, "items"), allPages(`${base}/memory/attributes?limit=10000`, "ranges"),
    api(`${base}/guest-memfds`), api(`${base}/shared-memory`)]);
  if (state.selected !== id) { detailAgain = true; return; }  // another VM was picked meanwhile
  for (const o of [...gmems.items, ...shms.items]) names.learn("obj", o.id, o.name);
  state.detail = { vm, slots, attrs, gmems: new Map(gmems.items.map((g) => [g.id, g])), shms: new Map(shms.items.map((m) => [m.id, m])) };
  renderDetail();
}

// Throttled, not debounced: a steady stream of events still refreshes every `ms`.
const timers = {};
function later(key, fn, ms) {
  if (timers[key]) return;
  timers[key] = setTimeout(() => { timers[key] = null; fn().catch(explainRest); }, ms);
}
let vmsFull = false;  // a vm.* event since the last VM refresh: re-list (selection, names, filter) too

// ---- rendering -----------------------------------------------------------------------------
function select(id) { state.selected = id; state.slot = null; renderVMList(); loadDetail().catch(explainRest); }

// Updated in place once a second (charts): a VM's button is kept, so keyboard focus stays on it.
function renderVMList() {
  const ul = $("vm-list"), had = new Map([...ul.children].map((li) => [li.dataset.vm, li]));
  const items = [...state.vms.values()].map((vm) => {
    const li = had.get(vm.id) ?? el("li", { "data-vm": vm.id }, el("button", { type: "button", class: "vm-pick", onclick: () => select(vm.id) }));
    const shared = Math.max(0, vm.slot_bytes - vm.private_bytes);
    li.className = vm.id === state.selected ? "selected" : "";
    li.firstChild.setAttribute("aria-pressed", String(vm.id === state.selected));
    li.firstChild.replaceChildren(el("span", { class: "vm-name" }, vm.name || vm.id), vm.name ? el("span", { class: "muted vm-id" }, vm.id) : "",
      el("span", { class: "vm-stats" }, `${vm.memslots.used} slots · `, el("span", { class: "k-private" }, `${fmtSize(vm.private_bytes)} private`),
        " · ", el("span", { class: "k-shared" }, `${fmtSize(shared)} shared`)),
      bytesChart(bytes.get(vm.id), vm.name || vm.id));
    return li;
  });
  if (items.length !== ul.children.length || items.some((li, i) => ul.children[i] !== li)) ul.replaceChildren(...items);
  $("vm-count").textContent = state.vms.size ? `(${state.vms.size})` : "";
}

/** Re-rendering replaces elements: put keyboard focus back on the same slot or header. */
function keepingFocus(render) {
  const a = document.activeElement;
  const slot = a?.closest?.("#map .slot")?.dataset.slot;
  const header = a?.closest?.("#slots th") ? [...document.querySelectorAll("#slots th")].indexOf(a.closest("th")) : -1;
  render();
  if (slot !== undefined) document.querySelector(`#map .slot[data-slot="${slot}"]`)?.focus();
  else if (header >= 0) document.querySelectorAll("#slots th button")[header]?.focus();
}

function renderDetail() {
  const d = state.detail;
  $("empty").hidden = !!d;
  $("vm").hidden = !d;
  if (!d) return;
  const { vm } = d;
  $("vm-title").replaceChildren(vm.name || vm.id, vm.name ? el("span", { class: "muted" }, ` ${vm.id}`) : "");
  $("budget-bar").style.width = `${(100 * vm.memslots.used) / vm.memslots.max}%`;
  $("budget-text").textContent = `${vm.memslots.used} / ${vm.memslots.max}`;
  $("gmem-bytes").textContent = `${fmtSize(vm.guest_memfd_bytes)} in ${vm.guest_memfds}`;
  $("shm-bytes").textContent = `${fmtSize(vm.shared_memory_bytes)} in ${vm.shared_memory_regions}`;
  $("private-bytes").textContent = `${fmtSize(vm.private_bytes)} of ${fmtSize(vm.slot_bytes)}`;
  $("enforcement").textContent = vm.conversion_enforcement === "daemon" ? "memslotd (no kernel attributes)" : "kernel attributes";
  keepingFocus(() => {
    renderMap($("map"), d, pickSlot);
    renderTable($("slots"), d, pickSlot);
    renderSlotDetail($("slot-detail"), d, state.slot, () => pickSlot(null));
  });
  pickSlot(state.slot, false);
  const unbound = [...d.gmems.values()].filter((g) => !g.bindings.length).map((g) => `guest_memfd «${names.obj(g.id)}» ${fmtSize(g.size)}`)
    .concat([...d.shms.values()].filter((m) => !m.used_by_slots.length).map((m) => `shared memory «${names.obj(m.id)}» ${fmtSize(m.size)}`));
  $("unbound").textContent = unbound.length ? `Not bound to any slot: ${unbound.join(", ")}.` : "";
}

function pickSlot(slot, scroll = true) {
  const previous = state.slot;
  state.slot = slot;
  if (slot === null && scroll) document.querySelector(`#map .slot[data-slot="${previous}"]`)?.focus();  // closed: back to the map
  if (scroll) renderSlotDetail($("slot-detail"), state.detail, slot, () => pickSlot(null));
  for (const n of document.querySelectorAll("#map .slot")) n.classList.toggle("picked", Number(n.dataset.slot) === slot);
  if (slot !== null && scroll) $("slot-detail").scrollIntoView({ block: "nearest" });
}

// one sample a second for the charts; the VM list is re-rendered with them
setInterval(() => {
  for (const vm of state.vms.values()) bytes.push(vm.id, { private: vm.private_bytes, shared: Math.max(0, vm.slot_bytes - vm.private_bytes) });
  bytes.keep(new Set(state.vms.keys()));
  rate.counts.push(rate.now);
  rate.counts.shift();
  rate.now = 0;
  const last = rate.counts[rate.counts.length - 1];
  $("rate").replaceChildren(rateChart(rate.counts));
  $("rate-text").textContent = `${last} events/s · peak ${Math.max(...rate.counts)} in ${SAMPLES} s`;
  renderVMList();
}, 1000);

// ---- tooltip: hover and keyboard focus on anything with data-tip ----------------------------
const tip = $("tip");
function showTip(target, x, y) {
  tip.textContent = target.dataset.tip;
  tip.hidden = false;
  const r = tip.getBoundingClientRect();
  tip.style.left = `${Math.min(x + 12, innerWidth - r.width - 8)}px`;
  tip.style.top = `${y + 16 + r.height > innerHeight ? y - r.height - 8 : y + 16}px`;
}
document.addEventListener("mouseover", (ev) => { const t = ev.target.closest("[data-tip]"); if (t) showTip(t, ev.clientX, ev.clientY); else tip.hidden = true; });
document.addEventListener("focusin", (ev) => {
  const t = ev.target.closest("[data-tip]");
  if (!t) { tip.hidden = true; return; }
  const r = t.getBoundingClientRect();
  showTip(t, r.left, r.bottom - 8);
});
document.addEventListener("focusout", () => { tip.hidden = true; });
window.addEventListener("resize", () => later("resize", async () => renderDetail(), 100));

// ---- event stream --------------------------------------------------------------------------
let backoff = 500, initial = null, historyLoaded = false, pollTimer = null, socket = null;
const watch = { last: 0, interval: 30, hello: null };

// A subscription that stops sending (not even its bookmarks) is not live: say so and reconnect.
setInterval(() => {
  if (!state.live) return;
  const idle = (Date.now() - watch.last) / 1000;
  if (idle > 2 * watch.interval + 5) { badge("stalled", "off"); socket?.close(); }
  $("host").textContent = `daemon ${watch.hello.version} · boot ${watch.hello.boot_id.slice(0, 8)} · at seq ${state.cursor}`;
}, 1000);

function onEvent(e) {
  watch.last = Date.now();
  if (e.type === "hello") {
    watch.interval = e.bookmark_interval_s || 30;
    watch.hello = e;
    if (state.bootId && e.boot_id !== state.bootId) { state.cursor = null; later("relist", loadVMs, 0); }
    state.bootId = e.boot_id;
    state.live = true;
    backoff = 500;
    badge("live", "on");
    notice("stream", null);
    if (state.cursor === null) { state.cursor = e.seq; initial = { events: [], hello: e }; }
    return;
  }
  if (e.type === "gone") { state.cursor = null; later("relist", loadVMs, 0); return; }
  if (typeof e.seq === "number" && !e.initial) state.cursor = Math.max(state.cursor ?? 0, e.seq);
  if (e.initial) {
    if (e.type === "vm.created") names.learn("vm", e.vm_id, e.data.name);
    else if (e.data?.name) names.learn("obj", e.data.id, e.data.name);
    initial?.events.push(e);
    return;
  }
  if (e.type === "bookmark") {
    if (e.initial_state_end && initial) {
      feed.addState(initial.events, initial.hello.time, historyLoaded ? "re-subscribed" : "connected");
      const hello = initial.hello;
      initial = null;
      if (!historyLoaded) { historyLoaded = true; loadHistory(hello).catch(() => {}); }
    }
    return;
  }
  if (e.type === "vm.created") names.learn("vm", e.vm_id, e.data.name);
  if (e.type.endsWith(".created") && e.data?.name && e.data?.id) names.learn("obj", e.data.id, e.data.name);
  rate.now++;
  feed.add(e);
  if (e.vm_id === state.selected) later("detail", loadDetail, 40);
  vmsFull ||= e.type.startsWith("vm.");
  later("vms", () => { const full = vmsFull; vmsFull = false; return full ? loadVMs() : refreshVMs(); }, 150);
}

async function refreshVMs() {
  const { items } = await api("/v1/vms");
  state.vms = new Map(items.map((vm) => [vm.id, vm]));
  renderVMList();
}

async function loadHistory(hello) {
  const since = Math.max(hello.oldest_seq - 1, hello.seq - HISTORY);
  if (since >= hello.seq) return;
  const text = await api(`/v1/events?since_seq=${since}&boot_id=${hello.boot_id}&wait=0&limit=${HISTORY}`);
  const events = text.split("\n").filter(Boolean).map((l) => JSON.parse(l)).filter((e) => e.type !== "bookmark" && e.seq <= hello.seq);
  for (const e of events) if (e.type === "vm.created") names.learn("vm", e.vm_id, e.data.name);
  feed.addHistory(events, since === 0);
}

function startPolling() {
  if (!pollTimer) pollTimer = setInterval(() => loadVMs().catch(explainRest), POLL_MS);
}

function connect() {
  const q = new URLSearchParams();
  if (state.cursor !== null) { q.set("since_seq", state.cursor); q.set("boot_id", state.bootId); }
  else q.set("initial_state", "true");
  const ws = socket = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/v1/events?${q}`, ["memslotd.v1"]);
  ws.onopen = () => { if (token) ws.send(JSON.stringify({ type: "auth", token })); };
  ws.onmessage = (msg) => onEvent(JSON.parse(msg.data));
  ws.onclose = (ev) => {
    state.live = false;
    initial = null;
    if (ev.code === 4401 || ev.code === 4403) {
      badge(ev.code === 4403 ? "no events scope" : "not authorized", "bad");
      notice("stream", ev.code === 4403
        ? `This token lacks the "events" scope: the live event feed needs it. The page re-reads the state every ${POLL_MS / 1000} s instead.`
        : token ? `The event stream refused the token. ${HOW}` : `No token: the event stream needs one. ${HOW}`);
      feed.blocked(ev.code === 4403 ? 'No live events: the token lacks the "events" scope.' : "No live events: no valid token.");
      if (ev.code === 4403) startPolling();
      return;
    }
    if (ev.code === 4410) { state.cursor = null; later("relist", loadVMs, 0); }
    badge(`reconnecting in ${Math.round(backoff / 100) / 10} s`, "off");
    setTimeout(connect, backoff);
    backoff = Math.min(backoff * 2, 10000);
  };
}

// ---- start ---------------------------------------------------------------------------------
const TYPES = ["vm.created", "vm.deleted", "guest_memfd.created", "guest_memfd.deleted", "shared_memory.created",
  "shared_memory.deleted", "memslot.created", "memslot.updated", "memslot.deleted", "memory.converted", "memory.invalidate_start",
  "memory.invalidate_end", "memory.allocated", "memory.error", "memory.fault", "memory.attributes"];
$("type-filter").replaceChildren(el("option", { value: "" }, "all types"),
  el("optgroup", { label: "families" }, ...["vm.", "guest_memfd.", "shared_memory.", "memslot.", "memory."].map((f) => el("option", { value: f }, `${f}*`))),
  el("optgroup", { label: "types" }, ...TYPES.map((t) => el("option", { value: t }, t))));
badge("connecting…", "off");
loadVMs().catch(explainRest).finally(() => {
  if (!token && notices.has("rest") && /No token/.test(notices.get("rest"))) {
    badge("no token", "bad");
    feed.blocked("No live events: no token.");
    return;
  }
  connect();
});
