"""Domain core: slot table, attribute map, event log and the use cases. No FastAPI, no cffi."""

from .errors import DomainError
from .events import EventLog
from .memory_core import MemoryCore
from .limits import Limits
from .ranges import Range

__all__ = ["DomainError", "EventLog", "Limits", "MemoryCore", "Range"]
