"""What a handler is given besides its payload: the job, and the way to report on it.

An async handler gets a `Context` (its methods are awaited), a sync one a
`SyncContext` (its methods block the handler's thread, never the worker's loop).
`progress`, `step` and `checkpoint` are pause points, as `pause_point` is: they wait
while the job is paused and raise `Stopped` once it is being stopped.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import math
import threading
from typing import Any, Dict, Mapping, Optional

from typing_extensions import Protocol

from ._protocol import Attempt, Stopped, encode, pieces
from .models import Job, Parent


def _progress_fields(fraction: Optional[float], message: Optional[str]) -> Dict[str, Any]:
    fields: Dict[str, Any] = {}
    if fraction is not None and not math.isnan(fraction):
        fields["fraction"] = min(1.0, max(0.0, float(fraction)))
    if message is not None:
        fields["message"] = str(message)
    return fields


class _Base:
    """What both contexts know about the attempt."""

    def __init__(self, job: Job, token: int, checkpoint: Any, parents: Mapping[str, Parent]) -> None:
        self._job = job
        self._token = token
        self._checkpoint = checkpoint
        self._parents = dict(parents)

    @property
    def job(self) -> Job:
        """The job as the server handed it over (`job.raw` is its JSON)."""
        return self._job

    @property
    def job_id(self) -> str:
        return self._job.id

    @property
    def kind(self) -> str:
        return self._job.kind

    @property
    def payload(self) -> Any:
        return self._job.payload

    @property
    def attempt(self) -> int:
        """Which attempt this is, from 1: a retry after a failure counts, a recovery
        after a crash (`job.recoveries`) does not."""
        return self._job.attempt

    @property
    def token(self) -> int:
        """The attempt's fencing token: reports with an older one are refused."""
        return self._token

    @property
    def last_checkpoint(self) -> Any:
        """The last checkpoint saved (by this attempt, or by an earlier one it resumes
        from), or None."""
        return self._checkpoint

    @property
    def parents(self) -> Dict[str, Parent]:
        """The jobs this one depends on, by local name in the workflow (or job id)."""
        return dict(self._parents)

    def parent_results(self) -> Dict[str, Any]:
        """The result of each job this one depends on, by local name (or job id)."""
        return {name: p.result for name, p in self._parents.items()}

    def parent_result(self, name: str) -> Any:
        """The result of the dependency `name`; KeyError when there is no such one."""
        return self._parents[name].result


class Context(_Base):
    """The context of an async handler."""

    def __init__(self, attempt: Attempt) -> None:
        super().__init__(attempt.job, attempt.token, attempt.checkpoint, attempt.parents)
        self._attempt = attempt

    @property
    def cancelled(self) -> bool:
        """Whether the job is being stopped (or the attempt was lost)."""
        return self._attempt.stop_async.is_set()

    @property
    def cancel_event(self) -> asyncio.Event:
        """Set once the job is being stopped: `await ctx.cancel_event.wait()`."""
        return self._attempt.stop_async

    @property
    def paused(self) -> bool:
        return self._attempt.blocked() == "pause"

    def _send(self, op: str, fields: Dict[str, Any]) -> None:
        self._attempt.send_text(encode(self._attempt.message(op, fields)))

    async def progress(self, fraction: Optional[float] = None, message: Optional[str] = None) -> None:
        """Reports progress (0 to 1) and a message. A pause point."""
        self._send("progress", _progress_fields(fraction, message))
        await self.pause_point()

    async def step(self, name: str) -> None:
        """Names the step the job is in now. A pause point."""
        self._send("step", {"name": str(name)})
        await self.pause_point()

    async def output(self, text: str) -> None:
        """Streams a piece of output to the job's subscribers."""
        for piece in pieces(str(text), self._attempt.conn.max_message):
            self._send("output", {"text": piece})

    async def log(self, text: str) -> None:
        """Adds a line to the job's log."""
        for piece in pieces(str(text), self._attempt.conn.max_message):
            self._send("log", {"text": piece})

    async def checkpoint(self, data: Any) -> None:
        """Saves a checkpoint; it is durable when this returns, and a later attempt
        (after a crash, or a retry from the checkpoint) starts with it as
        `last_checkpoint`. A pause point."""
        await self._attempt.save(data)
        self._checkpoint = data
        await self.pause_point()

    async def pause_point(self) -> None:
        """Waits while the job is paused; raises `Stopped` once it is being stopped."""
        await self._attempt.pause_point()


