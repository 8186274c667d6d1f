"""The worker protocol's plumbing (DESIGN.md section 11): one connection's outgoing
messages and the answers awaited, and the attempts a connection holds.

Everything here runs on the worker's event loop, except the methods of `Attempt`
that say they may be called from any thread.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import threading
import traceback
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

from .errors import BatonError
from .models import Job, Parent

# What a worker may send in one message unless the server's welcome says otherwise.
DEFAULT_MAX_MESSAGE = 1 << 20
# Room left for the envelope around a text cut into pieces (JSON escapes a control
# character in six bytes).
_ENVELOPE = 4096
# A traceback longer than this keeps its end (the frames nearest the error).
MAX_TRACEBACK = 32 * 1024
# The package's own frames are left out of a handler's traceback.
_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


class Stopped(Exception):
    """Raised at a pause point when the job is being stopped, or when the attempt is
    no longer this worker's (its connection dropped and the server recovered it).
    Let it propagate: the job then ends `cancelled` (or runs again elsewhere)."""


class Retryable(Exception):
    """Fails the attempt; the job runs again while it has attempts left (as any
    exception but `Fatal` does)."""


class Fatal(Exception):
    """Fails the job at once, whatever attempts it has left."""


class WorkerError(BatonError):
    """The server refused the worker or one of its messages: `code` is the protocol's
    (`invalid_hello`, `not_held`, `stale_token`, `too_large`, `store_error`, ...),
    the HTTP status's (`http_403`) when the connection itself was refused, or
    `untrusted_certificate` for an `https://` server whose certificate is not trusted."""

    def __init__(self, message: str, *, code: str = "worker_error", status: Optional[int] = None) -> None:
        super().__init__(message, code=code, status=status)

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class MessageTooLarge(WorkerError, ValueError):
    """A checkpoint or result whose message would be over the server's limit."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="too_large")


class _Lost(Exception):
    """The connection an answer was awaited on is gone."""


