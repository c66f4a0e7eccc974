// The guest-physical memory map. Not to scale on purpose: holes between slots get a fixed,
// labelled width, every slot at least MIN_SLOT px (more for bigger slots, by log of size), and
// every private/shared run inside a slot at least MIN_RUN px. Addresses are written, not implied.

import { el, fmtSize, hex, names, guestSees } from "./format.js";

const GAP = 64, MIN_SLOT = 76, JOIN = 3, MIN_RUN = 3, MAX_MAP_SLOTS = 256;
const TICK_H = 13, SLOT_TOP = 2 * TICK_H + 8, SLOT_H = 74, LANE_H = 18, CHAR_W = 6.4;

/** Slots and holes left to right, with x positions in px. */
export function layoutSegments(slots, avail) {
  const segs = [];
  let end = 0;
  for (const s of slots) {
    if (s.guest_phys_addr > end) segs.push({ kind: "gap", start: end, end: s.guest_phys_addr });
    else if (segs.length) segs.push({ kind: "join" });
    segs.push({ kind: "slot", slot: s, start: s.guest_phys_addr, end: s.guest_phys_addr + s.memory_size });
    end = s.guest_phys_addr + s.memory_size;
  }
  const weight = (s) => Math.max(1, Math.log2(s.memory_size / 4096) + 1);
  const fixedOf = { gap: GAP, join: JOIN, slot: MIN_SLOT };
  const fixed = segs.reduce((a, s) => a + fixedOf[s.kind], 0);
  const totalWeight = slots.reduce((a, s) => a + weight(s), 0) || 1;
  const extra = Math.max(0, avail - fixed);
  let x = 0;
  for (const seg of segs) {
    seg.x = x;
    seg.w = fixedOf[seg.kind] + (seg.kind === "slot" ? (extra * weight(seg.slot)) / totalWeight : 0);
    x += seg.w;
  }
  return { segs, width: Math.max(avail, x) };
}

/** The slot's range cut into pieces (runs, and "none" where the map has no attribute).
 *  `attrs` is in GPA order (as the API lists it): found by bisection, so 30 000 slots stay cheap. */
export function slotPieces(slot, attrs) {
  const s0 = slot.guest_phys_addr, s1 = s0 + slot.memory_size, out = [];
  let lo = 0, hi = attrs.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (attrs[mid].guest_phys_addr + attrs[mid].size <= s0) lo = mid + 1; else hi = mid;
  }
  let pos = s0;
  for (let i = lo; i < attrs.length && attrs[i].guest_phys_addr < s1; i++) {
    const a = attrs[i], a0 = Math.max(a.guest_phys_addr, s0), a1 = Math.min(a.guest_phys_addr + a.size, s1);
    if (a1 <= a0) continue;
    if (a0 > pos) out.push({ state: "none", start: pos, end: a0 });
    out.push({ state: a.state, start: a0, end: a1 });
    pos = a1;
  }
  if (pos < s1) out.push({ state: "none", start: pos, end: s1 });
  return out;
}

/** Widths for pieces in `width` px, each >= min (proportional otherwise); null if they cannot fit. */
export function pieceWidths(pieces, width, min = MIN_RUN) {
  if (pieces.length * min > width) return null;
  const size = pieces.map((p) => p.end - p.start), pinned = new Set();
  for (;;) {
    const rest = width - pinned.size * min;
    const free = size.reduce((a, s, i) => a + (pinned.has(i) ? 0 : s), 0) || 1;
    let changed = false;
    size.forEach((s, i) => { if (!pinned.has(i) && (rest * s) / free < min) { pinned.add(i); changed = true; } });
    if (!changed) return size.map((s, i) => (pinned.has(i) ? min : (rest * s) / free));
  }
}

const runTip = (p, slot) => `${p.state} run in slot ${slot.slot} at +${hex(p.start - slot.guest_phys_addr)}\n` +
  `${hex(p.start)} – ${hex(p.end)}\n${fmtSize(p.end - p.start)}`;

/** Runs drawn into `bar` (absolutely positioned children); returns how many runs were drawn. */
function drawRuns(bar, slot, pieces, width, tag) {
  const widths = pieceWidths(pieces, width);
  if (!widths) {  // more runs than pixels: 2-px bins, mixed ones striped; the detail view lists them
    const s0 = pieces[0].start, span = pieces[pieces.length - 1].end - s0, bins = Math.floor(width / 2);
    const states = Array.from({ length: bins }, () => new Set());
    for (const p of pieces) {
      const b0 = Math.floor(((p.start - s0) / span) * bins), b1 = Math.ceil(((p.end - s0) / span) * bins);
      for (let b = b0; b < Math.max(b1, b0 + 1) && b < bins; b++) states[b].add(p.state);
    }
    states.forEach((set, b) => bar.append(el("div", { class: `run ${set.size > 1 ? "mixed" : [...set][0]}`, style: { left: `${b * 2}px`, width: "2px" } })));
    return 0;
  }
  let x = 0, n = 0;
  pieces.forEach((p, i) => {
    if (p.state !== "none") {
      bar.append(el("div", { class: `run ${p.state}`, "data-state": p.state, [tag]: n++, "data-tip": runTip(p, slot),
        style: { left: `${x}px`, width: `${widths[i]}px` } }));
    }
    x += widths[i];
  });
  return n;
}

