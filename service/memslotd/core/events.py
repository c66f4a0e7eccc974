"""The event log: monotonic ``seq``, a bounded retained window, bounded subscribers.

Everything here runs on the event loop thread: ``append`` and ``subscribe`` never
await, so a subscriber that registers and reads the backlog in one step sees every
event exactly once (no gap, no duplicate at the seam).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import functools
import itertools
import json
import time
import uuid
from collections.abc import Callable
from typing import Any

__all__ = ["Event", "EventLog", "Subscriber", "CursorGone", "EVENT_TYPES", "STREAM_TYPES"]

EVENT_TYPES = (
    "vm.created", "vm.deleted",
    "guest_memfd.created", "guest_memfd.deleted",
    "shared_memory.created", "shared_memory.deleted",
    "memslot.created", "memslot.updated", "memslot.deleted",
    "memory.invalidate_start", "memory.invalidate_end",
    "memory.converted", "memory.allocated", "memory.error", "memory.fault",
)
#: Only in streams: the state snapshot, cursor bookmarks, the greeting and the "gone" notice.
STREAM_TYPES = ("memory.attributes", "bookmark", "hello", "gone")


@dataclasses.dataclass(slots=True)
class Event:
    """A retained event: the JSON frame (encoded once for every subscriber) plus the fields
    filters need. ``data`` is decoded on demand, so the window holds one string per event.
    Never changed once made (not ``frozen``: that triples the cost of making one, and a
    4096-op batch makes up to 12,288)."""

    seq: int
    time: float
    type: str
    vm_id: str | None
    encoded: str

    @property
    def data(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.encoded)["data"]
        return data

    #: approximate memory per retained event beyond its frame (object, deque slot)
    OVERHEAD = 96


class CursorGone(Exception):
    """The cursor is older than the retained window or from another boot."""

    def __init__(self, reason: str, oldest_seq: int, current_seq: int):
        super().__init__(reason)
        self.reason = reason
        self.oldest_seq = oldest_seq
        self.current_seq = current_seq


@functools.lru_cache(maxsize=256)
def _json_string(value: str | None) -> str:
    return json.dumps(value)


def _default_encode(data: dict[str, Any]) -> str:
    return json.dumps(data, separators=(",", ":"))


class Subscriber:
    """A bounded queue of events for one consumer. Overflow ends it, never silently."""

    def __init__(self, log: "EventLog", capacity: int, accept: Callable[[Event], bool]):
        self._log = log
        self._queue: collections.deque[Event] = collections.deque()
        self._capacity = capacity
        self._accept = accept
        self._wakeup = asyncio.Event()
        self.overflow_event = asyncio.Event()  # lets a watchdog cut off a consumer stuck in a send
        self.overflowed = False
        self.closed = False

    def offer(self, event: Event) -> None:
        if self.overflowed or self.closed or not self._accept(event):
            return
        if len(self._queue) >= self._capacity:
            self.overflowed = True
            self.overflow_event.set()
            self._queue.clear()  # the consumer is told "gone"; keeping the backlog would only cost memory
        else:
            self._queue.append(event)
        self._wakeup.set()

    def pending(self) -> int:
        return len(self._queue)

    async def next_batch(self, timeout: float | None) -> list[Event]:
        """Wait up to ``timeout`` seconds for events; [] on timeout; raises on overflow.

        Returns without awaiting after the queue is drained, so a caller that reads
        ``EventLog.seq`` right after an empty batch knows every event up to it was seen.
        """
        if not self._queue and not self.overflowed:
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout)
        return self.drain()

    def drain(self) -> list[Event]:
        """Take what is queued, without waiting; raises on overflow."""
        if self.overflowed:
            raise OverflowError("subscriber fell behind")
        batch = list(self._queue)
        self._queue.clear()
        return batch

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._log._subscribers.discard(self)
            self._wakeup.set()


class EventLog:
    def __init__(self, *, max_events: int = 100_000, max_bytes: int = 64 << 20,
                 encode_data: Callable[[dict[str, Any]], str] = _default_encode):
        self.boot_id = uuid.uuid4().hex
        self.seq = 0
        self._retained: collections.deque[Event] = collections.deque()
        self._bytes = 0
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.encode_data = encode_data
        self._subscribers: set[Subscriber] = set()
        self.dropped_subscribers = 0

    @property
    def oldest_seq(self) -> int:
        """Lowest seq still retained (``seq + 1`` when nothing is retained)."""
        return self._retained[0].seq if self._retained else self.seq + 1

    def append(self, type_: str, vm_id: str | None, data: dict[str, Any]) -> Event:
        return self.extend([(type_, vm_id, data)])[-1]

    def extend(self, items: list[tuple[str, str | None, dict[str, Any]]]) -> list[Event]:
        """Append events in order (one timestamp, one trim, one pass per subscriber).

        Only ``data`` goes through the JSON encoder, once per distinct dict (an invalidate
        pair shares one); the envelope around it is formatted here. Its other fields are
        safe to format: numbers, a hex boot id and type names from EVENT_TYPES; the VM id
        goes through ``json.dumps`` (cached) although the daemon makes them (``vm-<hex>``)."""
        now = time.time()
        encode_data, retained = self.encode_data, self._retained
        seq, added = self.seq, 0
        events = []
        heads: dict[tuple[str, str | None], str] = {}  # the envelope between seq and data
        last_data: dict[str, Any] | None = None
        data_json = ""
        for type_, vm_id, data in items:
            seq += 1
            if data is not last_data:
                last_data, data_json = data, encode_data(data)
            head = heads.get((type_, vm_id))
            if head is None:
                head = heads[type_, vm_id] = (f',"boot_id":"{self.boot_id}","time":{now!r},"type":"{type_}",'
                                              f'"vm_id":{_json_string(vm_id)},"data":')
            encoded = f'{{"seq":{seq}{head}{data_json}}}'
            events.append(Event(seq, now, type_, vm_id, encoded))
            added += len(encoded)
        self.seq = seq
        retained.extend(events)
        self._bytes += added + Event.OVERHEAD * len(events)
        while retained and (len(retained) > self.max_events or self._bytes > self.max_bytes):
            self._bytes -= len(retained.popleft().encoded) + Event.OVERHEAD
        for sub in list(self._subscribers):
            for event in events:
                sub.offer(event)
            if sub.overflowed:
                self.dropped_subscribers += 1
                self._subscribers.discard(sub)
        return events

    def since(self, since_seq: int, boot_id: str | None = None) -> list[Event]:
        """Retained events with ``seq > since_seq``; raises :class:`CursorGone` on a gap."""
        if boot_id is not None and boot_id != self.boot_id:
            raise CursorGone("boot_id_mismatch", self.oldest_seq, self.seq)
        if since_seq > self.seq:
            raise CursorGone("cursor_in_future", self.oldest_seq, self.seq)
        if since_seq < self.oldest_seq - 1:
            raise CursorGone("expired", self.oldest_seq, self.seq)
        if not self._retained:
            return []
        first = self._retained[0].seq
        return list(itertools.islice(self._retained, max(since_seq + 1 - first, 0), None))

    def subscribe(self, capacity: int, accept: Callable[[Event], bool] = lambda e: True) -> Subscriber:
        sub = Subscriber(self, capacity, accept)
        self._subscribers.add(sub)
        return sub

    def any_pending(self) -> bool:
        """Does any subscriber still have queued events?"""
        return any(sub.pending() for sub in self._subscribers)

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    @property
    def retained_bytes(self) -> int:
        return self._bytes
