"""Handlers declared with `process=True`: each attempt runs in a child process (spawned,
so the function must be importable) that control reaches with signals, pause points
or not: pause is SIGSTOP, resume SIGCONT, stop SIGTERM (it raises `Stopped` in the
handler), a forced stop, a lost connection or the end of a stop's grace SIGKILL.

The child's context sends its reports to the parent over a pipe; a thread of the
parent relays them to the connection and answers checkpoints once they are durable.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import threading
from multiprocessing.connection import Connection as Pipe
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import Any, Callable, Dict, Optional, Tuple

from ._protocol import Attempt, Stopped, WorkerError, encode, failure_outcome, result_outcome, stopped_outcome
from .context import SyncContext, ThreadPort
from .models import Job, Parent

# What the child is given: the job's JSON, the token, the checkpoint, the parents'
# JSON and the largest message the server takes.
Info = Tuple[Dict[str, Any], int, Any, Dict[str, Dict[str, Any]], int]


async def run_in_process(attempt: Attempt, fn: Callable[..., Any]) -> Dict[str, Any]:
    """Runs one attempt of `fn` in a child process; its outcome as a message's fields."""
    runner = _Runner(attempt, fn)
    attempt.on_control = runner.control
    threading.Thread(target=runner.relay, name=f"baton-relay-{attempt.id}", daemon=True).start()
    return await runner.done


class _Runner:
    def __init__(self, attempt: Attempt, fn: Callable[..., Any]) -> None:
        self.attempt = attempt
        self.fn = fn
        self.done: asyncio.Future[Dict[str, Any]] = attempt.loop.create_future()
        self.port = ThreadPort(attempt)
        self.lock = threading.Lock()
        self.proc: Optional[BaseProcess] = None
        self.exited = False
        self.sigstopped = False
        self.termed = False
        self.killed = False

    def control(self) -> None:
        """Turns the attempt's control intent into signals to the child (from the loop
        on each change, and from the relay once the child has started)."""
        a = self.attempt
        with a.cond:
            paused, stopping, force = a.paused, a.stopping or a.lost, a.force or a.lost
        with self.lock:
            if self.proc is None or self.proc.pid is None or self.exited or self.killed:
                return
            pid = self.proc.pid
            try:
                if force:
                    os.kill(pid, signal.SIGKILL)
                    self.killed = True
                elif stopping:
                    if not self.termed:
                        os.kill(pid, signal.SIGTERM)
                        self.termed = True
                    if self.sigstopped:
                        os.kill(pid, signal.SIGCONT)
                        self.sigstopped = False
                elif paused and not self.sigstopped:
                    os.kill(pid, signal.SIGSTOP)
                    self.sigstopped = True
                elif not paused and self.sigstopped:
                    os.kill(pid, signal.SIGCONT)
                    self.sigstopped = False
            except ProcessLookupError:
                pass

    def relay(self) -> None:
        try:
            outcome = self._relay()
        except Exception as e:
            outcome = failure_outcome(e)

        def settle() -> None:
            if not self.done.done():
                self.done.set_result(outcome)

        try:
            self.attempt.loop.call_soon_threadsafe(settle)
        except RuntimeError:
            pass  # the worker has ended

    def _relay(self) -> Dict[str, Any]:
        a = self.attempt
        mp = multiprocessing.get_context("spawn")
        parent, child = mp.Pipe(duplex=True)
        info: Info = (
            a.raw,
            a.token,
            a.checkpoint,
            {name: p.raw for name, p in a.parents.items()},
            a.conn.max_message,
        )
        proc = mp.Process(target=_child, args=(child, self.fn, info), name=f"baton-{a.kind}-{a.id}", daemon=True)
        try:
            proc.start()
        except Exception as e:
            parent.close()
            child.close()
            message = f"cannot start the handler's process: {type(e).__name__}: {e}"
            return {"op": "fail", "error": {"message": message, "retryable": False}}
        child.close()
        with self.lock:
            self.proc = proc
        self.control()
        outcome: Optional[Dict[str, Any]] = None
        try:
            while True:
                try:
                    msg = parent.recv()
                except (EOFError, OSError):
                    break
                op = msg[0]
                if op == "report":
                    try:
                        self.port.report(msg[1], msg[2])
                    except ValueError:
                        pass  # the child checked it
                elif op == "checkpoint":
                    reply: Tuple[str, Any]
                    try:
                        self.port.save(msg[1])
                        reply = ("ack", None)
                    except Stopped as e:
                        reply = ("stopped", str(e))
                    except WorkerError as e:
                        reply = ("error", (e.code, e.message))
                    except Exception as e:
                        reply = ("error", ("error", f"{type(e).__name__}: {e}"))
                    try:
                        parent.send(reply)
                    except OSError:
                        pass
                elif op == "done":
                    outcome = msg[1]
        finally:
            proc.join()
            with self.lock:
                self.exited = True
            parent.close()
        stopping = a.stopping or a.lost
        if outcome is not None:
            if outcome == stopped_outcome() and not stopping:
                # A SIGTERM that was not the job's stop (to the whole process group).
                message = "the handler's process was terminated (SIGTERM) by something other than a stop"
                return {"op": "fail", "error": {"message": message, "retryable": True}}
            return outcome
        if stopping:
            return stopped_outcome()
        code = proc.exitcode or 0
        if code < 0:
            message = f"the handler's process was killed by {signal.Signals(-code).name}"
        else:
            message = f"the handler's process exited with status {code} before it returned"
        return {"op": "fail", "error": {"message": message, "retryable": True}}


