"""Every API operation, defined once as a request description shared by the sync and async
clients (each executes it its own way: ``Client`` returns values, ``AsyncClient`` coroutines)."""

from __future__ import annotations

import dataclasses
from typing import Any

import orjson

from ..api import schemas as s

__all__ = ["Call", "Operations"]


@dataclasses.dataclass(slots=True)  # not frozen: a frozen __init__ costs a setattr call per field
class Call:
    method: str
    path: str
    json: Any = None
    params: dict[str, Any] | None = None
    model: type | None = None  # parse the answer with this pydantic model
    raw: bool = False  # return the text (NDJSON, metrics)
    headers: dict[str, str] | None = None


def _body(**fields: Any) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if v is not None}


def _dry(dry_run: bool) -> dict[str, str] | None:
    """``?dry_run=true``: check every rule, change nothing (the answer says ``memslotd-dry-run: true``;
    without that header the client raises ``ServerError`` code ``DRY_RUN_IGNORED``)."""
    return {"dry_run": "true"} if dry_run else None


class _JSON:
    """A model stand-in for answers returned as plain JSON."""

    @staticmethod
    def model_validate_json(data: bytes) -> Any:
        return orjson.loads(data)


def _part(kind: str, object_id: str | None, offset: int) -> dict[str, Any] | None:
    if object_id is None:
        return None
    return {f"{kind}_id": object_id, "offset": offset}


