"""Memslot use cases: create (PUT by id / POST auto id), modify, delete, list.

Every rule of KVM_SET_USER_MEMORY_REGION2 (M1-M12, D1, C1, O1, B1-B5, X1 in
docs/kernel-rules.md) is checked
here first, in the kernel's order, so the first failing rule names the error.
"""

from __future__ import annotations

import dataclasses
import time

from ..uapi import (
    KVM_MEM_GUEST_MEMFD,
    KVM_MEM_LOG_DIRTY_PAGES,
    KVM_MEM_MAX_NR_PAGES,
    KVM_MEM_READONLY,
    PROBE_WINDOW_GPA,
    PROBE_WINDOW_SIZE,
    RegionArgs,
)
from ..uapi import MMU_MAX_GPA as GPA_LIMIT
from .attributes import PRIVATE, SHARED, attribute_bits
from .backing import guest_backing
from .dirty_log import dirty_ranges
from .errors import Conflict, InvalidRequest, NotFound, PreconditionFailed, QuotaExceeded, kernel_error
from .ranges import Range, check_aligned_range
from .read_models import DirtyLog, SlotPage, SlotView
from .records import VMRecord
from .registry import Registry
from .slot_events import invalidation_of_run, slot_event
from .slot_table import Backing, Slot
from .value_type import value_type

__all__ = [
    "SlotRequest",
    "MemslotService",
    "slot_start_state",
    "set_kernel_attributes",
    "check_preconditions",
    "RESERVED_GPA",
    "GPA_LIMIT",
    "SLOT_FLAG_BITS",
]

SLOT_FLAG_BITS = {"log_dirty_pages": KVM_MEM_LOG_DIRTY_PAGES, "readonly": KVM_MEM_READONLY}
#: The probe's window (see memslotd.kvm.probe_guest): no user slot may overlap it.
RESERVED_GPA = Range.of(PROBE_WINDOW_GPA, PROBE_WINDOW_SIZE)


@value_type
class SlotRequest:
    guest_phys_addr: int
    memory_size: int
    flags: tuple[str, ...] = ()
    shared: Backing | None = None
    private: Backing | None = None
    address_space: int = 0


def default_state(private: bool, init_shared: bool) -> str:
    """Slots with a private part start private, as CoCo VMMs create them (QEMU marks all
    guest_memfd-backed RAM private at creation); a guest_memfd created INIT_SHARED
    says its memory starts shared, so those slots start shared. No private part: shared."""
    if not private or init_shared:
        return SHARED
    return PRIVATE


def slot_start_state(vm: VMRecord, slot: Slot) -> str:
    """The attribute state a new slot's range starts in (see ``default_state``)."""
    if slot.private is None:
        return SHARED
    return default_state(True, "init_shared" in vm.gmems[slot.private.object_id].flags)


