"""A remote worker: serves handler kinds over one WebSocket to `/api/workers/ws`
(DESIGN.md section 11).

    worker = Worker("http://127.0.0.1:7700", concurrency=4)

    @worker.handler("scrape")
    def scrape(ctx: SyncContext, payload: Any) -> Any:
        for page in range(ctx.last_checkpoint or 0, 100):
            ...
            ctx.checkpoint(page + 1)        # durable when it returns; a pause point
        return {"pages": 100}

    worker.run()    # until SIGTERM or SIGINT

Sync handlers run on threads of their own, async ones on the worker's loop, and
handlers declared with `process=True` in a child process that pause and stop reach
with signals. A handler's return value completes the job; an exception fails it with
its traceback (`Fatal`: without a retry).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import random
import signal
import socket
import ssl
import threading
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Set, TypeVar

from websockets.asyncio.client import ClientConnection, connect, unix_connect
from websockets.exceptions import InvalidStatus, WebSocketException

from . import __version__
from ._protocol import (
    Attempt,
    Connection,
    MessageTooLarge,
    WorkerError,
    _Lost,
    encode,
    failure_outcome,
    result_outcome,
    stopped_outcome,
)
from ._tls import CaFile, tls_context
from .context import Context, SyncContext

log = logging.getLogger("baton_client.worker")

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_URL = "http://127.0.0.1:7700"
# How long the server is given to welcome a worker.
WELCOME_WITHIN = 10.0


@dataclass(frozen=True)
class Handler:
    kind: str
    fn: Callable[..., Any]
    is_async: bool
    process: bool


class Worker:
    """Serves jobs of the kinds its handlers name, `concurrency` at a time, from
    `queues`. `url` is the server's (`http://`, `https://` or `unix:///path`),
    `token` an operator's token when the server has auth on. With `https://` the
    worker connects over `wss://` and verifies the server's certificate against the
    system's root certificates or, with `ca` (a PEM file), against those only; one it
    does not trust makes `run` raise `WorkerError` (code `untrusted_certificate`).

    On SIGTERM or SIGINT (or `shutdown()`) it takes no more jobs, gives the running
    handlers `grace` seconds to end, and disconnects; the server recovers what is left
    from its last checkpoint. A dropped connection is made again with a backoff of up
    to `max_backoff` seconds; the attempts it held are the server's to recover, and
    what their handlers report later is dropped."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        token: Optional[str] = None,
        concurrency: int = 4,
        queues: Sequence[str] = ("default",),
        name: Optional[str] = None,
        *,
        grace: float = 30.0,
        max_backoff: float = 10.0,
        ca: Optional[CaFile] = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, not {concurrency}")
        if isinstance(queues, str):
            queues = [queues]
        self.url = url.rstrip("/")
        self.token = token
        self.ca = ca
        if ca is not None:
            tls_context(ca)  # a file that is no certificate is refused here, not at run
        self.concurrency = concurrency
        self.queues: List[str] = list(queues)
        self.name = name or f"{socket.gethostname()}-python"
        self.grace = grace
        self.max_backoff = max_backoff
        self.handlers: Dict[str, Handler] = {}
        # The server's id for the current connection, once welcomed.
        self.worker_id: Optional[str] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._stopping: Optional[asyncio.Event] = None
        self._hurry: Optional[asyncio.Event] = None
        self._shutdown_requested = False
        self._conn: Optional[Connection] = None
        self._held: Dict[str, Attempt] = {}
        self._tasks: Set[asyncio.Task[None]] = set()
        self._orphans = 0
        self._slots_sent: Optional[int] = None
        self._connected = threading.Event()

    # Declaring handlers

    def handler(self, kind: str, *, process: bool = False) -> Callable[[F], F]:
        """Declares `fn(ctx, payload)` as the handler of `kind`: a sync function (run on
        a thread of its own, given a `SyncContext`) or an async one (run on the loop,
        given a `Context`). With `process=True`, a sync handler runs in a child process
        that pause stops (SIGSTOP) and stop ends (SIGTERM raises `Stopped` in it,
        SIGKILL after the job's grace), pause points or not; the function must be
        importable (defined at the top of a module) and its payload, result and
        checkpoints picklable."""

        def register(fn: F) -> F:
            if not kind:
                raise ValueError("a handler's kind cannot be empty")
            if kind in self.handlers:
                raise ValueError(f"kind {kind!r} has a handler already")
            is_async = inspect.iscoroutinefunction(fn)
            if process and is_async:
                raise ValueError(f"the handler of {kind!r} is async: only a sync handler runs in a process")
            self.handlers[kind] = Handler(kind, fn, is_async, process)
            return fn

        return register

    @property
    def kinds(self) -> List[str]:
        return sorted(self.handlers)

    # Running

    def run(self) -> None:
        """Serves jobs until SIGTERM or SIGINT (or `shutdown()`), then returns."""
        asyncio.run(self.arun())

    async def arun(self, *, handle_signals: bool = True) -> None:
        """Serves jobs until `shutdown()` (or, in the main thread with `handle_signals`,
        SIGTERM or SIGINT; a second one ends the grace at once). Raises `WorkerError`
        when the server refuses the worker itself (its hello, or its token)."""
        if not self.handlers:
            raise ValueError("the worker has no handlers: declare some with @worker.handler(kind)")
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._stopping = asyncio.Event()
        self._hurry = asyncio.Event()
        if self._shutdown_requested:
            self._stopping.set()
        signals: List[signal.Signals] = []
        if handle_signals and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                try:
                    loop.add_signal_handler(sig, self._on_signal, sig)
                    signals.append(sig)
                except (NotImplementedError, RuntimeError):
                    pass
        failures = 0
        try:
            while not self._stopping.is_set():
                try:
                    ws = await self._connect()
                except WorkerError:
                    raise
                except (OSError, asyncio.TimeoutError, WebSocketException) as e:
                    failures += 1
                    delay = self._backoff(failures)
                    log.warning("cannot connect to %s: %s; trying again in %.1f s", self.url, e, delay)
                    await self._sleep(delay)
                    continue
                try:
                    welcomed = await self._session(ws)
                finally:
                    self._lose()
                    await ws.close()
                if welcomed:
                    failures = 0
                if not self._stopping.is_set():
                    failures += 1
                    delay = self._backoff(failures)
                    log.warning("the connection to %s dropped; connecting again in %.1f s", self.url, delay)
                    await self._sleep(delay)
        finally:
            for sig in signals:
                loop.remove_signal_handler(sig)
            self._connected.clear()
            # Handlers still on threads end with the process; their reports are dropped.
            for task in list(self._tasks):
                task.cancel()
            self._loop = None

    def shutdown(self) -> None:
        """Stops taking jobs, lets the running ones end within `grace`, disconnects and
        makes `run` return. Safe to call from any thread or a signal handler."""
        self._shutdown_requested = True
        loop = self._loop
        if loop is not None:
            try:
                loop.call_soon_threadsafe(self._begin_shutdown)
            except RuntimeError:
                pass

    def wait_connected(self, timeout: Optional[float] = None) -> bool:
        """Blocks until the server has welcomed the worker (for tests and scripts)."""
        return self._connected.wait(timeout)

    # Plumbing

    def _on_signal(self, sig: int) -> None:
        assert self._stopping is not None and self._hurry is not None
        if self._stopping.is_set():
            log.warning("%s again: disconnecting now", signal.Signals(sig).name)
            self._hurry.set()
        else:
            log.info("%s: taking no more jobs; disconnecting once the running ones end", signal.Signals(sig).name)
            self._begin_shutdown()

    def _begin_shutdown(self) -> None:
        if self._stopping is not None:
            self._stopping.set()

    def _backoff(self, failures: int) -> float:
        return float(min(self.max_backoff, 0.2 * 2 ** min(failures - 1, 16)) * random.uniform(0.8, 1.2))

    async def _sleep(self, seconds: float) -> None:
        assert self._stopping is not None
        try:
            await asyncio.wait_for(self._stopping.wait(), seconds)
        except asyncio.TimeoutError:
            pass

    async def _connect(self) -> ClientConnection:
        headers = {"user-agent": f"baton-client/{__version__}"}
        if self.token:
            headers["authorization"] = f"Bearer {self.token}"
        options: Dict[str, Any] = dict(
            additional_headers=headers,
            max_size=None,
            open_timeout=10,
            ping_interval=10,
            ping_timeout=20,
            user_agent_header=None,
        )
        try:
            if self.url.startswith("unix://"):
                path = self.url[len("unix://") :]
                return await unix_connect(path, "ws://localhost/api/workers/ws", **options)
            if self.url.startswith("https://"):
                uri = "wss://" + self.url[len("https://") :]
            elif self.url.startswith("http://"):
                uri = "ws://" + self.url[len("http://") :]
            else:
                uri = self.url
            if uri.startswith("wss://"):
                options["ssl"] = tls_context(self.ca)
            return await connect(uri + "/api/workers/ws", **options)
        except ssl.SSLCertVerificationError as e:
            # Trying again would not help: the worker ends, saying what to do.
            reason = e.verify_message or e.reason or str(e)
            raise WorkerError(
                f"cannot talk to Baton at {self.url} securely: {reason}; its certificate is not trusted: "
                "give the worker the certificate (PEM) of the authority that signed it "
                "(Worker(..., ca=FILE), or --ca FILE or BATON_CA for python -m baton_client worker)",
                code="untrusted_certificate",
            ) from None
        except InvalidStatus as e:
            status = e.response.status_code
            body = e.response.body.decode(errors="replace").strip()[:500] if e.response.body else ""
            if status in (401, 403, 404):
                raise WorkerError(
                    f"{self.url} refused the worker's connection with HTTP {status}: {body}",
                    code=f"http_{status}",
                    status=status,
                ) from None
            raise

    async def _session(self, ws: ClientConnection) -> bool:
        """Says hello and serves jobs until the connection drops or a shutdown has
        ended; whether the server welcomed the worker."""
        assert self._loop is not None and self._stopping is not None and self._hurry is not None
        free = self.concurrency - self._orphans
        if self._stopping.is_set():
            free = 0
        await ws.send(
            encode(
                {
                    "op": "hello",
                    "name": self.name,
                    "kinds": self.kinds,
                    "queues": self.queues,
                    "slots": max(1, free),
                }
            )
        )
        welcome = await self._welcome(ws)
        if welcome is None:
            return False
        conn = Connection(self._loop, int(welcome.get("max_message") or 0) or (1 << 20))
        self._conn = conn
        self._slots_sent = max(1, free)
        self.worker_id = str(welcome.get("worker"))
        log.info(
            "serving %s from %s as %s (%d slots)", ", ".join(self.kinds), ", ".join(self.queues), self.worker_id, free
        )
        self._update_slots()
        self._connected.set()
        writer = asyncio.ensure_future(self._write(ws, conn))
        reader = asyncio.ensure_future(self._read(ws, conn))
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({reader, writer, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if stopping.done() and not reader.done():
                self._update_slots()
                await self._drain(reader)
        finally:
            self._connected.clear()
            for task in (writer, reader, stopping):
                task.cancel()
        return True

    async def _welcome(self, ws: ClientConnection) -> Optional[Dict[str, Any]]:
        try:
            text = await asyncio.wait_for(ws.recv(), WELCOME_WITHIN)
        except asyncio.TimeoutError:
            log.warning("%s did not welcome the worker within %.0f s", self.url, WELCOME_WITHIN)
            return None
        except WebSocketException as e:
            log.warning("the connection to %s dropped before its welcome: %s", self.url, e)
            return None
        msg = _parse(text)
        if msg.get("type") == "welcome":
            return msg
        if msg.get("type") == "error" and msg.get("code") == "invalid_hello":
            raise WorkerError(f"{self.url} refused the worker's hello: {msg.get('message')}", code="invalid_hello")
        log.warning("%s answered the hello with %s", self.url, text[:500])
        return None

    async def _drain(self, reader: asyncio.Future[None]) -> None:
        """The shutdown: the running handlers have `grace` seconds to end, while the
        connection still carries their reports."""
        assert self._hurry is not None and self._loop is not None
        if not self._held:
            return
        log.info("waiting up to %.0f s for %d running job(s)", self.grace, len(self._held))
        hurry: asyncio.Future[Any] = asyncio.ensure_future(self._hurry.wait())
        deadline = self._loop.time() + self.grace
        try:
            while self._held and not reader.done() and not hurry.done():
                remaining = deadline - self._loop.time()
                if remaining <= 0:
                    break
                waits: Set[asyncio.Future[Any]] = {a.runner for a in self._held.values() if a.runner is not None}
                waits |= {reader, hurry}
                await asyncio.wait(waits, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
        finally:
            hurry.cancel()
        if self._held:
            log.warning("disconnecting with %d job(s) still running; the server recovers them", len(self._held))

    async def _write(self, ws: ClientConnection, conn: Connection) -> None:
        while True:
            text = await conn.outbox.get()
            if text is None:
                return
            try:
                await ws.send(text)
            except WebSocketException:
                return

    async def _read(self, ws: ClientConnection, conn: Connection) -> None:
        try:
            async for text in ws:
                msg = _parse(text)
                kind = msg.get("type")
                if kind == "job":
                    self._start(conn, msg)
                elif kind == "control":
                    attempt = self._held.get(str(msg.get("job")))
                    if attempt is not None and attempt.conn is conn:
                        log.info("job %s: %s%s", attempt.id, msg.get("action"), " (force)" if msg.get("force") else "")
                        attempt.control(str(msg.get("action")), bool(msg.get("force")))
                elif kind == "ack":
                    conn.acked(msg.get("ref"))
                elif kind == "error":
                    code, message, job = str(msg.get("code")), str(msg.get("message")), msg.get("job")
                    if isinstance(job, str):
                        log.debug("the server refused a message about job %s: %s: %s", job, code, message)
                        conn.refused(job, code, message)
                    else:
                        log.warning("the server says %s: %s", code, message)
        except WebSocketException as e:
            log.warning("the connection to %s dropped: %s", self.url, e)

    def _start(self, conn: Connection, msg: Dict[str, Any]) -> None:
        try:
            attempt = Attempt(conn, msg)
        except (KeyError, TypeError, ValueError) as e:
            job = msg.get("job")
            job_id = job.get("id") if isinstance(job, dict) else None
            log.error("cannot read a job the server handed over: %s", e)
            if isinstance(job_id, str):
                conn.send_text(
                    encode(
                        {
                            "op": "fail",
                            "job": job_id,
                            "token": msg.get("token"),
                            "error": {"message": f"the worker cannot read the job: {e}", "retryable": False},
                        }
                    )
                )
            return
        handler = self.handlers.get(attempt.kind)
        self._held[attempt.id] = attempt
        task = asyncio.ensure_future(self._run_attempt(attempt, handler))
        attempt.runner = task
        self._tasks.add(task)

    async def _run_attempt(self, attempt: Attempt, handler: Optional[Handler]) -> None:
        log.debug("job %s (%s): attempt %d starts", attempt.id, attempt.kind, attempt.job.attempt)
        try:
            outcome = await self._outcome(attempt, handler)
            if attempt.lost:
                log.info("job %s: its attempt was lost with the connection; its outcome is dropped", attempt.id)
                return
            await self._report_outcome(attempt, outcome)
        finally:
            if self._held.get(attempt.id) is attempt:
                del self._held[attempt.id]
            task = attempt.runner
            if task is not None:
                self._tasks.discard(task)
            if attempt.orphan:
                self._orphans -= 1
                self._update_slots()

    async def _outcome(self, attempt: Attempt, handler: Optional[Handler]) -> Dict[str, Any]:
        if handler is None:
            return {
                "op": "fail",
                "error": {"message": f"this worker has no handler for kind {attempt.kind!r}", "retryable": True},
            }
        try:
            if handler.process:
                from ._process import run_in_process

                return await run_in_process(attempt, handler.fn)
            if handler.is_async:
                inner = asyncio.ensure_future(handler.fn(Context(attempt), attempt.job.payload))
                attempt.task = inner
                if attempt.force:
                    inner.cancel()
                result = await inner
            else:
                ctx, payload = SyncContext.of(attempt), attempt.job.payload
                result = await _on_thread(
                    lambda: handler.fn(ctx, payload), f"baton-{attempt.kind}-{attempt.id}"
                )
        except asyncio.CancelledError:
            if attempt.force or attempt.lost:
                return stopped_outcome()
            raise
        except (Exception, SystemExit, KeyboardInterrupt) as e:
            return failure_outcome(e)
        return result_outcome(result)

    async def _report_outcome(self, attempt: Attempt, outcome: Dict[str, Any]) -> None:
        msg = attempt.message(str(outcome.pop("op")), outcome)
        try:
            answer = attempt.conn.request(msg)
        except MessageTooLarge as e:
            failure = {"message": f"the handler's result is too large: {e.message}", "retryable": False}
            answer = attempt.conn.request(attempt.message("fail", {"error": failure}))
        try:
            await answer
        except _Lost:
            log.info("job %s: the connection dropped before its outcome was recorded", attempt.id)
        except WorkerError as e:
            if attempt.stopping and e.code == "not_held":
                return  # stopped at once: the server ended the attempt already
            log.warning("job %s: the server refused its outcome: %s", attempt.id, e)
        else:
            log.debug("job %s: %s recorded", attempt.id, msg["op"])

    def _lose(self) -> None:
        """The connection is gone: the server recovers the attempts it held."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        conn.close()
        lost = [a for a in self._held.values() if a.conn is conn]
        for attempt in lost:
            del self._held[attempt.id]
            if attempt.runner is not None and not attempt.runner.done():
                attempt.orphan = True
                self._orphans += 1
            attempt.lose()
        if lost:
            log.warning("%d job(s) lost with the connection; the server recovers them", len(lost))
        self._slots_sent = None

    def _update_slots(self) -> None:
        """Tells the server how many jobs to hand over at once: none while shutting
        down, and fewer while handlers of a lost connection still run."""
        conn = self._conn
        if conn is None or conn.closed:
            return
        stopping = self._stopping is not None and self._stopping.is_set()
        slots = 0 if stopping else max(0, self.concurrency - self._orphans)
        if slots != self._slots_sent:
            self._slots_sent = slots
            conn.send_text(encode({"op": "ready", "slots": slots}))


def _parse(text: Any) -> Dict[str, Any]:
    import json

    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    try:
        msg = json.loads(text)
    except ValueError:
        log.warning("the server sent a message that is not JSON: %.200s", text)
        return {}
    return msg if isinstance(msg, dict) else {}


async def _on_thread(fn: Callable[[], Any], name: str) -> Any:
    """Runs `fn()` on a daemon thread of its own (one that a worker can leave behind
    when it ends, as a paused handler would hold it), without blocking the loop."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()

    def settle(ok: bool, value: Any) -> None:
        if future.done():
            return
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)

    def body() -> None:
        try:
            value = fn()
        except BaseException as e:  # noqa: B036 (SystemExit and all: the job fails with it)
            ok, value = False, e
        else:
            ok = True
        try:
            loop.call_soon_threadsafe(settle, ok, value)
        except RuntimeError:
            pass  # the worker has ended

    threading.Thread(target=body, name=name, daemon=True).start()
    return await future