class Operations:
    """Mixin: ``self._execute(Call)`` is provided by the client class."""

    def _execute(self, call: Call) -> Any:  # pragma: no cover - overridden
        raise NotImplementedError

    # -- host ----------------------------------------------------------------------------
    def capabilities(self) -> Any:
        return self._execute(Call("GET", "/v1/capabilities", model=s.Capabilities))

    def limits(self) -> Any:
        """The limits in force (slots per VM, byte quotas, body sizes, timeouts) and the committed bytes."""
        return self._execute(Call("GET", "/v1/limits", model=s.LimitsRead))

    def health(self) -> Any:
        return self._execute(Call("GET", "/v1/healthz", model=s.Health))

    def version(self) -> Any:
        return self._execute(Call("GET", "/v1/version", model=s.Version))

    def metrics(self) -> Any:
        return self._execute(Call("GET", "/metrics", raw=True))

    def events_page(
        self,
        since_seq: int = 0,
        *,
        vm_id: str | None = None,
        types: list[str] | None = None,
        wait: float = 0,
        limit: int | None = None,
    ) -> Any:
        """Retained events after ``since_seq`` as NDJSON text (one long-poll; ``events()`` streams)."""
        params = _body(
            since_seq=since_seq, wait=wait, vm_id=vm_id, types=",".join(types) if types else None, limit=limit
        )
        return self._execute(Call("GET", "/v1/events", params=params, raw=True))

    # -- VMs ------------------------------------------------------------------------------
    def openapi(self) -> Any:
        """The daemon's OpenAPI document (a dict): which operations take ``dry_run``, for example."""
        return self._execute(Call("GET", "/v1/openapi.json", model=_JSON))

    def create_vm(self, name: str | None = None, type: str = "default", *, dry_run: bool = False) -> Any:
        return self._execute(
            Call("POST", "/v1/vms", _body(name=name, type=type), _dry(dry_run), model=s.VMPlan if dry_run else s.VMRead)
        )

    def list_vms(self) -> Any:
        return self._execute(Call("GET", "/v1/vms", model=s.VMList))

    def get_vm(self, vm_id: str) -> Any:
        return self._execute(Call("GET", f"/v1/vms/{vm_id}", model=s.VMRead))

    def delete_vm(self, vm_id: str, *, dry_run: bool = False) -> Any:
        return self._execute(
            Call("DELETE", f"/v1/vms/{vm_id}", params=_dry(dry_run), model=s.VMRelease if dry_run else None)
        )

    # -- guest_memfd ----------------------------------------------------------------------
    def create_guest_memfd(
        self, vm_id: str, size: int, flags: list[str] | None = None, name: str | None = None, *, dry_run: bool = False
    ) -> Any:
        body = _body(size=size, flags=list(flags or []), name=name)
        return self._execute(
            Call(
                "POST",
                f"/v1/vms/{vm_id}/guest-memfds",
                body,
                _dry(dry_run),
                model=s.GuestMemfdPlan if dry_run else s.GuestMemfdRead,
            )
        )

    def list_guest_memfds(self, vm_id: str) -> Any:
        return self._execute(Call("GET", f"/v1/vms/{vm_id}/guest-memfds", model=s.GuestMemfdList))

    def get_guest_memfd(self, vm_id: str, gmem_id: str) -> Any:
        return self._execute(Call("GET", f"/v1/vms/{vm_id}/guest-memfds/{gmem_id}", model=s.GuestMemfdRead))

    def delete_guest_memfd(self, vm_id: str, gmem_id: str, *, dry_run: bool = False) -> Any:
        return self._execute(Call("DELETE", f"/v1/vms/{vm_id}/guest-memfds/{gmem_id}", params=_dry(dry_run)))

    def allocate(self, vm_id: str, gmem_id: str, offset: int, length: int) -> Any:
        return self._execute(
            Call("POST", f"/v1/vms/{vm_id}/guest-memfds/{gmem_id}/allocate", {"offset": offset, "length": length})
        )

    def punch_hole(self, vm_id: str, gmem_id: str, offset: int, length: int) -> Any:
        return self._execute(
            Call(
                "POST",
                f"/v1/vms/{vm_id}/guest-memfds/{gmem_id}/punch-hole",
                {"offset": offset, "length": length},
                model=s.Invalidation,
            )
        )

    # -- shared memory --------------------------------------------------------------------
    def create_shared_memory(
        self, vm_id: str, size: int, hugepages: str | None = None, name: str | None = None, *, dry_run: bool = False
    ) -> Any:
        return self._execute(
            Call(
                "POST",
                f"/v1/vms/{vm_id}/shared-memory",
                _body(size=size, hugepages=hugepages, name=name),
                _dry(dry_run),
                model=s.SharedMemoryPlan if dry_run else s.SharedMemoryRead,
            )
        )

    def list_shared_memory(self, vm_id: str) -> Any:
        return self._execute(Call("GET", f"/v1/vms/{vm_id}/shared-memory", model=s.SharedMemoryList))

    def get_shared_memory(self, vm_id: str, shm_id: str) -> Any:
        return self._execute(Call("GET", f"/v1/vms/{vm_id}/shared-memory/{shm_id}", model=s.SharedMemoryRead))

    def delete_shared_memory(self, vm_id: str, shm_id: str, *, dry_run: bool = False) -> Any:
        return self._execute(Call("DELETE", f"/v1/vms/{vm_id}/shared-memory/{shm_id}", params=_dry(dry_run)))

    # -- memslots -------------------------------------------------------------------------
    @staticmethod
    def slot_body(
        guest_phys_addr: int,
        memory_size: int,
        *,
        shared_memory_id: str | None = None,
        shared_offset: int = 0,
        guest_memfd_id: str | None = None,
        private_offset: int = 0,
        flags: list[str] | None = None,
    ) -> dict[str, Any]:
        return _body(
            guest_phys_addr=guest_phys_addr,
            memory_size=memory_size,
            flags=list(flags or []) or None,
            shared=_part("shared_memory", shared_memory_id, shared_offset),
            private=_part("guest_memfd", guest_memfd_id, private_offset),
        )

    def put_memslot(
        self,
        vm_id: str,
        slot: int | None,
        guest_phys_addr: int,
        memory_size: int,
        *,
        dry_run: bool = False,
        if_match: str | None = None,
        if_none_match: str | None = None,
        **parts: Any,
    ) -> Any:
        body = self.slot_body(guest_phys_addr, memory_size, **parts)
        params = _dry(dry_run)
        headers = _body(**{"If-Match": if_match, "If-None-Match": if_none_match}) or None
        if slot is None:
            return self._execute(Call("POST", f"/v1/vms/{vm_id}/memslots", body, params, s.MemslotRead))
        return self._execute(
            Call("PUT", f"/v1/vms/{vm_id}/memslots/{slot}", body, params, s.MemslotRead, headers=headers)
        )

    def list_memslots(
        self, vm_id: str, gpa_start: int = 0, gpa_end: int | None = None, limit: int = 100, cursor: str | None = None
    ) -> Any:
        params = _body(gpa_start=gpa_start, gpa_end=gpa_end, limit=limit, cursor=cursor)
        return self._execute(Call("GET", f"/v1/vms/{vm_id}/memslots", params=params, model=s.MemslotList))

    def get_memslot(self, vm_id: str, slot: int) -> Any:
        return self._execute(Call("GET", f"/v1/vms/{vm_id}/memslots/{slot}", model=s.MemslotRead))

    def delete_memslot(self, vm_id: str, slot: int, *, dry_run: bool = False, if_match: str | None = None) -> Any:
        return self._execute(
            Call(
                "DELETE",
                f"/v1/vms/{vm_id}/memslots/{slot}",
                params=_dry(dry_run),
                headers={"If-Match": if_match} if if_match else None,
            )
        )

    def dirty_log(self, vm_id: str, slot: int) -> Any:
        """Collect and reset the slot's dirty log (the slot needs ``log_dirty_pages``)."""
        return self._execute(Call("POST", f"/v1/vms/{vm_id}/memslots/{slot}/dirty-log", model=s.DirtyLog))

    def batch(self, vm_id: str, ops: list[dict[str, Any]], *, dry_run: bool = False) -> Any:
        return self._execute(
            Call("POST", f"/v1/vms/{vm_id}/memslots:batch", {"ops": ops}, _dry(dry_run), s.BatchResponse)
        )

    # -- memory ---------------------------------------------------------------------------
    def convert(
        self, vm_id: str, guest_phys_addr: int, size: int, to: str, discard: bool = True, *, dry_run: bool = False
    ) -> Any:
        body = {"guest_phys_addr": guest_phys_addr, "size": size, "to": to, "discard": discard}
        return self._execute(Call("POST", f"/v1/vms/{vm_id}/memory/convert", body, _dry(dry_run), s.ConvertResult))

    def attributes(
        self, vm_id: str, gpa_start: int = 0, gpa_end: int | None = None, limit: int = 1000, cursor: str | None = None
    ) -> Any:
        params = _body(gpa_start=gpa_start, gpa_end=gpa_end, limit=limit, cursor=cursor)
        return self._execute(Call("GET", f"/v1/vms/{vm_id}/memory/attributes", params=params, model=s.AttributeList))

    def probe(self, vm_id: str, ops: list[dict[str, Any]]) -> Any:
        return self._execute(Call("POST", f"/v1/vms/{vm_id}/probe", {"ops": ops}, model=s.ProbeResponse))

    def inject_error(self, vm_id: str, gmem_id: str, offset: int) -> Any:
        return self._execute(
            Call(
                "POST",
                f"/v1/vms/{vm_id}/guest-memfds/{gmem_id}/inject-error",
                {"offset": offset},
                model=s.MemoryErrorRead,
            )
        )
