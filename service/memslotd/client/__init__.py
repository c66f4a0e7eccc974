"""memslotd client: ``Client`` / ``AsyncClient`` over the Unix socket or TCP + token + TLS.

from memslotd.client import Client
with Client() as c:                       # $MEMSLOTD_SOCKET or /run/memslotd/memslotd.sock
    vm = c.create_vm(name="demo")
    g = c.create_guest_memfd(vm.id, 64 << 20, ["mmap", "init_shared"])
    c.put_memslot(vm.id, 0, 4 << 30, 64 << 20, guest_memfd_id=g.id)
    for event in c.events(vm_id=vm.id):   # resumes by itself; CursorGone when it cannot
        print(event["seq"], event["type"])
"""

from ._client import AsyncClient, Client
from .errors import (
    BadRequest,
    CapabilityMissing,
    Conflict,
    CursorGone,
    MemslotdError,
    NotFound,
    QuotaExceeded,
    ServerError,
    TransportError,
    Unauthorized,
)
from .events import Event, EventStream

__all__ = [
    "AsyncClient",
    "BadRequest",
    "CapabilityMissing",
    "Client",
    "Conflict",
    "CursorGone",
    "Event",
    "EventStream",
    "MemslotdError",
    "NotFound",
    "QuotaExceeded",
    "ServerError",
    "TransportError",
    "Unauthorized",
]