function backingNames(s) {
  return [s.private && names.obj(s.private.guest_memfd_id), s.shared && names.obj(s.shared.shared_memory_id)].filter(Boolean);
}

function slotTip(s, pieces, sees) {
  const priv = pieces.filter((p) => p.state === "private").reduce((a, p) => a + p.end - p.start, 0);
  return [`slot ${s.slot}: ${hex(s.guest_phys_addr)} – ${hex(s.guest_phys_addr + s.memory_size)} (${fmtSize(s.memory_size)})`,
    s.private ? `private part: guest_memfd «${names.obj(s.private.guest_memfd_id)}» +${hex(s.private.offset)}` : "no private part",
    s.shared ? `shared part: shared memory «${names.obj(s.shared.shared_memory_id)}» +${hex(s.shared.offset)}` : "no shared part",
    `${pieces.filter((p) => p.state !== "none").length} runs, ${fmtSize(priv)} private`,
    `guest sees: ${sees.short}`, "click or Enter: detail"].join("\n");
}

/** Tick labels at slot edges, in up to two rows; a label that fits in neither is left out. */
function drawTicks(inner, marks, width) {
  const rowsEnd = [-Infinity, -Infinity];
  for (const { x, gpa } of marks) {
    const text = hex(gpa), w = text.length * CHAR_W + 6;
    const left = Math.min(Math.max(x - w / 2, 0), width - w);
    const row = rowsEnd.findIndex((r) => left >= r);
    inner.append(el("div", { class: "tick-line", style: { left: `${x}px`, top: `${row < 0 ? 2 * TICK_H : (row + 1) * TICK_H}px` } }));
    if (row < 0) continue;
    rowsEnd[row] = left + w;
    inner.append(el("div", { class: "tick", style: { left: `${left}px`, top: `${row * TICK_H}px`, width: `${w}px` } }, text));
  }
}

/** Render the map for one VM into #map. `onPick(slot)` opens the detail view. */
export function renderMap(container, d, onPick) {
  const all = d.slots, slots = all.slice(0, MAX_MAP_SLOTS);
  container.replaceChildren();
  if (!slots.length) { container.append(el("p", { class: "muted" }, "No memslots yet.")); return; }
  const { segs, width } = layoutSegments(slots, container.clientWidth - 2);
  // binding lanes: guest_memfds on the first, shared memory on the second (a slot has at most one of each)
  const lanes = [slots.some((s) => s.private) && "gmem", slots.some((s) => s.shared) && "shm"].filter(Boolean);
  const laneTop = (kind) => SLOT_TOP + SLOT_H + 6 + lanes.indexOf(kind) * LANE_H;
  const inner = el("div", { class: "map-inner", style: { width: `${width}px`, height: `${SLOT_TOP + SLOT_H + 6 + lanes.length * LANE_H}px` } });
  const marks = [];
  for (const seg of segs) {
    if (seg.kind === "gap") {
      const size = fmtSize(seg.end - seg.start);
      inner.append(el("div", { class: "gap", style: { left: `${seg.x}px`, width: `${seg.w}px`, top: `${SLOT_TOP}px`, height: `${SLOT_H}px` },
        "data-tip": `hole: ${hex(seg.start)} – ${hex(seg.end)}\n${size}, not guest memory` },
      el("span", {}, "…"), el("span", {}, size), el("span", {}, "hole …")));
    }
    if (seg.kind !== "slot") continue;
    const s = seg.slot, pieces = slotPieces(s, d.attrs), sees = guestSees(s, d.gmems, d.vm.conversion_enforcement);
    const box = el("div", { class: "slot", "data-slot": s.slot, tabindex: 0, role: "button",
      "aria-label": `slot ${s.slot}, ${fmtSize(s.memory_size)} at ${hex(s.guest_phys_addr)}, ${backingNames(s).join(" and ") || "no backing"}`,
      "data-tip": slotTip(s, pieces, sees), style: { left: `${seg.x}px`, width: `${seg.w}px`, top: `${SLOT_TOP}px`, height: `${SLOT_H}px` },
      onclick: () => onPick(s.slot), onkeydown: (ev) => slotKeys(ev, s.slot, onPick) },
    el("div", { class: "slot-label" }, el("b", {}, `#${s.slot}`), " ", fmtSize(s.memory_size),
      s.guest_backing === "none" ? el("span", { class: "warn", title: sees.long }, " ⚠ exits") : null),
    ...(backingNames(s).length ? backingNames(s) : ["no backing"]).map((n) => el("div", { class: "slot-names" }, n)));
    const bar = el("div", { class: "runs" });
    box.append(bar);
    inner.append(box);
    const drawn = drawRuns(bar, s, pieces, seg.w - 2, "data-run");
    if (!drawn && pieces.some((p) => p.state !== "none")) box.classList.add("dense");
    marks.push({ x: seg.x, gpa: s.guest_phys_addr });
    const next = segs[segs.indexOf(seg) + 1];
    if (!next || next.kind === "gap") marks.push({ x: seg.x + seg.w, gpa: seg.end });
    for (const [id, offset, kind] of [[s.private?.guest_memfd_id, s.private?.offset, "gmem"], [s.shared?.shared_memory_id, s.shared?.offset, "shm"]]) {
      if (id === undefined) continue;
      inner.append(el("div", { class: `lane-bar ${kind}`, "data-binding": id,
        "data-tip": `${kind === "gmem" ? "guest_memfd" : "shared memory"} «${names.obj(id)}» bound to slot ${s.slot}\nfile offset ${hex(offset)} – ${hex(offset + s.memory_size)}`,
        style: { left: `${seg.x + 1}px`, width: `${seg.w - 2}px`, top: `${laneTop(kind)}px` } },
      `${names.obj(id)} +${hex(offset)}`));
    }
  }
  if (segs[0].kind === "gap") marks.unshift({ x: 0, gpa: 0 });
  drawTicks(inner, marks, width);
  container.append(inner);
  const notes = [];
  if (all.length > slots.length) notes.push(`The map shows the first ${slots.length} of ${all.length} slots by GPA; sort the table to reach any slot.`);
  if (notes.length) container.append(el("p", { class: "muted note" }, notes.join(" ")));
}

