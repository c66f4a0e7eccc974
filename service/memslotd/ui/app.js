// memslotd dashboard: read-only. State comes from the REST API; changes arrive on the event
// stream, which reconnects and resumes by seq (a "gone" answer makes it re-list everything).
// Over TCP the token is taken once from the URL fragment (#token=…) and kept in sessionStorage.

const MAX_EVENTS = 500;
const params = new URLSearchParams(location.hash.slice(1));
if (params.get("token")) {
  sessionStorage.setItem("memslotd.token", params.get("token"));
  history.replaceState(null, "", location.pathname);
}
const token = sessionStorage.getItem("memslotd.token");
const headers = token ? { Authorization: `Bearer ${token}` } : {};

const state = { vms: new Map(), selected: null, detail: null, cursor: null, bootId: null, caps: null };
const $ = (id) => document.getElementById(id);

async function api(path) {
  const r = await fetch(path, { headers });
  if (!r.ok) throw new Error(`${path}: HTTP ${r.status}`);
  return r.json();
}

function fmtSize(n) {
  const units = [["P", 2 ** 50], ["T", 2 ** 40], ["G", 2 ** 30], ["M", 2 ** 20], ["K", 2 ** 10]];
  for (const [u, s] of units) if (n >= s) return `${+(n / s).toFixed(n % s ? 2 : 0)}${u}`;
  return `${n}`;
}
const hex = (n) => "0x" + n.toString(16);

// ---- state ---------------------------------------------------------------------------------
async function loadVMs() {
  const { items } = await api("/v1/vms");
  state.vms = new Map(items.map((vm) => [vm.id, vm]));
  if (state.selected && !state.vms.has(state.selected)) state.selected = null;
  if (!state.selected && items.length) state.selected = items[0].id;
  renderVMList();
  await loadDetail();
}

async function allPages(path, key) {
  let cursor = null, out = [];
  do {
    const sep = path.includes("?") ? "&" : "?";
    const page = await api(path + (cursor ? `${sep}cursor=${cursor}` : ""));
    out = out.concat(page[key]);
    cursor = page.next_cursor;
  } while (cursor);
  return out;
}

async function loadDetail() {
  const id = state.selected;
  if (!id) { state.detail = null; renderDetail(); return; }
  const base = `/v1/vms/${id}`;
  const [vm, slots, attrs, gmems] = await Promise.all([
    api(base), allPages(`${base}/memslots?limit=1000`, "items"),
    allPages(`${base}/memory/attributes?limit=10000`, "ranges"), api(`${base}/guest-memfds`),
  ]);
  if (state.selected === id) { state.detail = { vm, slots, attrs, gmems: gmems.items }; renderDetail(); }
}

let refreshTimer = null;
function scheduleRefresh(vmListToo) {
  clearTimeout(refreshTimer);
  refreshTimer = setTimeout(() => (vmListToo ? loadVMs() : loadDetail()).catch(showError), 50);
}

// ---- rendering -----------------------------------------------------------------------------
function renderVMList() {
  const ul = $("vm-list");
  ul.replaceChildren(...[...state.vms.values()].map((vm) => {
    const li = document.createElement("li");
    li.textContent = vm.name ? `${vm.name} (${vm.id})` : vm.id;
    li.dataset.vm = vm.id;
    li.className = vm.id === state.selected ? "selected" : "";
    li.onclick = () => { state.selected = vm.id; renderVMList(); loadDetail().catch(showError); };
    return li;
  }));
}

function renderDetail() {
  const d = state.detail;
  $("empty").hidden = !!d;
  $("vm").hidden = !d;
  if (!d) return;
  const { vm, slots, attrs } = d;
  $("vm-title").textContent = vm.name ? `${vm.name} — ${vm.id}` : vm.id;
  $("budget-bar").style.width = `${(100 * vm.memslots.used) / vm.memslots.max}%`;
  $("budget-text").textContent = `${vm.memslots.used} / ${vm.memslots.max}`;
  $("gmem-bytes").textContent = fmtSize(vm.guest_memfd_bytes);
  $("shm-bytes").textContent = fmtSize(vm.shared_memory_bytes);
  $("private-bytes").textContent = fmtSize(vm.private_bytes);
  $("enforcement").textContent = vm.conversion_enforcement;
  renderMap(slots, attrs);
  $("slots").tBodies[0].replaceChildren(...slots.map((s) => {
    const tr = document.createElement("tr");
    tr.dataset.slot = s.slot;
    const cells = [s.slot, hex(s.guest_phys_addr), fmtSize(s.memory_size),
      s.shared ? `${s.shared.shared_memory_id}+${hex(s.shared.offset)}` : "-",
      s.private ? `${s.private.guest_memfd_id}+${hex(s.private.offset)}` : "-", s.guest_backing];
    tr.replaceChildren(...cells.map((c) => Object.assign(document.createElement("td"), { textContent: c })));
    return tr;
  }));
}