def encode(msg: Dict[str, Any]) -> str:
    """A message as the server reads it: strict JSON (no NaN), UTF-8 text."""
    try:
        return json.dumps(msg, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as e:
        raise ValueError(f"not JSON: {e}") from e


def pieces(text: str, max_message: int) -> List[str]:
    """A text cut so that each piece's message stays under the limit."""
    size = max(1, (max_message - _ENVELOPE) // 6)
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


def stopped_outcome() -> Dict[str, Any]:
    return {"op": "fail", "error": {"message": "stopped", "retryable": False}}


def failure_outcome(e: BaseException) -> Dict[str, Any]:
    """The `fail` of a handler that raised `e`: its traceback goes with it."""
    if isinstance(e, Stopped):
        return stopped_outcome()
    text = str(e)
    message = text if isinstance(e, (Retryable, Fatal)) and text else f"{type(e).__name__}: {text}".rstrip(": ")
    tb = "".join(_traceback(e).format())
    if len(tb) > MAX_TRACEBACK:
        tb = "...\n" + tb[-MAX_TRACEBACK:]
    return {
        "op": "fail",
        "error": {"message": message, "retryable": not isinstance(e, Fatal), "traceback": tb},
    }


def _traceback(e: BaseException) -> traceback.TracebackException:
    """`e`'s traceback (with its causes) without the worker's own frames."""
    te = traceback.TracebackException.from_exception(e)
    seen: Set[int] = set()
    todo = [te]
    while todo:
        t = todo.pop()
        if id(t) in seen:
            continue
        seen.add(id(t))
        kept = [f for f in t.stack if not (f.filename or "").startswith(_PACKAGE)]
        t.stack = traceback.StackSummary.from_list(kept)
        todo.extend(x for x in (t.__cause__, t.__context__) if x is not None)
    return te


def result_outcome(result: Any) -> Dict[str, Any]:
    """The `complete` of a handler that returned `result`, or a fatal `fail` when the
    result is not JSON (it would not be on a retry either)."""
    try:
        encode({"result": result})
    except ValueError as e:
        return {
            "op": "fail",
            "error": {
                "message": f"the handler returned a result that is not JSON ({type(result).__name__}): {e}",
                "retryable": False,
            },
        }
    return {"op": "complete", "result": result}


class Connection:
    """One WebSocket session's outgoing messages (written in order by one task) and
    the answers awaited by `ref`."""

    def __init__(self, loop: asyncio.AbstractEventLoop, max_message: int = DEFAULT_MAX_MESSAGE) -> None:
        self.loop = loop
        self.max_message = max_message
        self.outbox: asyncio.Queue[Optional[str]] = asyncio.Queue()
        self.closed = False
        self._refs = itertools.count(1)
        self._pending: Dict[int, Tuple[str, asyncio.Future[None]]] = {}

    def send_text(self, text: str) -> None:
        if not self.closed:
            self.outbox.put_nowait(text)

    def request(self, msg: Dict[str, Any]) -> asyncio.Future[None]:
        """Sends a message that is answered with an `ack` (or an `error` about its job);
        the future fails with `WorkerError` on an error, `_Lost` if the connection goes."""
        future: asyncio.Future[None] = self.loop.create_future()
        ref = next(self._refs)
        text = encode({**msg, "ref": ref})
        size = len(text.encode())
        if size > self.max_message:
            raise MessageTooLarge(
                f"the {msg['op']} message is {size} bytes, more than the {self.max_message} "
                "bytes the server takes in one message"
            )
        if self.closed:
            future.set_exception(_Lost())
            return future
        self._pending[ref] = (str(msg.get("job")), future)
        self.outbox.put_nowait(text)
        return future

    def acked(self, ref: Any) -> None:
        entry = self._pending.pop(ref, None) if isinstance(ref, int) else None
        if entry is not None and not entry[1].done():
            entry[1].set_result(None)

    def refused(self, job: str, code: str, message: str) -> None:
        """An error about `job`: each answer awaited for it fails (reports about one
        attempt are written in order, so a refusal holds for those sent before it)."""
        for ref, (held, future) in list(self._pending.items()):
            if held == job:
                del self._pending[ref]
                if not future.done():
                    future.set_exception(WorkerError(message, code=code))

    def close(self) -> None:
        self.closed = True
        for _, future in self._pending.values():
            if not future.done():
                future.set_exception(_Lost())
        self._pending.clear()
        self.outbox.put_nowait(None)


class Attempt:
    """A job this worker runs: what the server handed over, its fencing token, and the
    control intent (paused, stopping) as the server relays it."""

    def __init__(self, conn: Connection, msg: Dict[str, Any]) -> None:
        self.conn = conn
        self.loop = conn.loop
        self.raw: Dict[str, Any] = dict(msg["job"])
        self.id: str = self.raw["id"]
        self.kind: str = self.raw.get("kind", "")
        self.token: int = int(msg["token"])
        self.job = Job.from_dict(self.raw)
        self.checkpoint: Any = msg.get("checkpoint")
        self.parents: Dict[str, Parent] = {
            name: Parent.from_dict(link) for name, link in (msg.get("parents") or {}).items()
        }
        self.paused = False
        self.stopping = False
        self.force = False
        self.lost = False
        self.cond = threading.Condition()
        self.stop_event = threading.Event()
        self.stop_async = asyncio.Event()
        self._changed = asyncio.Event()
        # Set by a runner that turns control into something else (signals to a child).
        self.on_control: Optional[Callable[[], None]] = None
        # The task that runs the attempt; `orphan` once its connection is gone.
        self.runner: Optional[asyncio.Future[None]] = None
        self.orphan = False
        # Set by a runner whose work can be cancelled at once (an async handler).
        self.task: Optional[asyncio.Task[Any]] = None

    # On the loop.

    def message(self, op: str, fields: Dict[str, Any]) -> Dict[str, Any]:
        return {"op": op, "job": self.id, "token": self.token, **fields}

    def send_text(self, text: str) -> None:
        if not self.lost:
            self.conn.send_text(text)

    async def save(self, data: Any) -> None:
        """A checkpoint, once the server says it is durable."""
        if self.lost:
            raise Stopped(f"the attempt of job {self.id} is no longer this worker's")
        try:
            await self.conn.request(self.message("checkpoint", {"data": data}))
        except _Lost:
            raise Stopped(f"the connection dropped; job {self.id} is recovered by the server") from None
        except WorkerError as e:
            if e.code in ("not_held", "stale_token"):
                self.lose()
                raise Stopped(f"the attempt of job {self.id} is over: {e.message}") from None
            raise
        self.checkpoint = data

    def control(self, action: str, force: bool) -> None:
        with self.cond:
            if action == "pause":
                self.paused = True
            elif action == "resume":
                self.paused = False
            elif action in ("stop", "cancel"):
                self.stopping = True
                self.force = self.force or force
            else:
                return
        self._notify()

    def lose(self) -> None:
        """The attempt is no longer this worker's: every pause point raises `Stopped`
        and its reports are dropped."""
        with self.cond:
            self.lost = True
            self.force = True
        self._notify()

    def _notify(self) -> None:
        with self.cond:
            self.cond.notify_all()
            if self.stopping or self.lost:
                self.stop_event.set()
                self.stop_async.set()
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
        if self.on_control is not None:
            self.on_control()
        if self.force and self.task is not None:
            self.task.cancel()

    async def pause_point(self) -> None:
        while True:
            state = self.blocked()
            if state == "stop":
                raise Stopped(f"job {self.id} is being stopped")
            if state is None:
                return
            await self._changed.wait()

    # From any thread.

    def blocked(self) -> Optional[str]:
        """`stop` when a pause point must raise `Stopped`, `pause` when it must wait."""
        with self.cond:
            if self.stopping or self.lost:
                return "stop"
            return "pause" if self.paused else None

    def wait_while_paused(self) -> None:
        with self.cond:
            while True:
                if self.stopping or self.lost:
                    raise Stopped(f"job {self.id} is being stopped")
                if not self.paused:
                    return
                self.cond.wait()
