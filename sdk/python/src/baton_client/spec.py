"""Job specs: the JSON that `POST /api/jobs` takes, built from keyword arguments."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Dict, Mapping, Sequence, Union

from typing_extensions import Literal, TypedDict, Unpack

from .models import Job

# A duration: a string the API reads (`500ms`, `30s`, `10m`, `6h`, `1d`), seconds as a
# number, or a timedelta.
Duration = Union[str, int, float, timedelta]

# A dependency: a job id (or a Job), or {"job": id, "on": "completed" | "failed" | "finished"}.
Dependency = Union[str, Job, Mapping[str, str]]


class JobFields(TypedDict, total=False):
    """The job spec's fields besides `kind` and `payload` (DESIGN.md section 6)."""

    id: str
    """A client id: submitting it again answers the existing job."""
    queue: str
    priority: int
    delay: Duration
    run_at: Union[str, datetime]
    max_attempts: int
    backoff: Mapping[str, Duration]
    """{"initial": ..., "max": ...}"""
    timeout: Duration
    grace: Duration
    max_recoveries: int
    depends_on: Sequence[Dependency]
    unique_key: str
    unique_policy: Literal["reject", "return_existing", "replace"]
    labels: Mapping[str, str]
    command: Sequence[str]
    """Kind `command`: the program and its arguments."""
    shell: bool
    """Kind `command`: run `sh -c command[0]`."""
    env: Mapping[str, Union[str, Mapping[str, str]]]
    """A value is a string, or {"secret": "..."} for one kept encrypted."""
    cwd: str
    steps: Sequence[Mapping[str, Any]]
    """Kind `pipeline`, inline: [{"name": ..., "command": [...], "timeout": ...}, ...]."""
    pipeline: str
    """Kind `pipeline`: a stored pipeline's id."""


def duration(value: Duration) -> str:
    """A duration as the API writes it: seconds become `30s` or `1500ms`."""
    if isinstance(value, str):
        return value
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    if seconds < 0:
        raise ValueError(f"a duration cannot be negative: {value!r}")
    ms = round(seconds * 1000)
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


def time(value: Union[str, datetime]) -> str:
    """A time as RFC 3339; a datetime must say its time zone."""
    if isinstance(value, str):
        return value
    if value.tzinfo is None:
        raise ValueError(f"a time needs a time zone (e.g. timezone.utc): {value!r}")
    return value.isoformat()


def job_spec(kind: str, payload: Any = None, **fields: Unpack[JobFields]) -> Dict[str, Any]:
    """The JSON spec of a job, for `submit_many`, workflows and schedules.

    >>> job_spec("command", command=["echo", "hi"], timeout=30)
    {'kind': 'command', 'command': ['echo', 'hi'], 'timeout': '30s'}
    """
    spec: Dict[str, Any] = {"kind": kind}
    if payload is not None:
        spec["payload"] = payload
    given: Mapping[str, Any] = fields
    for name, value in given.items():
        if value is None:
            continue
        if name in ("delay", "timeout", "grace"):
            value = duration(value)
        elif name == "run_at":
            value = time(value)
        elif name == "backoff":
            value = {k: duration(v) for k, v in value.items()}
        elif name == "depends_on":
            value = [_dependency(d) for d in value]
        elif name in ("command", "steps"):
            value = list(value)
        elif name in ("labels", "env"):
            value = dict(value)
        spec[name] = value
    return spec


def _dependency(d: Dependency) -> Union[str, Dict[str, str]]:
    if isinstance(d, Job):
        return d.id
    if isinstance(d, str):
        return d
    return dict(d)
