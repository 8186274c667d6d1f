"""What the API answers, as frozen dataclasses.

Each object keeps the JSON it was made from in `raw`, so that fields the server adds
later are not lost. Times are timezone-aware `datetime`s (UTC).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Dict, List, Mapping, Optional

# States a job does not leave on its own (a manual retry can still requeue it).
TERMINAL_STATES = frozenset({"completed", "failed", "cancelled", "deleted"})

# Events that mean the job reached a terminal state.
TERMINAL_EVENTS = frozenset({"job.completed", "job.failed", "job.cancelled", "job.deleted"})


def parse_time(value: Any) -> Optional[datetime]:
    """An RFC 3339 time as the API writes it (`2026-01-31T02:00:00.000Z`)."""
    if not isinstance(value, str):
        return None
    # datetime.fromisoformat takes no "Z" before Python 3.11.
    return datetime.fromisoformat(value[:-1] + "+00:00" if value.endswith("Z") else value)


def _time(value: Any) -> datetime:
    parsed = parse_time(value)
    if parsed is None:
        raise ValueError(f"expected an RFC 3339 time, got {value!r}")
    return parsed


@dataclass(frozen=True)
class ErrorInfo:
    """Why a job failed or was cancelled: `exit_code`, `timeout`, `upstream_failed`, ..."""

    code: str
    message: str

    @staticmethod
    def from_dict(d: Any) -> Optional[ErrorInfo]:
        if not isinstance(d, dict):
            return None
        return ErrorInfo(code=str(d.get("code", "")), message=str(d.get("message", "")))


@dataclass(frozen=True)
class Job:
    """A job as `GET /api/jobs/{id}` answers it."""

    id: str
    kind: str
    queue: str
    priority: int
    state: str
    progress: Optional[float]
    message: Optional[str]
    step: Optional[str]
    attempt: int
    max_attempts: int
    # Times a crash (of the server or of the worker that held it) sent the job back to
    # its queue, and the most it may; a recovery does not count as an attempt.
    recoveries: int
    max_recoveries: int
    labels: Dict[str, str]
    depends_on: List[str]
    workflow_id: Optional[str]
    schedule_id: Optional[str]
    created_at: datetime
    run_at: Optional[datetime]
    started_at: Optional[datetime]
    finished_at: Optional[datetime]
    result: Any
    error: Optional[ErrorInfo]
    payload: Any
    command: Optional[List[str]]
    pipeline: Optional[str]
    timeout: Optional[str]
    # For a queued job that a full concurrency limit holds, which one:
    # "concurrency limit source:alfabeta (2/2)". Only `Client.get` gives it.
    waiting_for: Optional[str] = field(compare=False)
    raw: Dict[str, Any] = field(repr=False, compare=False)

    @property
    def terminal(self) -> bool:
        """Whether the job has ended: completed, failed, cancelled or deleted."""
        return self.state in TERMINAL_STATES

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> Job:
        return Job(
            id=d["id"],
            kind=d["kind"],
            queue=d.get("queue", "default"),
            priority=d.get("priority", 0),
            state=d["state"],
            progress=d.get("progress"),
            message=d.get("message"),
            step=d.get("step"),
            attempt=d.get("attempt", 0),
            max_attempts=d.get("max_attempts", 0),
            recoveries=d.get("recoveries", 0),
            max_recoveries=d.get("max_recoveries", 0),
            labels=dict(d.get("labels") or {}),
            depends_on=list(d.get("depends_on") or []),
            workflow_id=d.get("workflow_id"),
            schedule_id=d.get("schedule_id"),
            created_at=_time(d["created_at"]),
            run_at=parse_time(d.get("run_at")),
            started_at=parse_time(d.get("started_at")),
            finished_at=parse_time(d.get("finished_at")),
            result=d.get("result"),
            error=ErrorInfo.from_dict(d.get("error")),
            payload=d.get("payload"),
            command=d.get("command"),
            pipeline=d.get("pipeline"),
            timeout=d.get("timeout"),
            waiting_for=d.get("waiting_for"),
            raw=dict(d),
        )


@dataclass(frozen=True)
class Event:
    """One event: `id` is the global sequence number, `seq` the job's own (0 without a job)."""

    id: int
    type: str
    job_id: Optional[str]
    seq: int
    at: datetime
    data: Dict[str, Any]
    raw: Dict[str, Any] = field(repr=False, compare=False)

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> Event:
        return Event(
            id=int(d["id"]),
            type=d["type"],
            job_id=d.get("job_id"),
            seq=int(d.get("seq", 0)),
            at=_time(d["at"]),
            data=dict(d.get("data") or {}),
            raw=dict(d),
        )


@dataclass(frozen=True)
class WorkflowSubmitted:
    """`POST /api/workflows`: the workflow's id and each local name's job id."""

    id: str
    jobs: Dict[str, str]
    raw: Dict[str, Any] = field(repr=False, compare=False)

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> WorkflowSubmitted:
        return WorkflowSubmitted(id=d["id"], jobs=dict(d["jobs"]), raw=dict(d))


@dataclass(frozen=True)
class WorkflowNode:
    """One job of a workflow's graph."""

    id: str
    name: Optional[str]
    kind: str
    state: str
    progress: Optional[float]
    error: Optional[ErrorInfo]
    raw: Dict[str, Any] = field(repr=False, compare=False)

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> WorkflowNode:
        return WorkflowNode(
            id=d["id"],
            name=d.get("name"),
            kind=d["kind"],
            state=d["state"],
            progress=d.get("progress"),
            error=ErrorInfo.from_dict(d.get("error")),
            raw=dict(d),
        )