function slotKeys(ev, slot, onPick) {
  if (ev.key === "Enter" || ev.key === " ") { ev.preventDefault(); onPick(slot); return; }
  if (ev.key !== "ArrowRight" && ev.key !== "ArrowLeft") return;
  const all = [...ev.currentTarget.parentElement.querySelectorAll(".slot")];
  const next = all[all.indexOf(ev.currentTarget) + (ev.key === "ArrowRight" ? 1 : -1)];
  if (next) { ev.preventDefault(); next.focus(); }
}

/** The zoom view of one slot: its runs across the full width, with offsets, and listed. */
export function renderSlotDetail(container, d, slotId, onClose) {
  const s = d.slots.find((x) => x.slot === slotId);
  container.hidden = !s;
  if (!s) { container.replaceChildren(); return; }
  const pieces = slotPieces(s, d.attrs), runs = pieces.filter((p) => p.state !== "none");
  const sees = guestSees(s, d.gmems, d.vm.conversion_enforcement);
  const width = Math.max(container.clientWidth - 24, runs.length * (MIN_RUN + 1));
  const bar = el("div", { class: "runs zoom", style: { width: `${width}px` } });
  drawRuns(bar, s, pieces, width, "data-zoom-run");
  const rows = runs.slice(0, 200).map((p) => el("tr", {},
    el("td", {}, el("span", { class: `sw ${p.state}` }), ` ${p.state}`), el("td", {}, hex(p.start)), el("td", {}, hex(p.end)),
    el("td", {}, `+${hex(p.start - s.guest_phys_addr)}`), el("td", { class: "num" }, fmtSize(p.end - p.start))));
  container.replaceChildren(...[
    el("div", { class: "detail-head" },
      el("h3", {}, `Slot ${s.slot} · ${hex(s.guest_phys_addr)} – ${hex(s.guest_phys_addr + s.memory_size)} · ${fmtSize(s.memory_size)}`),
      el("button", { type: "button", class: "close", "aria-label": "close slot detail", onclick: onClose }, "×")),
    el("p", {}, el("b", {}, "Guest sees: "), sees.long),
    el("div", { class: "zoom-scroll" }, el("div", { class: "zoom-axis" },
      el("span", {}, hex(s.guest_phys_addr)), el("span", {}, hex(s.guest_phys_addr + s.memory_size))), bar),
    el("table", { class: "runs-table" },
      el("thead", {}, el("tr", {}, ...["state", "from", "to", "offset in slot", "size"].map((h) => el("th", { scope: "col" }, h)))),
      el("tbody", {}, rows)),
    runs.length > rows.length ? el("p", { class: "muted" }, `first ${rows.length} of ${runs.length} runs`) : ""]);
}
