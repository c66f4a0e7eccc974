"""Domain core: the public face the API uses. No FastAPI, no cffi, no kernel objects.

``MemoryCore`` is the service object; its services mirror the API's route files (``vms``,
``memory_objects``, ``memslots`` + ``batch``, ``memory``, ``probe``, ``host_view``, ``events``,
``host``). Requests go in as values (``SlotRequest``, ``BatchOp``, ``ProbeOp``), reads come out
as read models (``VMView``, ``SlotView``, …), refusals as ``DomainError`` subclasses. The API
imports nothing but this package (tests/test_structure.py).
"""

from .batch import MAX_BATCH_OPS, BatchFailed, BatchOp
from .errors import (
    CapabilityMissing,
    Conflict,
    DomainError,
    HostResourcesExhausted,
    InvalidRequest,
    KernelError,
    NotFound,
    PreconditionFailed,
    QuotaExceeded,
    ShuttingDown,
    VMBusy,
)
from .events import EVENT_TYPES, STREAM_TYPES, CursorGone, Event, EventLog, Subscriber
from .limits import Limits
from .memory import ConversionFailed, ConversionResult
from .memory_core import MemoryCore
from .memslots import GPA_LIMIT, RESERVED_GPA, SlotRequest
from .probe import MAX_PROBE_BYTES, ProbeOp
from .ranges import MAX_JSON_INT, Range
from .read_models import (
    AttributePage,
    AttributeRun,
    DirtyLog,
    GmemBindingView,
    GuestMemfdView,
    HostUsage,
    ProbeReport,
    SharedMemoryView,
    SlotPage,
    SlotView,
    VMView,
)
from .records import ID_PATTERN, VM_ID_PATTERN
from .slot_table import Backing, Slot

__all__ = [
    # the service object
    "MemoryCore",
    "Limits",
    "EventLog",
    # request values
    "SlotRequest",
    "Backing",
    "BatchOp",
    "ProbeOp",
    "Range",
    # read models
    "VMView",
    "GuestMemfdView",
    "GmemBindingView",
    "SharedMemoryView",
    "Slot",
    "SlotView",
    "SlotPage",
    "AttributeRun",
    "AttributePage",
    "DirtyLog",
    "ProbeReport",
    "ConversionResult",
    "HostUsage",
    # events
    "Event",
    "Subscriber",
    "CursorGone",
    "EVENT_TYPES",
    "STREAM_TYPES",
    # errors
    "DomainError",
    "InvalidRequest",
    "NotFound",
    "Conflict",
    "PreconditionFailed",
    "CapabilityMissing",
    "QuotaExceeded",
    "VMBusy",
    "HostResourcesExhausted",
    "ShuttingDown",
    "KernelError",
    "BatchFailed",
    "ConversionFailed",
    # limits the API states
    "MAX_BATCH_OPS",
    "MAX_JSON_INT",
    "MAX_PROBE_BYTES",
    "GPA_LIMIT",
    "RESERVED_GPA",
    "ID_PATTERN",
    "VM_ID_PATTERN",
]