class PipePort:
    """The child's side: a `SyncContext`'s reports go up the pipe; pause is the
    parent's SIGSTOP, so a pause point only checks for a stop (SIGTERM)."""

    def __init__(self, conn: Pipe, max_message: int) -> None:
        self.conn = conn
        self.max_message = max_message
        self.stop_event = threading.Event()
        # SIGTERM raises `Stopped` while the handler runs, but not mid-message.
        self.armed = False
        self.in_io = False

    def on_term(self, signum: int, frame: Optional[FrameType]) -> None:
        first = not self.stop_event.is_set()
        self.stop_event.set()
        if first and self.armed and not self.in_io:
            raise Stopped("the job is being stopped (SIGTERM)")

    def _send(self, msg: Tuple[Any, ...]) -> None:
        self.in_io = True
        try:
            self.conn.send(msg)
        finally:
            self.in_io = False

    def report(self, op: str, fields: Dict[str, Any]) -> None:
        encode(fields)
        self._send(("report", op, fields))

    def save(self, data: Any) -> None:
        encode({"data": data})
        self.in_io = True
        try:
            self.conn.send(("checkpoint", data))
            kind, detail = self.conn.recv()
        finally:
            self.in_io = False
        if kind == "stopped":
            raise Stopped(str(detail))
        if kind == "error":
            code, message = detail
            raise WorkerError(str(message), code=str(code))

    def blocked(self) -> Optional[str]:
        return "stop" if self.stop_event.is_set() else None

    def wait_while_paused(self) -> None:
        if self.stop_event.is_set():
            raise Stopped("the job is being stopped")


def _child(conn: Pipe, fn: Callable[..., Any], info: Info) -> None:
    # Out of the worker's process group: a Ctrl-C at the terminal is the worker's to
    # handle (it lets running handlers end), not every child's.
    os.setsid()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = multiprocessing.parent_process()
    if parent is not None:
        # A worker killed with SIGKILL takes its children with it.
        threading.Thread(target=_die_with, args=(parent,), daemon=True).start()
    raw, token, checkpoint, parents, max_message = info
    port = PipePort(conn, max_message)
    signal.signal(signal.SIGTERM, port.on_term)
    ctx = SyncContext(
        Job.from_dict(raw),
        token,
        checkpoint,
        {name: Parent.from_dict(p) for name, p in parents.items()},
        port,
    )
    outcome: Dict[str, Any]
    try:
        port.armed = True
        if port.stop_event.is_set():
            raise Stopped("the job is being stopped")
        result = fn(ctx, ctx.payload)
        port.armed = False
        outcome = result_outcome(result)
    except BaseException as e:  # noqa: B036 (SystemExit and all: the job fails with it)
        port.armed = False
        outcome = failure_outcome(e)
    port._send(("done", outcome))
    conn.close()


def _die_with(parent: BaseProcess) -> None:
    parent.join()
    os._exit(1)