@dataclass(frozen=True)
class WorkflowEdge:
    """`to` depends on `from_` with condition `on` (`completed`, `failed`, `finished`)."""

    from_: str
    to: str
    on: str
    status: str
    raw: Dict[str, Any] = field(repr=False, compare=False)

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> WorkflowEdge:
        return WorkflowEdge(from_=d["from"], to=d["to"], on=d["on"], status=d["status"], raw=dict(d))


@dataclass(frozen=True)
class Workflow:
    """A workflow's graph and states (`GET /api/workflows/{id}`)."""

    id: str
    state: str
    paused: bool
    created_at: datetime
    counts: Dict[str, int]
    jobs: Dict[str, str]
    nodes: List[WorkflowNode]
    edges: List[WorkflowEdge]
    raw: Dict[str, Any] = field(repr=False, compare=False)

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> Workflow:
        return Workflow(
            id=d["id"],
            state=d["state"],
            paused=bool(d.get("paused")),
            created_at=_time(d["created_at"]),
            counts=dict(d.get("counts") or {}),
            jobs=dict(d.get("jobs") or {}),
            nodes=[WorkflowNode.from_dict(n) for n in d.get("nodes") or []],
            edges=[WorkflowEdge.from_dict(e) for e in d.get("edges") or []],
            raw=dict(d),
        )


@dataclass(frozen=True)
class Schedule:
    """A stored schedule, with its next and last run."""

    id: str
    job: Dict[str, Any]
    trigger: Dict[str, Any]
    timezone: str
    enabled: bool
    misfire: str
    overlap: str
    next_run: Optional[datetime]
    last_run: Optional[datetime]
    run_count: int
    last_job: Optional[Dict[str, Any]]
    created_at: datetime
    raw: Dict[str, Any] = field(repr=False, compare=False)

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> Schedule:
        return Schedule(
            id=d["id"],
            job=dict(d["job"]),
            trigger=dict(d["trigger"]),
            timezone=d.get("timezone", "UTC"),
            enabled=bool(d.get("enabled")),
            misfire=d.get("misfire", ""),
            overlap=d.get("overlap", ""),
            next_run=parse_time(d.get("next_run")),
            last_run=parse_time(d.get("last_run")),
            run_count=d.get("run_count", 0),
            last_job=d.get("last_job"),
            created_at=_time(d["created_at"]),
            raw=dict(d),
        )


@dataclass(frozen=True)
class Fire:
    """One fire of a schedule, with its job's state now (`outcome`)."""

    seq: int
    schedule_id: str
    scheduled_for: datetime
    fired_at: datetime
    reason: str
    action: str
    job_id: Optional[str]
    outcome: Optional[str]
    error: Optional[ErrorInfo]
    message: Optional[str]
    raw: Dict[str, Any] = field(repr=False, compare=False)

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> Fire:
        return Fire(
            seq=d["seq"],
            schedule_id=d["schedule_id"],
            scheduled_for=_time(d["scheduled_for"]),
            fired_at=_time(d["fired_at"]),
            reason=d["reason"],
            action=d["action"],
            job_id=d.get("job_id"),
            outcome=d.get("outcome"),
            error=ErrorInfo.from_dict(d.get("error")),
            message=d.get("message"),
            raw=dict(d),
        )


@dataclass(frozen=True)
class Triggered:
    """`POST /api/schedules/{id}/trigger`: the fire, its job (None when skipped), the schedule."""

    fire: Fire
    job: Optional[Job]
    schedule: Schedule
    raw: Dict[str, Any] = field(repr=False, compare=False)

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> Triggered:
        job = d.get("job")
        return Triggered(
            fire=Fire.from_dict(d["fire"]),
            job=Job.from_dict(job) if job else None,
            schedule=Schedule.from_dict(d["schedule"]),
            raw=dict(d),
        )


@dataclass(frozen=True)
class Parent:
    """The outcome of a job another depends on, as a worker receives it: `name` is its
    local name in the workflow (None outside one), `on` the condition
    (`completed`, `failed`, `finished`) and `status` whether it is met."""

    job_id: str
    name: Optional[str]
    on: str
    status: str
    state: str
    result: Any
    error: Optional[ErrorInfo]
    raw: Dict[str, Any] = field(repr=False, compare=False)

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> Parent:
        return Parent(
            job_id=d["job_id"],
            name=d.get("name"),
            on=d.get("on", "completed"),
            status=d.get("status", ""),
            state=d.get("state", ""),
            result=d.get("result"),
            error=ErrorInfo.from_dict(d.get("error")),
            raw=dict(d),
        )


@dataclass(frozen=True)
class WorkerInfo:
    """A connected remote worker (`GET /api/workers`): the jobs it runs now in `running`."""

    id: str
    name: str
    kinds: List[str]
    queues: List[str]
    slots: int
    running: List[str]
    connected_at: datetime
    raw: Dict[str, Any] = field(repr=False, compare=False)

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> WorkerInfo:
        return WorkerInfo(
            id=d["id"],
            name=d.get("name", ""),
            kinds=list(d.get("kinds") or []),
            queues=list(d.get("queues") or []),
            slots=int(d.get("slots", 0)),
            running=list(d.get("running") or []),
            connected_at=_time(d["connected_at"]),
            raw=dict(d),
        )