// The map is linear in GPA between the lowest and highest slot address: to scale, gaps included.
function renderMap(slots, attrs) {
  const svg = $("map"), NS = "http://www.w3.org/2000/svg";
  const width = svg.clientWidth || 800, pad = 10, top = 24, h = 40;
  svg.replaceChildren();
  if (!slots.length) return;
  const lo = Math.min(...slots.map((s) => s.guest_phys_addr));
  const hi = Math.max(...slots.map((s) => s.guest_phys_addr + s.memory_size));
  const x = (gpa) => pad + ((gpa - lo) / (hi - lo)) * (width - 2 * pad);
  const rect = (cls, x0, x1, y, hh, title, data = {}) => {
    const r = document.createElementNS(NS, "rect");
    Object.entries({ x: x0, y, width: Math.max(x1 - x0, 1), height: hh, class: cls }).forEach(([k, v]) => r.setAttribute(k, v));
    Object.entries(data).forEach(([k, v]) => (r.dataset[k] = v));
    const t = document.createElementNS(NS, "title");
    t.textContent = title;
    r.appendChild(t);
    svg.appendChild(r);
  };
  for (const a of attrs) {
    rect(a.state, x(a.guest_phys_addr), x(a.guest_phys_addr + a.size), top, h,
      `${a.state} ${hex(a.guest_phys_addr)} +${fmtSize(a.size)}`, { state: a.state });
  }
  for (const s of slots) {
    const x0 = x(s.guest_phys_addr), x1 = x(s.guest_phys_addr + s.memory_size);
    rect("slot-frame", x0, x1, top, h, `slot ${s.slot}: ${hex(s.guest_phys_addr)} +${fmtSize(s.memory_size)}`, { slot: s.slot });
    if (s.private) rect("binding", x0, x1, top + h + 3, 6, `slot ${s.slot} ← ${s.private.guest_memfd_id} @ ${hex(s.private.offset)}`,
      { binding: s.private.guest_memfd_id });
  }
  for (const [gpa, anchor] of [[lo, "start"], [hi, "end"]]) {
    const t = document.createElementNS(NS, "text");
    t.setAttribute("x", x(gpa)); t.setAttribute("y", 14); t.setAttribute("text-anchor", anchor);
    t.textContent = hex(gpa);
    svg.appendChild(t);
  }
}

function addEvent(e) {
  if ($("pause").checked) return;
  const type = $("type-filter").value;
  if (type && !e.type.startsWith(type)) return;
  if ($("vm-filter").checked && e.vm_id !== state.selected) return;
  const li = document.createElement("li");
  li.value = e.seq;
  li.dataset.type = e.type;
  const data = JSON.stringify(e.data ?? {});
  li.innerHTML = `<span class="type"></span> <span class="vm muted"></span> <span class="data"></span>`;
  li.querySelector(".type").textContent = e.type;
  li.querySelector(".vm").textContent = e.vm_id ?? "";
  li.querySelector(".data").textContent = data.length > 160 ? data.slice(0, 160) + "…" : data;
  const ol = $("events");
  ol.prepend(li);
  while (ol.children.length > MAX_EVENTS) ol.lastChild.remove();
}

function showError(err) { console.error(err); $("host").textContent = String(err); }

// ---- event stream --------------------------------------------------------------------------
let backoff = 250;
function connect() {
  const q = new URLSearchParams();
  if (state.cursor !== null) { q.set("since_seq", state.cursor); q.set("boot_id", state.bootId); }
  const protocols = ["memslotd.v1"].concat(token ? [`memslotd.token.${token}`] : []);
  const ws = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/v1/events?${q}`, protocols);
  ws.onopen = () => { backoff = 250; $("conn").textContent = "live"; $("conn").className = "badge on"; };
  ws.onmessage = (msg) => {
    const e = JSON.parse(msg.data);
    if (e.type === "hello") {
      if (state.bootId && e.boot_id !== state.bootId) { state.cursor = null; loadVMs().catch(showError); }
      state.bootId = e.boot_id;
      if (state.cursor === null) state.cursor = e.seq;
      $("host").textContent = `boot ${e.boot_id.slice(0, 8)} · enforcement ${e.enforcement}`;
      return;
    }
    if (e.type === "gone") { state.cursor = null; loadVMs().catch(showError); return; }  // re-list, resubscribe
    if (typeof e.seq === "number") state.cursor = Math.max(state.cursor ?? 0, e.seq);
    if (e.type === "bookmark") return;
    addEvent(e);
    if (e.type.startsWith("vm.")) scheduleRefresh(true);
    else if (e.vm_id === state.selected) scheduleRefresh(false);
    else if (e.type.startsWith("memslot.") || e.type.startsWith("guest_memfd.") || e.type.startsWith("shared_memory.")) scheduleRefresh(true);
  };
  ws.onclose = (ev) => {
    $("conn").textContent = "reconnecting…"; $("conn").className = "badge off";
    if (ev.code === 4410) { state.cursor = null; loadVMs().catch(showError); }
    setTimeout(connect, backoff);
    backoff = Math.min(backoff * 2, 5000);
  };
}

loadVMs().catch(showError).finally(connect);
