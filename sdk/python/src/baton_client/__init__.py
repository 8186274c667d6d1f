"""A typed client for Baton's HTTP API: `Client` (sync) and `AsyncClient` (asyncio)."""

__version__ = "0.1.0"

from .aio import AsyncClient, AsyncEventStream
from .client import Client, EventStream
from .errors import (
    BadRequest,
    BatonConnectionError,
    BatonError,
    BatonTimeout,
    Conflict,
    Forbidden,
    Invalid,
    NotFound,
    RateLimited,
    ServerError,
    TooLarge,
    Unauthorized,
    Unavailable,
)
from .models import (
    TERMINAL_STATES,
    ErrorInfo,
    Event,
    Fire,
    Job,
    Schedule,
    Triggered,
    Workflow,
    WorkflowEdge,
    WorkflowNode,
    WorkflowSubmitted,
)
from .spec import Duration, JobFields, job_spec

__all__ = [
    "AsyncClient",
    "AsyncEventStream",
    "BadRequest",
    "BatonConnectionError",
    "BatonError",
    "BatonTimeout",
    "Client",
    "Conflict",
    "Duration",
    "ErrorInfo",
    "Event",
    "EventStream",
    "Fire",
    "Forbidden",
    "Invalid",
    "Job",
    "JobFields",
    "NotFound",
    "RateLimited",
    "Schedule",
    "ServerError",
    "TERMINAL_STATES",
    "TooLarge",
    "Triggered",
    "Unauthorized",
    "Unavailable",
    "Workflow",
    "WorkflowEdge",
    "WorkflowNode",
    "WorkflowSubmitted",
    "job_spec",
    "__version__",
]
