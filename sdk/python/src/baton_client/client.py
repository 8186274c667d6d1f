"""The synchronous client, on httpx.Client."""

from __future__ import annotations

import ssl
import time
from types import TracebackType
from typing import (
    Any,
    Callable,
    Dict,
    Generator,
    Iterable,
    Iterator,
    List,
    Mapping,
    Optional,
    Tuple,
    Type,
    TypeVar,
    Union,
)

import httpx
from typing_extensions import Unpack

from . import __version__
from . import _calls as calls
from ._stream import Decoder, Position, Retry, retryable
from ._tls import CaFile, tls_context
from .errors import BatonConnectionError, BatonError, BatonTimeout, error_for, transport_error
from .models import (
    TERMINAL_EVENTS,
    Event,
    Fire,
    Job,
    Schedule,
    Triggered,
    WorkerInfo,
    Workflow,
    WorkflowSubmitted,
)
from .spec import JobFields, job_spec

T = TypeVar("T")

DEFAULT_URL = "http://127.0.0.1:7700"

# A job list's states: one, or several (any of them).
States = Union[None, str, Iterable[str]]


def connection(url: str, token: Optional[str]) -> Tuple[str, Optional[str], Dict[str, str]]:
    """The base URL, the socket file (or None) and the headers for a Baton URL:
    `http(s)://host:port`, or `unix:///path/baton.sock` for a server on a local socket."""
    headers = {"user-agent": f"baton-client/{__version__}"}
    if token:
        headers["authorization"] = f"Bearer {token}"
    url = url.rstrip("/")
    if url.startswith("unix://"):
        return "http://localhost", url[len("unix://") :], headers
    return url, None, headers


def verification(url: str, ca: Optional[CaFile]) -> Union[bool, ssl.SSLContext]:
    """What httpx verifies an `https://` server with: the system's root certificates,
    or the ones in `ca`. A `ca` that is not a PEM certificate file raises ValueError."""
    if ca is None and not url.startswith("https://"):
        return True  # no TLS, nothing to verify
    return tls_context(ca)