class MemslotService:
    def __init__(self, registry: Registry):
        self.reg = registry

    # -- validation -----------------------------------------------------------------
    def _validate(self, vm: VMRecord, slot_id: int, req: SlotRequest) -> tuple[Slot, int]:
        """Return the slot as it would stand and the kernel flags; raise on the first broken rule."""
        reg, page = self.reg, self.reg.page_size
        if not 0 <= slot_id < reg.max_slots:  # M2
            raise InvalidRequest(f"slot id {slot_id} outside 0..{reg.max_slots - 1}", code="SLOT_ID_OUT_OF_RANGE")
        if req.address_space != 0:  # M8 (x86 SMM address space 1 is not offered)
            raise InvalidRequest("only address space 0 is supported", code="ADDRESS_SPACE_UNSUPPORTED")
        flags = 0
        for name in req.flags:
            flags |= SLOT_FLAG_BITS[name]
        if req.private is not None:  # M3
            if req.flags:
                raise InvalidRequest(
                    f"flags {list(req.flags)} cannot be combined with a private (guest_memfd) part",
                    code="FLAGS_INCOMPATIBLE",
                )
            flags |= KVM_MEM_GUEST_MEMFD
        gpa = check_aligned_range(
            req.guest_phys_addr, req.memory_size, page, what="memslot", limit=GPA_LIMIT
        )  # M4 M5 M9 X1
        if req.memory_size // page > KVM_MEM_MAX_NR_PAGES:  # M10
            raise InvalidRequest(f"a slot holds at most {KVM_MEM_MAX_NR_PAGES} pages", code="SLOT_TOO_LARGE")
        if req.shared is None and req.private is None:
            raise InvalidRequest("a memslot needs a shared part, a private part, or both", code="SLOT_NO_BACKING")
        uaddr, source = 0, "none"
        if req.shared is not None:
            shm = self.reg.shm(vm, req.shared.object_id)
            self._check_backing_range(req.shared.offset, req.memory_size, shm.size, shm.page_size, "shared memory")
            uaddr, source = shm.port.address + req.shared.offset, "shared_memory"
        if req.private is not None:
            gmem = self.reg.gmem(vm, req.private.object_id)
            self._check_backing_range(req.private.offset, req.memory_size, gmem.size, page, "guest_memfd")  # M7 B4
            r = Range.of(req.private.offset, req.memory_size)
            bound = gmem.bindings.overlapping(r, ignore=slot_id)
            if bound is not None:  # B5 (the kernel says EINVAL; it is a conflict)
                raise Conflict(
                    f"guest_memfd {gmem.id} range [{r.start:#x}, {r.end:#x}) "
                    f"overlaps the range bound to slot {bound[0]}",
                    code="GMEM_RANGE_BOUND",
                    slot=bound[0],
                )
            if req.shared is None and gmem.port.mappable:
                source = "guest_memfd_mmap"  # shadow paging reads guest memory through userspace_addr
        slot = Slot(
            slot_id,
            req.guest_phys_addr,
            req.memory_size,
            req.flags,
            req.shared,
            req.private,
            uaddr,
            source,
            time.time(),
        )
        self._check_gpa_free(vm, slot_id, gpa)
        return slot, flags

    @staticmethod
    def _check_backing_range(offset: int, size: int, backing_size: int, page: int, what: str) -> None:
        if offset % page:
            raise InvalidRequest(f"{what} offset {offset:#x} is not aligned to {page:#x}", code="RANGE_NOT_ALIGNED")
        if offset + size > backing_size:
            raise InvalidRequest(
                f"{what} range [{offset:#x}, {offset + size:#x}) exceeds its size {backing_size:#x}",
                code="RANGE_OUTSIDE_BACKING",
            )

    @staticmethod
    def _check_gpa_free(vm: VMRecord, slot_id: int, gpa: Range) -> None:
        if gpa.overlaps(RESERVED_GPA):
            raise Conflict(
                f"[{RESERVED_GPA.start:#x}, {RESERVED_GPA.end:#x}) is reserved for the guest probe", code="GPA_RESERVED"
            )
        other = vm.slots.first_overlap(gpa, ignore=slot_id)  # O1
        if other is not None:
            raise Conflict(
                f"GPA range [{gpa.start:#x}, {gpa.end:#x}) overlaps slot {other.slot_id}",
                code="SLOT_OVERLAP",
                slot=other.slot_id,
            )

    # -- create / modify --------------------------------------------------------------
    async def put(
        self,
        vm_id: str,
        slot_id: int | str | None,
        req: SlotRequest,
        *,
        dry_run: bool = False,
        if_match: str | None = None,
        if_none_match: str | None = None,
    ) -> tuple[SlotView, bool]:
        """Create (True) or return the identical existing slot / apply a move or flags change (False).

        ``slot_id`` may be the id as a client wrote it (422 ``SLOT_ID_OUT_OF_RANGE`` unless a
        decimal below the slot budget); ``None`` takes the lowest free id.
        ``dry_run`` checks every rule and returns what would stand, without touching the kernel.
        ``if_match`` / ``if_none_match`` are HTTP preconditions on the slot's ETag (412 when false).
        """
        vm = self.reg.vm(vm_id)
        if isinstance(slot_id, str):
            slot_id = self._new_slot_id(slot_id)
        async with vm.mutation():
            if slot_id is None:
                slot_id = self.lowest_free_id(vm)
            existing = vm.slots.get(slot_id)
            check_preconditions(existing, if_match, if_none_match)
            slot, flags = (
                self._validate(vm, slot_id, req) if existing is None else self._validate_modify(vm, existing, req)
            )
            if existing is not None and existing.same_request(slot):
                return self.view(vm, existing), False
            if existing is None and len(vm.slots) >= self.reg.limits.max_slots_per_vm:
                raise QuotaExceeded(
                    f"VM {vm.id} already has {len(vm.slots)} memslots",
                    code="SLOT_QUOTA",
                    limit=self.reg.limits.max_slots_per_vm,
                )
            if dry_run:
                return self.view(vm, slot), existing is None
            try:
                # Inline on purpose: a memslot ioctl takes microseconds (the raw floor is ~4 us here),
                # a thread hop costs ten times that. Long syscalls (punch, allocate, probe) go off the loop.
                slot = self.resolve_userspace_addr(vm, slot)
                vm.port.set_user_memory_region2(*self.region_args(vm, slot, flags))
            except OSError as exc:
                raise kernel_error(exc, f"set memslot {slot.slot_id}") from exc
            if existing is None and vm.kernel_attributes:
                self._mark_private_in_kernel(vm, slot)
            if existing is None:
                self.commit_create(vm, slot)
                self.reg.emit("memslot.created", vm.id, **slot_event(slot))
                return self.view(vm, slot), True
            self._commit_modify(vm, existing, slot)
            self.reg.emit(
                "memslot.updated", vm.id, **slot_event(slot), previous_guest_phys_addr=existing.guest_phys_addr
            )
            return self.view(vm, slot), False

    @staticmethod
    def kernel_attribute_changes(vm: VMRecord, slot: Slot, *, create: bool) -> list[tuple[int, int, int, int]]:
        """On a kernel-enforced VM, the KVM_SET_MEMORY_ATTRIBUTES calls that keep the kernel equal
        to the map as ``slot`` comes or goes: ``(gpa, size, new bits, old bits)``.

        Attributes are per GFN and outlive memslots (SA*), so the daemon keeps the kernel's
        attribute shared wherever no slot is: a new slot that starts private is marked private
        (as QEMU marks guest_memfd RAM), and a deleted slot's private runs are reset to shared.
        """
        if create:
            if slot_start_state(vm, slot) != PRIVATE:
                return []
            return [(slot.guest_phys_addr, slot.memory_size, attribute_bits(PRIVATE), 0)]
        return [
            (r.start, r.size, 0, attribute_bits(PRIVATE))
            for r, state in vm.attributes.runs(slot.gpa_range)
            if state == PRIVATE
        ]

    def _mark_private_in_kernel(self, vm: VMRecord, slot: Slot) -> None:
        """After creating ``slot``: set its initial attribute; should the kernel refuse, the slot
        is deleted again (nothing half-made) and the refusal reported."""
        try:
            set_kernel_attributes(vm, self.kernel_attribute_changes(vm, slot, create=True))
        except OSError as exc:
            vm.port.delete_user_memory_region(slot.slot_id)
            raise kernel_error(exc, f"mark slot {slot.slot_id} private", ioctl="KVM_SET_MEMORY_ATTRIBUTES") from exc

    @staticmethod
    def lowest_free_id(vm: VMRecord) -> int:
        """The id a create without one gets (429 ``SLOT_BUDGET_EXHAUSTED`` when none is left)."""
        slot_id = vm.slots.lowest_free_id()
        if slot_id is None:
            raise QuotaExceeded(f"VM {vm.id} has no free slot id", code="SLOT_BUDGET_EXHAUSTED")
        return slot_id

    @staticmethod
    def resolve_userspace_addr(vm: VMRecord, slot: Slot) -> Slot:
        """A guest_memfd-only slot's userspace_addr is the daemon's mmap of that guest_memfd
        (shadow paging reads guest memory through it); mapping it is a kernel call."""
        if slot.userspace_addr_source != "guest_memfd_mmap" or slot.private is None:
            return slot
        mapping = vm.gmems[slot.private.object_id].port.map()
        return dataclasses.replace(slot, userspace_addr=mapping.address + slot.private.offset)

    @staticmethod
    def region_args(vm: VMRecord, slot: Slot, flags: int) -> RegionArgs:
        """Arguments of KVM_SET_USER_MEMORY_REGION2 that create ``slot``."""
        gmem = vm.gmems[slot.private.object_id] if slot.private else None
        return (
            slot.slot_id,
            flags,
            slot.guest_phys_addr,
            slot.memory_size,
            slot.userspace_addr,
            slot.private.offset if slot.private else 0,
            gmem.port.fd if gmem else 0,
        )

    @staticmethod
    def kernel_flags(slot: Slot) -> int:
        flags = KVM_MEM_GUEST_MEMFD if slot.private is not None else 0
        for name in slot.flags:
            flags |= SLOT_FLAG_BITS[name]
        return flags

    def _validate_modify(self, vm: VMRecord, existing: Slot, req: SlotRequest) -> tuple[Slot, int]:
        """Only a shared-only slot may move or toggle log_dirty_pages (M11, M12).

        A slot with a private part is refused here even where the kernel would take
        the change: 6.18.y before 9935df5333aa lets a live slot drop its guest_memfd flag (UAF).
        """
        slot, flags = self._validate(vm, existing.slot_id, req)
        if existing.same_request(slot):
            return existing, flags
        if existing.immutable or req.private is not None:
            raise Conflict(
                f"slot {existing.slot_id} has a private part: it can only be deleted",
                code="SLOT_IMMUTABLE",
                slot=existing.slot_id,
            )
        if (slot.memory_size, slot.shared) != (existing.memory_size, existing.shared) or ("readonly" in slot.flags) != (
            "readonly" in existing.flags
        ):
            raise Conflict(
                f"slot {existing.slot_id} exists; only its guest_phys_addr and log_dirty_pages may change",
                code="SLOT_EXISTS",
                slot=existing.slot_id,
            )
        return dataclasses.replace(slot, created_at=existing.created_at, generation=existing.generation + 1), flags

    @staticmethod
    def commit_create(vm: VMRecord, slot: Slot, *, attributes: bool = True) -> None:
        """Enter ``slot`` in the tables; ``attributes=False`` leaves the attribute map to the
        caller (a batch updates it once, for everything that stands)."""
        vm.slots.add(slot)
        if slot.private is not None:
            vm.gmems[slot.private.object_id].bindings.bind(
                Range.of(slot.private.offset, slot.memory_size), slot.slot_id
            )
        if slot.shared is not None:
            vm.shms[slot.shared.object_id].users.add(slot.slot_id)
        if attributes:
            vm.attributes.add(slot.gpa_range, slot_start_state(vm, slot))

    @staticmethod
    def commit_delete(vm: VMRecord, slot: Slot, *, attributes: bool = True) -> None:
        vm.slots.remove(slot.slot_id)
        if attributes:
            vm.attributes.remove(slot.gpa_range)
        if slot.private is not None:
            vm.gmems[slot.private.object_id].bindings.unbind(slot.private.offset)
        if slot.shared is not None:
            vm.shms[slot.shared.object_id].users.discard(slot.slot_id)

    @staticmethod
    def _commit_modify(vm: VMRecord, old: Slot, new: Slot) -> None:
        vm.slots.replace(new)
        if old.guest_phys_addr != new.guest_phys_addr:
            vm.attributes.remove(old.gpa_range)
            vm.attributes.add(new.gpa_range, SHARED)  # only shared-only slots can move

    # -- delete -------------------------------------------------------------------------
    async def delete(
        self, vm_id: str, slot_id: int | str, *, dry_run: bool = False, if_match: str | None = None
    ) -> Slot:
        vm = self.reg.vm(vm_id)
        slot_id = self._slot_key(vm, slot_id)
        async with vm.mutation():
            slot = self.find(vm, slot_id)
            check_preconditions(slot, if_match, None)
            if dry_run:
                return slot
            info = invalidation_of_run([slot])
            resets = self.kernel_attribute_changes(vm, slot, create=False) if vm.kernel_attributes else []
            self.reg.emit("memory.invalidate_start", vm.id, **info)
            try:
                # The attribute first: while the VM's lock is held no vCPU of ours runs, so
                # the moment between the two calls is invisible; a refusal leaves the slot as it was.
                set_kernel_attributes(vm, resets)
                try:
                    vm.port.delete_user_memory_region(slot.slot_id)  # microseconds: inline (see put)
                except OSError:
                    set_kernel_attributes(vm, resets, undo=True)
                    raise
            except OSError as exc:
                self.reg.emit("memory.invalidate_end", vm.id, **info, error=exc.errno)
                raise kernel_error(exc, f"delete memslot {slot_id}") from exc
            self.commit_delete(vm, slot)
            self.reg.emit("memory.invalidate_end", vm.id, **info)
            self.reg.emit("memslot.deleted", vm.id, **slot_event(slot))
            return slot

    # -- dirty log ----------------------------------------------------------------------
    async def fetch_dirty_log(self, vm_id: str, slot_id: int | str, *, ranges: bool = True) -> DirtyLog:
        """The slot's dirty bitmap since the last fetch (KVM_GET_DIRTY_LOG re-arms tracking),
        and with ``ranges`` its run-length form (computed off the event loop)."""
        vm = self.reg.vm(vm_id)
        slot_id = self._slot_key(vm, slot_id)
        page = self.reg.page_size
        async with vm.mutation():
            slot = self.find(vm, slot_id)
            if "log_dirty_pages" not in slot.flags:
                raise Conflict(
                    f"slot {slot_id} was not created with log_dirty_pages", code="DIRTY_LOGGING_OFF", slot=slot_id
                )
            pages = slot.memory_size // page
            try:
                bitmap = await self.reg.blocking(vm.port.get_dirty_log, slot.slot_id, pages)
            except OSError as exc:
                raise kernel_error(exc, f"dirty log of slot {slot_id}") from exc
        runs = await self.reg.blocking(dirty_ranges, bitmap, slot.guest_phys_addr, page, pages) if ranges else None
        return DirtyLog(slot.slot_id, page, pages, bitmap, tuple(runs) if runs is not None else None)

    # -- reads --------------------------------------------------------------------------
    def view(self, vm: VMRecord, slot: Slot) -> SlotView:
        return SlotView(slot, guest_backing(vm, slot, self.reg.host.guest_memfd_only_honoured))

    def get(self, vm_id: str, slot_id: int | str) -> SlotView:
        vm = self.reg.vm(vm_id)
        return self.view(vm, self.find(vm, self._slot_key(vm, slot_id)))

    def list(self, vm_id: str, gpa_start: int, gpa_end: int, after_gpa: int | None, limit: int) -> SlotPage:
        """Up to ``limit`` slots intersecting ``[gpa_start, gpa_end)`` in GPA order, starting after
        ``after_gpa`` (a previous page's ``next_gpa``): O(log n + limit)."""
        vm = self.reg.vm(vm_id)
        items, last = vm.slots.page(Range(gpa_start, max(gpa_end, gpa_start + 1)), after_gpa, limit)
        return SlotPage(tuple(self.view(vm, s) for s in items), last, len(vm.slots))

    def _new_slot_id(self, text: str) -> int:
        """A slot id to create, as a client wrote it: a decimal below the slot budget, or 422."""
        budget = self.reg.max_slots
        if text.isascii() and text.isdigit() and len(text) <= 5 and int(text) < budget:
            return int(text)
        raise InvalidRequest(f"slot id {text[:64]!r} is not an integer 0..{budget - 1}", code="SLOT_ID_OUT_OF_RANGE")

    @staticmethod
    def _slot_key(vm: VMRecord, slot_id: int | str) -> int:
        """A slot id to look up: anything but a decimal 0..65535 names no slot (404)."""
        if isinstance(slot_id, int):
            return slot_id
        if slot_id.isascii() and slot_id.isdigit() and len(slot_id) <= 5 and int(slot_id) <= 65535:
            return int(slot_id)
        raise NotFound(
            f"no slot {slot_id[:64]!r} in VM {vm.id} (slot ids are integers 0..65535)",
            code="SLOT_NOT_FOUND",
            slot=slot_id[:64],
        )

    @staticmethod
    def find(vm: VMRecord, slot_id: int) -> Slot:
        slot = vm.slots.get(slot_id)
        if slot is None:
            raise NotFound(f"no slot {slot_id} in VM {vm.id}", code="SLOT_NOT_FOUND", slot=slot_id)
        return slot


