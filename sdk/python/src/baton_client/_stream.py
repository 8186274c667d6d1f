"""What the sync and async event streams share: the SSE decoder, where a stream
stands (and so what each reconnection asks for), and when to stop reconnecting."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple
from urllib.parse import quote

from .errors import BatonConnectionError, BatonError, BatonTimeout, Unavailable, UntrustedCertificate
from .models import Event

log = logging.getLogger("baton_client")

# The longest a stream waits for a byte before it reconnects. The server writes a
# keep-alive comment at least every 15 s, so this only ends connections that died
# without a word (a machine that vanished, a dropped route).
READ_TIMEOUT = 60.0


@dataclass
class Frame:
    id: Optional[str]
    event: str
    data: str


@dataclass
class Decoder:
    """Server-sent events, line by line (the line without its line break)."""

    _id: Optional[str] = None
    _event: str = ""
    _data: List[str] = field(default_factory=list)

    def feed(self, line: str) -> Optional[Frame]:
        if not line:
            frame = Frame(self._id, self._event or "message", "\n".join(self._data)) if self._data else None
            self._id, self._event, self._data = None, "", []
            return frame
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            self._id = value
        return None


class Position:
    """Where a stream stands: the id of the last event it yielded.

    Each connection asks for the events after it (`Last-Event-ID`), and an event at
    or before it (sent again around a reconnection) is dropped, so a reader sees
    every event once, in order, across dropped connections and server restarts.
    """

    def __init__(self, job: Optional[str], after: Optional[int]) -> None:
        self.job = job
        self.last = after
        self.pruned: Optional[Tuple[int, int]] = None

    @property
    def needs_start(self) -> bool:
        """A stream of everything from now on: it must learn where "now" is before
        its first connection, or a drop before its first event would lose events."""
        return self.job is None and self.last is None

    def request(self) -> Tuple[str, Dict[str, str]]:
        headers = {"accept": "text/event-stream", "cache-control": "no-cache"}
        if self.last is not None:
            headers["last-event-id"] = str(self.last)
        # Without a position, a job's stream starts with the job's whole history.
        path = f"/api/jobs/{quote(self.job, safe='')}/events" if self.job else "/api/events"
        return path, headers

    def take(self, frame: Frame) -> Optional[Event]:
        """The frame's event, unless it was yielded already."""
        if frame.event == "events.pruned":
            info = json.loads(frame.data)
            self.pruned = (int(info["after"]), int(info["pruned_upto"]))
            log.warning(
                "events after %s up to %s were removed by retention before this stream read them",
                *self.pruned,
            )
            return None
        if frame.id is None:
            return None
        event = Event.from_dict(json.loads(frame.data))
        if self.last is not None and event.id <= self.last:
            return None
        self.last = event.id
        return event


class Retry:
    """When a dropped stream connects again: at once after a stream that delivered
    events, then after growing pauses (up to 2 s), so that a server that ends every
    stream at once (one that is shutting down) is not asked in a tight loop. It gives
    up after `give_up_after` seconds without a connection (None: never), or at the
    caller's deadline."""

    def __init__(self, give_up_after: Optional[float], deadline: Optional[float]) -> None:
        self.give_up_after = give_up_after
        self.deadline = deadline
        self.failing_since: Optional[float] = None
        self.pause = 0.0
        self.reconnects = 0

    def connected(self) -> None:
        self.failing_since = None

    def delivered(self) -> None:
        self.pause = 0.0

    def read_timeout(self) -> float:
        if self.deadline is None:
            return READ_TIMEOUT
        return max(0.001, min(READ_TIMEOUT, self.deadline - time.monotonic()))

    def after_failure(self, error: BatonError, url: str) -> float:
        """The pause before connecting again; raises when it is time to give up."""
        now = time.monotonic()
        if self.deadline is not None and now >= self.deadline:
            raise BatonTimeout(f"the deadline passed while following {url}", url=url)
        if self.failing_since is None:
            self.failing_since = now
        elif self.give_up_after is not None and now - self.failing_since > self.give_up_after:
            raise error
        self.reconnects += 1
        log.info("event stream from %s dropped (%s); connecting again in %.1fs", url, error, self.pause)
        pause = self.pause
        self.pause = min(2.0, max(0.1, self.pause * 2))
        if self.deadline is not None:
            pause = min(pause, max(0.0, self.deadline - now))
        return pause


def retryable(error: BatonError) -> bool:
    """Whether a reconnection may help: the connection failed, broke or went quiet, or
    the server is busy, starting or stopping (or a proxy says it is away)."""
    if isinstance(error, UntrustedCertificate):
        return False
    if isinstance(error, (BatonConnectionError, BatonTimeout, Unavailable)):
        return True
    return error.status in (502, 504)