class Client:
    """A client of Baton's HTTP API.

    >>> with Client("http://127.0.0.1:7700") as baton:
    ...     job = baton.submit("command", command=["echo", "hi"])
    ...     baton.wait(job.id).state
    'completed'

    `token` is sent as `Authorization: Bearer` when the server has auth on; `timeout`
    (seconds) bounds each request (a `wait` and the event streams have their own).
    An `https://` server's certificate is verified against the system's root
    certificates, or with `ca` (a PEM file) against those certificates only; one that
    is not trusted raises `UntrustedCertificate`.
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        token: Optional[str] = None,
        timeout: float = 30.0,
        *,
        ca: Optional[CaFile] = None,
    ) -> None:
        base, uds, headers = connection(url, token)
        verify = verification(url, ca)
        transport = httpx.HTTPTransport(uds=uds, verify=verify) if uds else None
        self.url = url.rstrip("/")
        self._http = httpx.Client(
            base_url=base, headers=headers, timeout=timeout, transport=transport, verify=verify
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, t: Optional[Type[BaseException]], e: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        self.close()

    # Jobs

    def submit(self, kind: str, payload: Any = None, **fields: Unpack[JobFields]) -> Job:
        """Submits a job (`POST /api/jobs`); with a client `id` that exists, answers that job."""
        return self._run(calls.submit(job_spec(kind, payload, **fields)))

    def submit_many(self, specs: Iterable[Mapping[str, Any]]) -> List[Job]:
        """Submits jobs in one write, all or none (`POST /api/jobs/batch`); build each
        spec with `job_spec`. A refusal names the job's `index` (and `field`)."""
        return self._run(calls.submit_many(specs))

    def get(self, id: str) -> Job:
        return self._run(calls.get(id))

    def list(
        self,
        state: States = None,
        queue: Optional[str] = None,
        kind: Optional[str] = None,
        label: Union[None, str, Tuple[str, str]] = None,
        q: Optional[str] = None,
        *,
        workflow: Optional[str] = None,
        schedule: Optional[str] = None,
        sort: Optional[str] = None,
        page_size: int = 100,
    ) -> Iterator[Job]:
        """Every job that matches, newest first, read a page at a time.

        `state` is one state or several (aliases accepted), `label` is `"key:value"`
        or `(key, value)`, `q` searches ids, kinds, labels and errors, `sort` is
        `created` (default), `started` or `finished`."""

        def page(cursor: Optional[str]) -> calls.Call[calls.Page[Job]]:
            return calls.list_jobs(
                state=state,
                queue=queue,
                kind=kind,
                label=label,
                q=q,
                workflow=workflow,
                schedule=schedule,
                sort=sort,
                limit=page_size,
                cursor=cursor,
            )

        return self._pages(page)

    def wait(self, id: str, timeout: Optional[float] = None) -> Job:
        """Waits until the job is terminal (completed, failed, cancelled or deleted)
        and answers it; raises `BatonTimeout` after `timeout` seconds (None: no limit).
        Follows the job's event stream, across dropped connections."""
        deadline = None if timeout is None else time.monotonic() + timeout
        job = self.get(id)
        if job.terminal:
            return job
        try:
            with EventStream(self, job=id, after=None, reconnect_for=None, deadline=deadline) as events:
                for event in events:
                    # A terminal event in the history may be from before a retry.
                    if event.type in TERMINAL_EVENTS:
                        job = self.get(id)
                        if job.terminal:
                            return job
                    if deadline is not None and time.monotonic() >= deadline:
                        break  # a busy job's events never let the read time out
        except BatonTimeout:
            pass
        job = self.get(id)
        if job.terminal:
            return job
        raise BatonTimeout(f"job {id} did not end within {timeout}s; it is {job.state}")

    def pause(self, id: str) -> Job:
        return self._run(calls.control(id, "pause"))

    def resume(self, id: str) -> Job:
        return self._run(calls.control(id, "resume"))

    def stop(self, id: str, force: bool = False) -> Job:
        """Stops a running or paused job: SIGTERM then, after its grace, SIGKILL (at once
        with `force`). It ends `cancelled`; the answer may still say `stopping`."""
        return self._run(calls.control(id, "stop", force=force))

    def cancel(self, id: str) -> Job:
        return self._run(calls.control(id, "cancel"))

    def retry(self, id: str, from_checkpoint: bool = False) -> Job:
        return self._run(calls.control(id, "retry", from_checkpoint=from_checkpoint))

    def delete(self, id: str) -> Job:
        return self._run(calls.delete(id))

    def job_events(self, id: str, after: int = 0) -> List[Event]:
        """The job's stored events after its own `seq` `after`, in order."""
        return self._run(calls.job_events(id, after))

    def events(
        self, after: Optional[int] = None, job: Optional[str] = None, *, reconnect_for: Optional[float] = None
    ) -> EventStream:
        """Events as they happen (SSE), each once and in order.

        `after` is a global event id: the stream starts with the events after it.
        Without it, a job's stream starts with the job's whole history and the
        stream of all events with what happens from now. A dropped connection (or a
        server restart) is followed by a new one that asks for the events after the
        last one yielded (`Last-Event-ID`); `reconnect_for` is how long to keep trying
        (seconds, None: for ever). The first connection's failure is raised."""
        return EventStream(self, job=job, after=after, reconnect_for=reconnect_for)

    def workers(self) -> List[WorkerInfo]:
        """The remote workers connected now (`GET /api/workers`)."""
        return self._run(calls.workers())

    # Workflows

    def submit_workflow(
        self, jobs: Mapping[str, Mapping[str, Any]], id: Optional[str] = None
    ) -> WorkflowSubmitted:
        """Submits jobs under local names, stored all or none; `depends_on` in a spec
        names other jobs of the workflow. Build each spec with `job_spec`."""
        return self._run(calls.submit_workflow(jobs, id))

    def get_workflow(self, id: str) -> Workflow:
        return self._run(calls.get_workflow(id))

    def pause_workflow(self, id: str) -> Workflow:
        return self._run(calls.control_workflow(id, "pause"))

    def resume_workflow(self, id: str) -> Workflow:
        return self._run(calls.control_workflow(id, "resume"))

    def cancel_workflow(self, id: str) -> Workflow:
        return self._run(calls.control_workflow(id, "cancel"))

    def retry_workflow(self, id: str, from_checkpoint: bool = False) -> Workflow:
        return self._run(calls.control_workflow(id, "retry", from_checkpoint=from_checkpoint))

    # Schedules

    def create_schedule(
        self,
        job: Mapping[str, Any],
        trigger: Mapping[str, Any],
        *,
        id: Optional[str] = None,
        timezone: Optional[str] = None,
        enabled: Optional[bool] = None,
        misfire: Optional[str] = None,
        misfire_limit: Optional[int] = None,
        overlap: Optional[str] = None,
    ) -> Schedule:
        """Creates a schedule of `job` (a spec from `job_spec`) on `trigger`, e.g.
        `{"type": "cron", "expr": "0 2 * * *"}` or `{"type": "interval", "every": "6h"}`."""
        spec = calls.schedule_spec(
            job,
            trigger,
            id=id,
            timezone=timezone,
            enabled=enabled,
            misfire=misfire,
            misfire_limit=misfire_limit,
            overlap=overlap,
        )
        return self._run(calls.create_schedule(spec))

    def put_schedule(
        self,
        id: str,
        job: Mapping[str, Any],
        trigger: Mapping[str, Any],
        *,
        timezone: Optional[str] = None,
        enabled: Optional[bool] = None,
        misfire: Optional[str] = None,
        misfire_limit: Optional[int] = None,
        overlap: Optional[str] = None,
    ) -> Schedule:
        """Creates or replaces a schedule; its history and runs stay."""
        spec = calls.schedule_spec(
            job,
            trigger,
            id=id,
            timezone=timezone,
            enabled=enabled,
            misfire=misfire,
            misfire_limit=misfire_limit,
            overlap=overlap,
        )
        return self._run(calls.put_schedule(id, spec))

    def get_schedule(self, id: str) -> Schedule:
        return self._run(calls.get_schedule(id))

    def list_schedules(
        self, enabled: Optional[bool] = None, q: Optional[str] = None, *, page_size: int = 100
    ) -> Iterator[Schedule]:
        """Every schedule (enabled or paused ones only, or whose id has `q`), by id."""
        return self._pages(
            lambda cursor: calls.list_schedules(enabled=enabled, q=q, limit=page_size, cursor=cursor)
        )

    def delete_schedule(self, id: str) -> None:
        self._run(calls.delete_schedule(id))

    def trigger_schedule(self, id: str) -> Triggered:
        """Fires the schedule now (paused or not), without moving its next run."""
        return self._run(calls.trigger_schedule(id))

    def pause_schedule(self, id: str) -> Schedule:
        return self._run(calls.control_schedule(id, "pause"))

    def resume_schedule(self, id: str) -> Schedule:
        return self._run(calls.control_schedule(id, "resume"))

    def schedule_history(self, id: str, *, page_size: int = 100) -> Iterator[Fire]:
        """Every fire of the schedule, newest first, with its job's state now."""
        return self._pages(lambda cursor: calls.schedule_history(id, limit=page_size, cursor=cursor))

    # Plumbing

    def _run(self, call: calls.Call[T]) -> T:
        try:
            r = self._http.request(call.method, call.path, params=call.params, json=call.body)
        except httpx.TransportError as e:
            raise transport_error(e, self.url + call.path) from e
        if r.status_code >= 400:
            raise error_for(r)
        return call.parse(r.json())

    def _pages(self, page: Callable[[Optional[str]], calls.Call[calls.Page[T]]]) -> Iterator[T]:
        cursor: Optional[str] = None
        while True:
            items, cursor = self._run(page(cursor))
            yield from items
            if cursor is None:
                return