class SyncPort(Protocol):
    """How a `SyncContext` reaches the worker: from a thread of the worker's process,
    or from a child process over a pipe."""

    stop_event: threading.Event
    max_message: int

    def report(self, op: str, fields: Dict[str, Any]) -> None: ...

    def save(self, data: Any) -> None: ...

    def blocked(self) -> Optional[str]: ...

    def wait_while_paused(self) -> None: ...


class ThreadPort:
    """A sync handler's way to the worker's loop from its own thread."""

    def __init__(self, attempt: Attempt) -> None:
        self._attempt = attempt
        self.stop_event = attempt.stop_event
        self.max_message = attempt.conn.max_message

    def report(self, op: str, fields: Dict[str, Any]) -> None:
        text = encode(self._attempt.message(op, fields))
        try:
            self._attempt.loop.call_soon_threadsafe(self._attempt.send_text, text)
        except RuntimeError:
            pass  # the worker has ended; the server recovers the job

    def save(self, data: Any) -> None:
        try:
            future = asyncio.run_coroutine_threadsafe(self._attempt.save(data), self._attempt.loop)
        except RuntimeError:
            raise Stopped("the worker has ended") from None
        try:
            future.result()
        except concurrent.futures.CancelledError:
            raise Stopped("the worker has ended") from None

    def blocked(self) -> Optional[str]:
        return self._attempt.blocked()

    def wait_while_paused(self) -> None:
        self._attempt.wait_while_paused()


class SyncContext(_Base):
    """The context of a sync handler; its methods may be called from the handler's
    thread (or any thread)."""

    def __init__(
        self, job: Job, token: int, checkpoint: Any, parents: Mapping[str, Parent], port: SyncPort
    ) -> None:
        super().__init__(job, token, checkpoint, parents)
        self._port = port

    @staticmethod
    def of(attempt: Attempt) -> SyncContext:
        return SyncContext(attempt.job, attempt.token, attempt.checkpoint, attempt.parents, ThreadPort(attempt))

    @property
    def cancelled(self) -> bool:
        """Whether the job is being stopped (or the attempt was lost)."""
        return self._port.stop_event.is_set()

    @property
    def cancel_event(self) -> threading.Event:
        """Set once the job is being stopped: `ctx.cancel_event.wait(5)` is a sleep that
        a stop cuts short."""
        return self._port.stop_event

    @property
    def paused(self) -> bool:
        return self._port.blocked() == "pause"

    def progress(self, fraction: Optional[float] = None, message: Optional[str] = None) -> None:
        """Reports progress (0 to 1) and a message. A pause point."""
        self._port.report("progress", _progress_fields(fraction, message))
        self.pause_point()

    def step(self, name: str) -> None:
        """Names the step the job is in now. A pause point."""
        self._port.report("step", {"name": str(name)})
        self.pause_point()

    def output(self, text: str) -> None:
        """Streams a piece of output to the job's subscribers."""
        for piece in pieces(str(text), self._port.max_message):
            self._port.report("output", {"text": piece})

    def log(self, text: str) -> None:
        """Adds a line to the job's log."""
        for piece in pieces(str(text), self._port.max_message):
            self._port.report("log", {"text": piece})

    def checkpoint(self, data: Any) -> None:
        """Saves a checkpoint; it is durable when this returns. A pause point."""
        self._port.save(data)
        self._checkpoint = data
        self.pause_point()

    def pause_point(self) -> None:
        """Blocks while the job is paused; raises `Stopped` once it is being stopped."""
        self._port.wait_while_paused()
