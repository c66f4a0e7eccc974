// Formatting shared by the map, the tables and the feed: sizes, addresses, names, words.

const UNITS = [["PiB", 2 ** 50], ["TiB", 2 ** 40], ["GiB", 2 ** 30], ["MiB", 2 ** 20], ["KiB", 2 ** 10]];

/** 8 MiB, 3.97 GiB, 4 KiB, 512 B: three significant digits at most. */
export function fmtSize(n) {
  for (const [unit, scale] of UNITS) {
    if (n >= scale) {
      const v = n / scale;
      return `${v >= 100 ? Math.round(v) : +v.toPrecision(3)} ${unit}`;
    }
  }
  return `${n} B`;
}

export const hex = (n) => "0x" + n.toString(16);

export function fmtTime(epochSeconds) {
  const d = new Date(epochSeconds * 1000);
  const p = (v, w = 2) => String(v).padStart(w, "0");
  return `${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}.${p(d.getMilliseconds(), 3)}`;
}

/** Names the operator chose, learnt from REST lists and from events (ids stay the fallback). */
export const names = {
  vms: new Map(),      // vm id -> name
  objects: new Map(),  // guest_memfd / shared memory id -> name
  vm(id) { return (id && this.vms.get(id)) || id || ""; },
  obj(id) { return (id && this.objects.get(id)) || id || ""; },
  learn(kind, id, name) { if (id && name) (kind === "vm" ? this.vms : this.objects).set(id, name); },
};

/** A DOM element in one call: el("td", {class: "num", title: "…"}, "text", child…). */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "style") Object.assign(node.style, v);
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined) node.append(c);
  return node;
}

/** What the guest's accesses reach (`guest_backing`), in words an operator can act on. */
export function guestSees(slot, gmems, enforcement) {
  const gmem = slot.private && gmems.get(slot.private.guest_memfd_id);
  const gname = slot.private ? `guest_memfd «${names.obj(slot.private.guest_memfd_id)}»` : "";
  const sname = slot.shared ? `shared memory «${names.obj(slot.shared.shared_memory_id)}»` : "";
  switch (slot.guest_backing) {
    case "shared_memory":
      return {
        short: sname,
        long: slot.private && enforcement === "daemon"
          ? `Every page reads and writes ${sname}. This host has no KVM memory attributes, so "private" ` +
            `pages are private only in memslotd's map (enforcement: daemon); ${gname} is not reached by the guest.`
          : `Every page reads and writes ${sname}.`,
      };
    case "guest_memfd":
      return { short: gname, long: `Every page reads and writes ${gname} directly: it is mmap-able, which makes the slot guest_memfd-only.` };
    case "per_attribute":
      return { short: "per page", long: `Private pages read ${gname}, shared pages read ${sname}, as each page's attribute says.` };
    default: {
      let why = "No host memory is behind this slot: a guest access exits to the VMM (MMIO).";
      if (gmem && gmem.flags.includes("mmap") && !gmem.flags.includes("init_shared"))
        why = `Nothing: ${gname} is mmap-able but not init_shared, so the slot has no host mapping and a guest access exits (MMIO).`;
      else if (slot.private && !slot.shared)
        why = `Nothing: only a private part (${gname}) and this host cannot map private memory for the guest; accesses exit (MMIO).`;
      return { short: "nothing (exits)", long: why };
    }
  }
}

/** One line for the feed. */
export function summarize(e) {
  const d = e.data || {};
  const gm = (id) => `guest_memfd «${names.obj(id)}»`;
  const sm = (id) => `shared memory «${names.obj(id)}»`;
  const backing = (s) => [s.private && gm(s.private.guest_memfd_id), s.shared && sm(s.shared.shared_memory_id)]
    .filter(Boolean).join(" + ") || "no backing";
  const file = (x) => (x.guest_memfd_id ? gm(x.guest_memfd_id) : x.shared_memory_id ? sm(x.shared_memory_id) : "");
  switch (e.type) {
    case "vm.created": return `VM «${d.name || e.vm_id}» (${d.type})`;
    case "vm.deleted": return `VM «${names.vm(e.vm_id)}» and all it owned`;
    case "guest_memfd.created":
      return `«${d.name || d.id}» ${fmtSize(d.size)}${d.flags && d.flags.length ? ` [${d.flags.join(", ")}]` : ""}`;
    case "shared_memory.created": return `«${d.name || d.id}» ${fmtSize(d.size)}${d.hugepages ? ` (${d.hugepages} pages)` : ""}`;
    case "guest_memfd.deleted": case "shared_memory.deleted": return `«${names.obj(d.id)}»`;
    case "memslot.created":
      return `slot ${d.slot} at ${hex(d.guest_phys_addr)} +${fmtSize(d.memory_size)} ← ${backing(d)}${d.batch ? " (batch)" : ""}`;
    case "memslot.updated":
      return d.previous_guest_phys_addr !== undefined && d.previous_guest_phys_addr !== d.guest_phys_addr
        ? `slot ${d.slot} moved ${hex(d.previous_guest_phys_addr)} → ${hex(d.guest_phys_addr)}`
        : `slot ${d.slot} flags [${(d.flags || []).join(", ")}]`;
    case "memslot.deleted": return `slot ${d.slot}${d.reason ? ` (${d.reason.replace("_", " ")})` : ""}`;
    case "memory.converted":
      return `${hex(d.guest_phys_addr)} +${fmtSize(d.size)} ${d.from} → ${d.to} (slot ${d.slot})${d.discarded ? ", stale side discarded" : ""}`;
    case "memory.invalidate_start": case "memory.invalidate_end": {
      const end = e.type.endsWith("_end") ? (d.error ? ` failed errno ${d.error}` : d.cancelled ? " cancelled" : " done") : "";
      return `${file(d)} +${hex(d.offset)} ${fmtSize(d.length)} (${(d.reason || "").replaceAll("_", " ")})${end}`;
    }
    case "memory.allocated": return `${gm(d.guest_memfd_id)} +${hex(d.offset)} ${fmtSize(d.length)}`;
    case "memory.error": return `${file(d)} +${hex(d.offset)}: ${d.action || "memory error"}`;
    case "memory.fault": return `guest fault at ${hex(d.gpa)} (${d.errno_name || d.errno})`;
    case "memory.attributes": {
      const runs = d.ranges || [];
      const priv = runs.filter((r) => r.state === "private").reduce((a, r) => a + r.size, 0);
      const all = runs.reduce((a, r) => a + r.size, 0);
      return `${runs.length} runs: ${fmtSize(priv)} private, ${fmtSize(all - priv)} shared`;
    }
    default: return JSON.stringify(d).slice(0, 120);
  }
}