class EventStream(Iterator[Event]):
    """An iterator over events (see `Client.events`); close it, or use it in a `with`.

    `last_id` is the id of the last event yielded (pass it as `after` to carry on
    later), `reconnects` counts the connections made again after a drop, and
    `pruned` is `(after, pruned_upto)` when retention removed events before the
    stream could read them."""

    def __init__(
        self,
        client: Client,
        *,
        job: Optional[str],
        after: Optional[int],
        reconnect_for: Optional[float],
        deadline: Optional[float] = None,
    ) -> None:
        self._client = client
        self._position = Position(job, after)
        self._retry = Retry(reconnect_for, deadline)
        if self._position.needs_start:
            # "From now" is now, not when the first event is read.
            self._position.last = client._run(calls.event_position())
        self._events = self._follow()

    @property
    def last_id(self) -> Optional[int]:
        return self._position.last

    @property
    def reconnects(self) -> int:
        return self._retry.reconnects

    @property
    def pruned(self) -> Optional[Tuple[int, int]]:
        return self._position.pruned

    def __next__(self) -> Event:
        return next(self._events)

    def close(self) -> None:
        self._events.close()

    def __enter__(self) -> EventStream:
        return self

    def __exit__(
        self, t: Optional[Type[BaseException]], e: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        self.close()

    def _follow(self) -> Generator[Event, None, None]:
        client, position, retry = self._client, self._position, self._retry
        connected = False
        while True:
            path, headers = position.request()
            url = client.url + path
            timeout = httpx.Timeout(client._http.timeout.connect, read=retry.read_timeout())
            try:
                with client._http.stream("GET", path, headers=headers, timeout=timeout) as r:
                    if r.status_code >= 400:
                        r.read()
                        raise error_for(r)
                    connected = True
                    retry.connected()
                    decoder = Decoder()
                    for line in r.iter_lines():
                        frame = decoder.feed(line)
                        event = position.take(frame) if frame else None
                        if event is not None:
                            retry.delivered()
                            yield event
                error: BatonError = BatonConnectionError(f"the event stream from {url} ended", url=url)
            except httpx.TransportError as e:
                error = transport_error(e, url)
            except BatonError as e:
                if not retryable(e):
                    raise
                error = e
            if not connected:
                raise error
            time.sleep(retry.after_failure(error, url))
