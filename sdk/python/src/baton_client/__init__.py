"""A typed client for Baton's HTTP API: `Client` (sync) and `AsyncClient` (asyncio);
and `Worker`, a remote worker that serves job kinds with Python handlers."""

__version__ = "0.1.0"

from .aio import AsyncClient, AsyncEventStream
from ._protocol import Fatal, MessageTooLarge, Retryable, Stopped, WorkerError
from .client import Client, EventStream
from .context import Context, SyncContext
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
    UntrustedCertificate,
)
from .models import (
    TERMINAL_STATES,
    ErrorInfo,
    Event,
    Fire,
    Job,
    Parent,
    Schedule,
    Triggered,
    WorkerInfo,
    Workflow,
    WorkflowEdge,
    WorkflowNode,
    WorkflowSubmitted,
)
from .spec import Duration, JobFields, job_spec
from .worker import Worker

__all__ = [
    "AsyncClient",
    "AsyncEventStream",
    "BadRequest",
    "BatonConnectionError",
    "BatonError",
    "BatonTimeout",
    "Client",
    "Conflict",
    "Context",
    "Duration",
    "ErrorInfo",
    "Event",
    "EventStream",
    "Fatal",
    "Fire",
    "Forbidden",
    "Invalid",
    "Job",
    "JobFields",
    "MessageTooLarge",
    "NotFound",
    "Parent",
    "RateLimited",
    "Retryable",
    "Schedule",
    "ServerError",
    "Stopped",
    "SyncContext",
    "TERMINAL_STATES",
    "TooLarge",
    "Triggered",
    "Unauthorized",
    "Unavailable",
    "UntrustedCertificate",
    "Worker",
    "WorkerError",
    "WorkerInfo",
    "Workflow",
    "WorkflowEdge",
    "WorkflowNode",
    "WorkflowSubmitted",
    "job_spec",
    "__version__",
]
