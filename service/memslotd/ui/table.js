// The slot table: names instead of ids, the slot's state runs, "guest sees" in words; sortable.

import { el, fmtSize, hex, names, guestSees } from "./format.js";
import { slotPieces } from "./map.js";

const MAX_ROWS = 500;  // in the chosen order: sort to see the rest
const sort = { key: "gpa", dir: 1 };

const part = (p, idKey) => (p ? { name: names.obj(p[idKey]), id: p[idKey], offset: p.offset } : null);

function rowsOf(d) {
  return d.slots.map((s) => {
    const pieces = slotPieces(s, d.attrs).filter((p) => p.state !== "none");
    const priv = pieces.filter((p) => p.state === "private").reduce((a, p) => a + p.end - p.start, 0);
    return { s, pieces, priv, sees: guestSees(s, d.gmems, d.vm.conversion_enforcement),
      privatePart: part(s.private, "guest_memfd_id"), sharedPart: part(s.shared, "shared_memory_id") };
  });
}

const COLUMNS = [
  { key: "slot", label: "slot", value: (r) => r.s.slot },
  { key: "gpa", label: "GPA range", value: (r) => r.s.guest_phys_addr },
  { key: "size", label: "size", value: (r) => r.s.memory_size },
  { key: "backing", label: "backing", value: (r) => `${r.privatePart?.name ?? "~"} ${r.sharedPart?.name ?? "~"}` },
  { key: "runs", label: "state runs", value: (r) => r.priv / r.s.memory_size },
  { key: "sees", label: "guest sees", value: (r) => r.sees.short },
];

function partLine(what, p) {
  if (!p) return null;
  return el("div", { title: `${p.id} at file offset ${hex(p.offset)}` }, `${what}: `, el("span", { class: "name" }, p.name),
    p.offset ? el("span", { class: "muted" }, ` +${hex(p.offset)}`) : null);
}

function runsCell(r) {
  const total = r.s.memory_size, bar = el("span", { class: "minibar", "aria-hidden": "true" });
  for (const p of r.pieces.slice(0, 64)) {
    bar.append(el("span", { class: p.state, style: { width: `${Math.max(2, (100 * (p.end - p.start)) / total)}%` } }));
  }
  const nPriv = r.pieces.filter((p) => p.state === "private").length, n = r.pieces.length;
  return el("td", { class: "runs-cell", title: `${nPriv} private runs, ${n - nPriv} shared runs` }, bar,
    el("div", {}, `${n} run${n === 1 ? "" : "s"}`),
    el("div", { class: "small" }, el("span", { class: "k-private" }, `${fmtSize(r.priv)} private`)),
    el("div", { class: "small" }, el("span", { class: "k-shared" }, `${fmtSize(total - r.priv)} shared`)));
}

export function renderTable(table, d, onPick) {
  const rows = rowsOf(d);
  const col = COLUMNS.find((c) => c.key === sort.key);
  rows.sort((a, b) => {
    const va = col.value(a), vb = col.value(b);
    return (va < vb ? -1 : va > vb ? 1 : a.s.guest_phys_addr - b.s.guest_phys_addr) * sort.dir;
  });
  table.tHead.replaceChildren(el("tr", {}, ...COLUMNS.map((c, i) => el("th", {
    scope: "col", "aria-sort": c.key === sort.key ? (sort.dir > 0 ? "ascending" : "descending") : "none" },
  el("button", { type: "button", class: "sort", onclick: () => {
    sort.dir = sort.key === c.key ? -sort.dir : 1;
    sort.key = c.key;
    renderTable(table, d, onPick);
    table.tHead.querySelectorAll("button")[i].focus();
  } }, c.label, el("span", { class: "arrow", "aria-hidden": "true" }, c.key === sort.key ? (sort.dir > 0 ? " ▲" : " ▼") : ""))))));
  table.tBodies[0].replaceChildren(...rows.slice(0, MAX_ROWS).map((r) => el("tr", { "data-slot": r.s.slot },
    el("td", {}, el("button", { type: "button", class: "link", onclick: () => onPick(r.s.slot), title: "show in detail" }, `#${r.s.slot}`)),
    el("td", { class: "mono" }, hex(r.s.guest_phys_addr), el("div", { class: "muted" }, `– ${hex(r.s.guest_phys_addr + r.s.memory_size)}`)),
    el("td", { class: "num" }, fmtSize(r.s.memory_size)),
    el("td", { class: "backing" }, partLine("private", r.privatePart), partLine("shared", r.sharedPart),
      r.privatePart || r.sharedPart ? null : el("span", { class: "muted" }, "none")), runsCell(r),
    el("td", { class: "sees" }, el("b", {}, r.sees.short), el("div", { class: "muted" }, r.sees.long)))));
  table.tFoot.replaceChildren(rows.length > MAX_ROWS
    ? el("tr", {}, el("td", { colspan: COLUMNS.length, class: "muted" }, `first ${MAX_ROWS} of ${rows.length} slots in this order`)) : "");
}
