// The event feed, newest first: live events, then the state at connect (`initial_state`),
// then a short history from before it. Bounded; filterable by type and VM; pausable.

import { el, fmtTime, names, summarize } from "./format.js";

const MAX_ITEMS = 500;

export class Feed {
  constructor(list, { typeFilter, vmFilter, pause, pausedNote }) {
    Object.assign(this, { list, typeFilter, vmFilter, pause, pausedNote });
    this.held = [];        // live events that arrived while paused
    this.queued = [];      // waiting for the next animation frame
    this.frame = 0;
    typeFilter.onchange = vmFilter.onchange = () => this.applyFilters();
    pause.onchange = () => { if (!pause.checked) { this.queued.push(...this.held); this.held = []; this.schedule(); } this.note(); };
  }

  matches(type, vm) {
    const t = this.typeFilter.value, v = this.vmFilter.value;
    return (!t || (t.endsWith(".") ? type.startsWith(t) : type === t)) && (!v || vm === v);
  }

  item(e, group) {
    const summary = el("summary", {},
      el("time", { datetime: new Date(e.time * 1000).toISOString() }, fmtTime(e.time)),
      el("span", { class: `type t-${e.type.split(".")[0]}` }, e.type),
      el("span", { class: "vm" }, e.vm_id ? names.vm(e.vm_id) : "—"),
      el("span", { class: "sum" }, summarize(e)));
    const details = el("details", {}, summary);
    details.addEventListener("toggle", () => {
      if (details.open && details.childElementCount === 1) {
        details.append(el("pre", {}, JSON.stringify({ seq: e.seq, vm_id: e.vm_id, ...(e.initial ? { initial: true } : {}), data: e.data }, null, 2)));
      }
    }, { once: false });
    const li = el("li", { class: `ev ${group}`, "data-type": e.type, "data-vm": e.vm_id ?? "", "data-seq": e.seq }, details);
    li.hidden = !this.matches(e.type, e.vm_id ?? "");
    return li;
  }

  /** Why there are no live events (the stream refused this page). */
  blocked(text) {
    this.list.querySelector("li.blocked")?.remove();
    this.list.prepend(this.separator(text, "blocked"));
  }

  separator(text, group) { return el("li", { class: `sep ${group}`, role: "separator" }, text); }

  /** A live event: shown at the top on the next frame (held while paused). */
  add(e) {
    if (this.pause.checked) {
      this.held.push(e);
      if (this.held.length > MAX_ITEMS) this.held.shift();
      this.note();
      return;
    }
    this.queued.push(e);
    this.schedule();
  }

  schedule() {
    if (!this.frame) this.frame = requestAnimationFrame(() => this.flush());
  }

  flush() {
    this.frame = 0;
    const items = this.queued.splice(0).slice(-MAX_ITEMS).reverse().map((e) => this.item(e, "live"));  // a 4096-op batch: only what stays
    this.list.prepend(...items);
    this.trim();
  }

  /** The snapshot of one (re)subscription, as a group at the top. */
  addState(events, at, why) {
    this.flush();
    const summary = countKinds(events);
    const shown = events.slice(0, MAX_ITEMS);
    this.list.prepend(this.separator(`${why} ${fmtTime(at)}: current state — ${summary}` +
      (shown.length < events.length ? ` (first ${shown.length} of ${events.length} shown)` : ""), "state"),
    ...shown.map((e) => this.item(e, "state")));
    this.trim();
  }

  /** Events from before the first subscription, below everything else. */
  addHistory(events, complete) {
    if (!events.length) return;
    const what = complete ? `all ${events.length} events` : `the last ${events.length} events`;
    this.list.append(this.separator(`earlier: ${what} before connecting`, "history"),
      ...events.slice().reverse().map((e) => this.item(e, "history")));
    this.trim();
  }

  trim() {
    while (this.list.children.length > MAX_ITEMS) this.list.lastElementChild.remove();
  }

  applyFilters() {
    for (const li of this.list.querySelectorAll("li.ev")) li.hidden = !this.matches(li.dataset.type, li.dataset.vm);
  }

  note() {
    this.pausedNote.textContent = this.pause.checked ? `paused${this.held.length ? ` · ${this.held.length} new` : ""}` : "";
  }

  /** The VM filter lists every VM by name (and keeps the current choice). */
  setVMs(vms) {
    const current = this.vmFilter.value;
    this.vmFilter.replaceChildren(el("option", { value: "" }, "all VMs"),
      ...vms.map((vm) => el("option", { value: vm.id }, vm.name ? `${vm.name} (${vm.id})` : vm.id)));
    if ([...this.vmFilter.options].some((o) => o.value === current)) this.vmFilter.value = current;
    else if (current) { this.vmFilter.append(el("option", { value: current }, names.vm(current))); this.vmFilter.value = current; }
  }
}

function countKinds(events) {
  const n = (t) => events.filter((e) => e.type === t).length;
  const parts = [[n("vm.created"), "VM"], [n("guest_memfd.created"), "guest_memfd"], [n("shared_memory.created"), "shared memory"],
    [n("memslot.created"), "slot"]].filter(([c]) => c).map(([c, w]) => `${c} ${w}${c === 1 || w.endsWith("memory") ? "" : "s"}`);
  return parts.join(", ") || "nothing yet";
}
