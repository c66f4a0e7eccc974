"""The event log: monotonic ``seq``, a bounded retained window, subscribers as cursors into it.

Everything here runs on the event loop thread: ``append`` and ``subscribe`` never
await, so a subscriber that registers and reads the backlog in one step sees every
event exactly once (no gap, no duplicate at the seam).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import itertools
import json
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["Event", "EventLog", "Subscriber", "CursorGone", "EVENT_TYPES", "STREAM_TYPES"]

EVENT_TYPES = (
    "vm.created",
    "vm.deleted",
    "guest_memfd.created",
    "guest_memfd.deleted",
    "shared_memory.created",
    "shared_memory.deleted",
    "memslot.created",
    "memslot.updated",
    "memslot.deleted",
    "memory.invalidate_start",
    "memory.invalidate_end",
    "memory.converted",
    "memory.allocated",
    "memory.error",
    "memory.fault",
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
    """One consumer's cursor into the shared log: it holds no events of its own.

    A request may append any number of events (a 4096-op batch appends 12,288, deleting a VM
    with 32,764 slots more than 32,000); the subscriber reads them from the log at its own
    pace. It is cut off only when the next event it has not received leaves the retained
    window (bounded by count and bytes for the whole daemon), i.e. because it is slow, never
    because of the size of one request. Memory per subscriber: this object, whatever
    batch its consumer is sending, and the transport's write buffer (flow-controlled).
    """

    def __init__(self, log: EventLog, accept: Callable[[Event], bool], next_seq: int):
        self._log = log
        self._accept = accept
        self.next_seq = next_seq  # the first seq this subscriber has not yet been given
        self._wakeup = asyncio.Event()
        self.overflow_event = asyncio.Event()  # lets a watchdog cut off a consumer stuck in a send
        self.overflowed = False
        self.closed = False
        self.ended = False  # the log ends (shutdown): hand over what is left, then stop waiting
        self.in_flight = 0  # events drained that the consumer has not reported sent (see ``sent``)

    def _notify(self) -> None:
        if self.next_seq < self._log.oldest_seq:
            self.overflowed = True
            self.overflow_event.set()
        self._wakeup.set()

    def pending(self) -> int:
        """Events appended that it has not been given yet (filtered or not), plus those given
        but not yet reported sent: a stop waits for these before it closes connections."""
        return max(self._log.seq + 1 - self.next_seq, 0) + self.in_flight

    def sent(self, count: int = 1) -> None:
        """The consumer has sent ``count`` of the events it was given."""
        self.in_flight = max(self.in_flight - count, 0)

    async def next_batch(self, timeout: float | None, limit: int = 1000) -> list[Event]:
        """Wait up to ``timeout`` seconds for accepted events; [] on timeout; raises on overflow.

        Returns without awaiting after the log is drained, so a caller that reads
        ``EventLog.seq`` right after an empty batch knows every event up to it was seen.
        """
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            batch = self.drain(limit)
            remaining = None if deadline is None else deadline - loop.time()
            if batch or self.closed or self.ended or (remaining is not None and remaining <= 0):
                return batch
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), remaining)

    def drain(self, limit: int = 1000, until_seq: int | None = None) -> list[Event]:
        """Take up to ``limit`` accepted events from the cursor on (not past ``until_seq``),
        without waiting; raises on overflow."""
        if self.overflowed or self.next_seq < self._log.oldest_seq:
            self.overflowed = True
            raise OverflowError("subscriber fell behind")
        batch: list[Event] = []
        accept = self._accept
        last = self._log.seq if until_seq is None else min(until_seq, self._log.seq)
        for event in self._log.window(self.next_seq, last):
            self.next_seq = event.seq + 1
            if accept(event):
                batch.append(event)
                if len(batch) >= limit:
                    break
        else:
            self.next_seq = max(self.next_seq, last + 1)
        self.in_flight = len(batch)
        return batch

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._log._subscribers.discard(self)
            self._wakeup.set()


class EventLog:
    """The retained window: a list with a moving head (O(1) access by seq, amortized O(1)
    trim), bounded by ``max_events`` and ``max_bytes``; subscribers read it by cursor."""

    def __init__(
        self,
        *,
        max_events: int = 100_000,
        max_bytes: int = 64 << 20,
        encode_data: Callable[[dict[str, Any]], str] = _default_encode,
    ):
        self.boot_id = uuid.uuid4().hex
        self.seq = 0
        self._retained: list[Event] = []
        self._head = 0  # index of the oldest retained event in _retained
        self._bytes = 0
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.encode_data = encode_data
        self._subscribers: set[Subscriber] = set()
        self.dropped_subscribers = 0

    @property
    def oldest_seq(self) -> int:
        """Lowest seq still retained (``seq + 1`` when nothing is retained)."""
        return self._retained[self._head].seq if self._head < len(self._retained) else self.seq + 1

    @property
    def retained_count(self) -> int:
        return len(self._retained) - self._head

    def window(self, first_seq: int, last_seq: int) -> Iterator[Event]:
        """Retained events with ``first_seq <= seq <= last_seq``, oldest first."""
        oldest = self.oldest_seq
        start = self._head + max(first_seq - oldest, 0)
        stop = self._head + (last_seq - oldest) + 1
        return itertools.islice(self._retained, start, max(start, stop))

    def append(self, type_: str, vm_id: str | None, data: dict[str, Any]) -> Event:
        return self.extend([(type_, vm_id, data)])[-1]

    def extend(self, items: list[tuple[str, str | None, dict[str, Any]]]) -> list[Event]:
        """Append events in order (one timestamp, one trim, one wake-up per subscriber).

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
                head = heads[type_, vm_id] = (
                    f',"boot_id":"{self.boot_id}","time":{now!r},"type":"{type_}","vm_id":{_json_string(vm_id)},"data":'
                )
            encoded = f'{{"seq":{seq}{head}{data_json}}}'
            events.append(Event(seq, now, type_, vm_id, encoded))
            added += len(encoded)
        self.seq = seq
        retained.extend(events)
        self._bytes += added + Event.OVERHEAD * len(events)
        self._trim()
        for sub in list(self._subscribers):
            sub._notify()
            if sub.overflowed:
                self.dropped_subscribers += 1
                self._subscribers.discard(sub)
        return events

    def _trim(self) -> None:
        retained, head = self._retained, self._head
        while head < len(retained) and (len(retained) - head > self.max_events or self._bytes > self.max_bytes):
            self._bytes -= len(retained[head].encoded) + Event.OVERHEAD
            retained[head] = None  # type: ignore[call-overload]  # dead prefix, dropped below
            head += 1
        if head > 4096 and head * 2 > len(retained):  # compact: amortized O(1) per event
            del retained[:head]
            head = 0
        self._head = head

    def since(self, since_seq: int, boot_id: str | None = None) -> list[Event]:
        """Retained events with ``seq > since_seq``; raises :class:`CursorGone` on a gap."""
        self.check_cursor(since_seq, boot_id)
        return list(self.window(since_seq + 1, self.seq))

    def check_cursor(self, since_seq: int, boot_id: str | None = None) -> None:
        """Raises :class:`CursorGone` unless every event after ``since_seq`` is retained."""
        if boot_id is not None and boot_id != self.boot_id:
            raise CursorGone("boot_id_mismatch", self.oldest_seq, self.seq)
        if since_seq > self.seq:
            raise CursorGone("cursor_in_future", self.oldest_seq, self.seq)
        if since_seq < self.oldest_seq - 1:
            raise CursorGone("expired", self.oldest_seq, self.seq)

    def subscribe(self, accept: Callable[[Event], bool] = lambda e: True, since_seq: int | None = None) -> Subscriber:
        """A cursor after ``since_seq`` (default: the head, i.e. live events only); the
        caller checks the cursor first (:meth:`check_cursor`)."""
        sub = Subscriber(self, accept, (self.seq if since_seq is None else since_seq) + 1)
        self._subscribers.add(sub)
        return sub

    def end(self) -> None:
        """Shutdown: every subscriber's wait returns once it has been given every event."""
        for sub in self._subscribers:
            sub.ended = True
            sub._wakeup.set()

    def any_pending(self) -> bool:
        """Has any subscriber not yet been given every event?"""
        return any(sub.pending() for sub in self._subscribers)

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    @property
    def retained_bytes(self) -> int:
        return self._bytes
