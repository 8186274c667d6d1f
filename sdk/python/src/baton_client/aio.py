"""The asynchronous client, on httpx.AsyncClient: `Client`'s methods, awaited.

Lists and event streams are async iterators (`async for job in baton.list(...)`)."""

from __future__ import annotations

import asyncio
import time
from types import TracebackType
from typing import (
    Any,
    AsyncGenerator,
    AsyncIterator,
    Callable,
    Iterable,
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

from . import _calls as calls
from ._stream import Decoder, Position, Retry, retryable
from ._tls import CaFile
from .client import DEFAULT_URL, States, connection, verification
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


class AsyncClient:
    """The asynchronous twin of `Client`; see it for what each method does.

    >>> async with AsyncClient() as baton:
    ...     job = await baton.submit("command", command=["echo", "hi"])
    ...     (await baton.wait(job.id)).state
    'completed'
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
        transport = httpx.AsyncHTTPTransport(uds=uds, verify=verify) if uds else None
        self.url = url.rstrip("/")
        self._http = httpx.AsyncClient(
            base_url=base, headers=headers, timeout=timeout, transport=transport, verify=verify
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, t: Optional[Type[BaseException]], e: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        await self.aclose()

    # Jobs

    async def submit(self, kind: str, payload: Any = None, **fields: Unpack[JobFields]) -> Job:
        return await self._run(calls.submit(job_spec(kind, payload, **fields)))

    async def submit_many(self, specs: Iterable[Mapping[str, Any]]) -> List[Job]:
        return await self._run(calls.submit_many(specs))

    async def get(self, id: str) -> Job:
        return await self._run(calls.get(id))

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
    ) -> AsyncIterator[Job]:
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

    async def wait(self, id: str, timeout: Optional[float] = None) -> Job:
        deadline = None if timeout is None else time.monotonic() + timeout
        job = await self.get(id)
        if job.terminal:
            return job
        try:
            async with AsyncEventStream(
                self, job=id, after=None, reconnect_for=None, deadline=deadline
            ) as events:
                async for event in events:
                    if event.type in TERMINAL_EVENTS:
                        job = await self.get(id)
                        if job.terminal:
                            return job
                    if deadline is not None and time.monotonic() >= deadline:
                        break  # a busy job's events never let the read time out
        except BatonTimeout:
            pass
        job = await self.get(id)
        if job.terminal:
            return job
        raise BatonTimeout(f"job {id} did not end within {timeout}s; it is {job.state}")

    async def pause(self, id: str) -> Job:
        return await self._run(calls.control(id, "pause"))

    async def resume(self, id: str) -> Job:
        return await self._run(calls.control(id, "resume"))

    async def stop(self, id: str, force: bool = False) -> Job:
        return await self._run(calls.control(id, "stop", force=force))

    async def cancel(self, id: str) -> Job:
        return await self._run(calls.control(id, "cancel"))

    async def retry(self, id: str, from_checkpoint: bool = False) -> Job:
        return await self._run(calls.control(id, "retry", from_checkpoint=from_checkpoint))

    async def delete(self, id: str) -> Job:
        return await self._run(calls.delete(id))

    async def job_events(self, id: str, after: int = 0) -> List[Event]:
        return await self._run(calls.job_events(id, after))

    def events(
        self, after: Optional[int] = None, job: Optional[str] = None, *, reconnect_for: Optional[float] = None
    ) -> AsyncEventStream:
        return AsyncEventStream(self, job=job, after=after, reconnect_for=reconnect_for)

    async def workers(self) -> List[WorkerInfo]:
        """The remote workers connected now (`GET /api/workers`)."""
        return await self._run(calls.workers())

    # Workflows

    async def submit_workflow(
        self, jobs: Mapping[str, Mapping[str, Any]], id: Optional[str] = None
    ) -> WorkflowSubmitted:
        return await self._run(calls.submit_workflow(jobs, id))

    async def get_workflow(self, id: str) -> Workflow:
        return await self._run(calls.get_workflow(id))

    async def pause_workflow(self, id: str) -> Workflow:
        return await self._run(calls.control_workflow(id, "pause"))

    async def resume_workflow(self, id: str) -> Workflow:
        return await self._run(calls.control_workflow(id, "resume"))

    async def cancel_workflow(self, id: str) -> Workflow:
        return await self._run(calls.control_workflow(id, "cancel"))

    async def retry_workflow(self, id: str, from_checkpoint: bool = False) -> Workflow:
        return await self._run(calls.control_workflow(id, "retry", from_checkpoint=from_checkpoint))

    # Schedules

    async def create_schedule(
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
        return await self._run(calls.create_schedule(spec))

    async def put_schedule(
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
        return await self._run(calls.put_schedule(id, spec))

    async def get_schedule(self, id: str) -> Schedule:
        return await self._run(calls.get_schedule(id))

    def list_schedules(
        self, enabled: Optional[bool] = None, q: Optional[str] = None, *, page_size: int = 100
    ) -> AsyncIterator[Schedule]:
        return self._pages(
            lambda cursor: calls.list_schedules(enabled=enabled, q=q, limit=page_size, cursor=cursor)
        )

    async def delete_schedule(self, id: str) -> None:
        await self._run(calls.delete_schedule(id))

    async def trigger_schedule(self, id: str) -> Triggered:
        return await self._run(calls.trigger_schedule(id))

    async def pause_schedule(self, id: str) -> Schedule:
        return await self._run(calls.control_schedule(id, "pause"))

    async def resume_schedule(self, id: str) -> Schedule:
        return await self._run(calls.control_schedule(id, "resume"))

    def schedule_history(self, id: str, *, page_size: int = 100) -> AsyncIterator[Fire]:
        return self._pages(lambda cursor: calls.schedule_history(id, limit=page_size, cursor=cursor))

    # Plumbing

    async def _run(self, call: calls.Call[T]) -> T:
        try:
            r = await self._http.request(call.method, call.path, params=call.params, json=call.body)
        except httpx.TransportError as e:
            raise transport_error(e, self.url + call.path) from e
        if r.status_code >= 400:
            raise error_for(r)
        return call.parse(r.json())

    async def _pages(self, page: Callable[[Optional[str]], calls.Call[calls.Page[T]]]) -> AsyncIterator[T]:
        cursor: Optional[str] = None
        while True:
            items, cursor = await self._run(page(cursor))
            for item in items:
                yield item
            if cursor is None:
                return


class AsyncEventStream(AsyncIterator[Event]):
    """An async iterator over events (see `Client.events`); close it with `aclose`, or
    use it in an `async with`. `last_id`, `reconnects` and `pruned` as `EventStream`'s."""

    def __init__(
        self,
        client: AsyncClient,
        *,
        job: Optional[str],
        after: Optional[int],
        reconnect_for: Optional[float],
        deadline: Optional[float] = None,
    ) -> None:
        self._client = client
        self._position = Position(job, after)
        self._retry = Retry(reconnect_for, deadline)
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

    async def __anext__(self) -> Event:
        return await self._events.__anext__()

    async def aclose(self) -> None:
        await self._events.aclose()

    async def start(self) -> None:
        """Fixes where a stream of everything "from now" starts: entering it (`async
        with`) does so, or else reading its first event."""
        if self._position.needs_start:
            self._position.last = await self._client._run(calls.event_position())

    async def __aenter__(self) -> AsyncEventStream:
        await self.start()
        return self

    async def __aexit__(
        self, t: Optional[Type[BaseException]], e: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        await self.aclose()

    async def _follow(self) -> AsyncGenerator[Event, None]:
        client, position, retry = self._client, self._position, self._retry
        await self.start()
        connected = False
        while True:
            path, headers = position.request()
            url = client.url + path
            timeout = httpx.Timeout(client._http.timeout.connect, read=retry.read_timeout())
            try:
                async with client._http.stream("GET", path, headers=headers, timeout=timeout) as r:
                    if r.status_code >= 400:
                        await r.aread()
                        raise error_for(r)
                    connected = True
                    retry.connected()
                    decoder = Decoder()
                    async for line in r.aiter_lines():
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
            await asyncio.sleep(retry.after_failure(error, url))
