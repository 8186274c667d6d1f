"""Every API call as data: method, path, query, body and how to read the answer.

`Client` and `AsyncClient` run the same calls, one with httpx.Client and the other
with httpx.AsyncClient, so that what each endpoint takes and answers is written once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Generic, Iterable, List, Mapping, Optional, Tuple, TypeVar, Union
from urllib.parse import quote

from .models import Event, Fire, Job, Schedule, Triggered, WorkerInfo, Workflow, WorkflowSubmitted
from .spec import time

T = TypeVar("T")

# A page of a list, and the cursor of the next one (None on the last page).
Page = Tuple[List[T], Optional[str]]


@dataclass(frozen=True)
class Call(Generic[T]):
    method: str
    path: str
    parse: Callable[[Any], T]
    params: Optional[Dict[str, str]] = None
    body: Any = None


def _id(kind: str, value: str) -> str:
    if not value:
        raise ValueError(f"a {kind} id cannot be empty")
    return quote(value, safe="")


def _params(**values: Any) -> Dict[str, str]:
    """Query parameters, without the unset ones; lists are comma separated."""
    out: Dict[str, str] = {}
    for name, value in values.items():
        if value is None:
            continue
        if isinstance(value, bool):
            value = "true" if value else "false"
        elif isinstance(value, (list, tuple)):
            value = ",".join(value)
        out[name] = str(value)
    return out


def _items(key: str, make: Callable[[Any], T]) -> Callable[[Any], List[T]]:
    return lambda d: [make(x) for x in d[key]]


def _page(key: str, make: Callable[[Any], T]) -> Callable[[Any], Page[T]]:
    return lambda d: (_items(key, make)(d), d.get("next_cursor"))


# Jobs


def submit(spec: Mapping[str, Any]) -> Call[Job]:
    return Call("POST", "/api/jobs", Job.from_dict, body=dict(spec))


def submit_many(specs: Iterable[Mapping[str, Any]]) -> Call[List[Job]]:
    body = {"jobs": [dict(s) for s in specs]}
    return Call("POST", "/api/jobs/batch", _items("jobs", Job.from_dict), body=body)


def get(id: str) -> Call[Job]:
    return Call("GET", f"/api/jobs/{_id('job', id)}", Job.from_dict)


def list_jobs(
    *,
    state: Union[None, str, Iterable[str]],
    queue: Optional[str],
    kind: Optional[str],
    label: Union[None, str, Tuple[str, str]],
    q: Optional[str],
    workflow: Optional[str],
    schedule: Optional[str],
    sort: Optional[str],
    limit: int,
    cursor: Optional[str],
) -> Call[Page[Job]]:
    if isinstance(label, tuple):
        label = f"{label[0]}:{label[1]}"
    states = state if state is None or isinstance(state, str) else list(state)
    params = _params(
        state=states,
        queue=queue,
        kind=kind,
        label=label,
        q=q,
        workflow=workflow,
        schedule=schedule,
        sort=sort,
        limit=limit,
        cursor=cursor,
    )
    return Call("GET", "/api/jobs", _page("jobs", Job.from_dict), params=params)


def control(id: str, action: str, **flags: Optional[bool]) -> Call[Job]:
    params = _params(**{k: v for k, v in flags.items() if v})
    return Call("POST", f"/api/jobs/{_id('job', id)}/{action}", Job.from_dict, params=params)


def delete(id: str) -> Call[Job]:
    return Call("DELETE", f"/api/jobs/{_id('job', id)}", Job.from_dict)


def job_events(id: str, after: int) -> Call[List[Event]]:
    path = f"/api/jobs/{_id('job', id)}/events"
    return Call("GET", path, _items("events", Event.from_dict), params=_params(after=after))


def event_position() -> Call[int]:
    """The id of the newest event, from the counts' snapshot."""
    return Call("GET", "/api/stats", lambda d: int(d["event_id"]))


def workers() -> Call[List[WorkerInfo]]:
    return Call("GET", "/api/workers", _items("workers", WorkerInfo.from_dict))


# Workflows


def submit_workflow(jobs: Mapping[str, Mapping[str, Any]], id: Optional[str]) -> Call[WorkflowSubmitted]:
    body: Dict[str, Any] = {"jobs": {name: dict(spec) for name, spec in jobs.items()}}
    if id is not None:
        body["id"] = id
    return Call("POST", "/api/workflows", WorkflowSubmitted.from_dict, body=body)


def get_workflow(id: str) -> Call[Workflow]:
    return Call("GET", f"/api/workflows/{_id('workflow', id)}", Workflow.from_dict)


def control_workflow(id: str, action: str, **flags: Optional[bool]) -> Call[Workflow]:
    params = _params(**{k: v for k, v in flags.items() if v})
    path = f"/api/workflows/{_id('workflow', id)}/{action}"
    return Call("POST", path, Workflow.from_dict, params=params)


# Schedules


def schedule_spec(
    job: Mapping[str, Any],
    trigger: Mapping[str, Any],
    *,
    id: Optional[str],
    timezone: Optional[str],
    enabled: Optional[bool],
    misfire: Optional[str],
    misfire_limit: Optional[int],
    overlap: Optional[str],
) -> Dict[str, Any]:
    trigger = dict(trigger)
    for key in ("at", "start_at"):
        if key in trigger:
            trigger[key] = time(trigger[key])
    spec: Dict[str, Any] = {"job": dict(job), "trigger": trigger}
    optional = {
        "id": id,
        "timezone": timezone,
        "enabled": enabled,
        "misfire": misfire,
        "misfire_limit": misfire_limit,
        "overlap": overlap,
    }
    spec.update({k: v for k, v in optional.items() if v is not None})
    return spec


def create_schedule(spec: Dict[str, Any]) -> Call[Schedule]:
    return Call("POST", "/api/schedules", Schedule.from_dict, body=spec)


def put_schedule(id: str, spec: Dict[str, Any]) -> Call[Schedule]:
    return Call("PUT", f"/api/schedules/{_id('schedule', id)}", Schedule.from_dict, body=spec)


def get_schedule(id: str) -> Call[Schedule]:
    return Call("GET", f"/api/schedules/{_id('schedule', id)}", Schedule.from_dict)


def list_schedules(
    *, enabled: Optional[bool], q: Optional[str], limit: int, cursor: Optional[str]
) -> Call[Page[Schedule]]:
    params = _params(enabled=enabled, q=q, limit=limit, cursor=cursor)
    return Call("GET", "/api/schedules", _page("schedules", Schedule.from_dict), params=params)


def delete_schedule(id: str) -> Call[None]:
    return Call("DELETE", f"/api/schedules/{_id('schedule', id)}", lambda _: None)


def trigger_schedule(id: str) -> Call[Triggered]:
    return Call("POST", f"/api/schedules/{_id('schedule', id)}/trigger", Triggered.from_dict)


def control_schedule(id: str, action: str) -> Call[Schedule]:
    return Call("POST", f"/api/schedules/{_id('schedule', id)}/{action}", Schedule.from_dict)


def schedule_history(id: str, *, limit: int, cursor: Optional[str]) -> Call[Page[Fire]]:
    path = f"/api/schedules/{_id('schedule', id)}/history"
    return Call("GET", path, _page("fires", Fire.from_dict), params=_params(limit=limit, cursor=cursor))