def set_kernel_attributes(vm: VMRecord, changes: list[tuple[int, int, int, int]], *, undo: bool = False) -> int:
    """Apply ``(gpa, size, new, old)`` attribute changes in order (``undo``: restore ``old``,
    newest first, best effort). Returns how many were applied; raises the first refusal after
    undoing the ones before it."""
    if undo:
        for gpa, size, _, old in reversed(changes):
            try:
                vm.port.set_memory_attributes(gpa, size, old)
            except OSError:
                pass
        return 0
    for i, (gpa, size, new, _) in enumerate(changes):
        try:
            vm.port.set_memory_attributes(gpa, size, new)
        except OSError:
            set_kernel_attributes(vm, changes[:i], undo=True)
            raise
    return len(changes)


def check_preconditions(slot: Slot | None, if_match: str | None, if_none_match: str | None) -> None:
    """RFC 9110 If-Match / If-None-Match on a slot's ETag (``*`` = any current slot)."""
    if if_match is not None:
        tags = {t.strip() for t in if_match.split(",")}
        if slot is None or ("*" not in tags and slot.etag not in tags):
            raise PreconditionFailed(
                f"If-Match {if_match} does not match the slot's ETag {slot.etag if slot else '(no slot)'}",
                etag=slot.etag if slot else None,
            )
    if if_none_match is not None and slot is not None:
        tags = {t.strip() for t in if_none_match.split(",")}
        if "*" in tags or slot.etag in tags:
            raise PreconditionFailed(f"If-None-Match {if_none_match}: slot {slot.slot_id} exists", etag=slot.etag)
