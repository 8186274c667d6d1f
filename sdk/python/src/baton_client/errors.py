"""The exceptions the client raises.

Every answer of the API that is an error becomes a `BatonError` subclass chosen by its
HTTP status, carrying the status and the API's `{"error": {"code", "message"}}`.
A server that cannot be reached is a `BatonConnectionError` naming the URL.
"""

from __future__ import annotations

import ssl
from typing import Any, Dict, Optional, Set, Type

import httpx


class BatonError(Exception):
    """An error answered by Baton, or a failure to talk to it.

    `status` is the HTTP status (None when no answer came), `code` the API's error
    code (`not_found`, `illegal_transition`, `invalid_spec`, ...) and `message` its
    message. A refused batch also names the job's `index` and, when a field is to
    blame, the `field`.
    """

    def __init__(
        self,
        message: str,
        *,
        status: Optional[int] = None,
        code: str = "error",
        index: Optional[int] = None,
        field: Optional[str] = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.index = index
        self.field = field

    def __str__(self) -> str:
        if self.status is None:
            return self.message
        return f"{self.status} {self.code}: {self.message}"


class BadRequest(BatonError):
    """400: a malformed request (an invalid id, filter, limit or body)."""


class Unauthorized(BatonError):
    """401: no token, or a token the server does not know."""


class Forbidden(BatonError):
    """403: the token's role may not do this, or a refused host, origin or command."""


class NotFound(BatonError):
    """404: no such job, workflow, schedule or pipeline."""


class Conflict(BatonError):
    """409: illegal in the job's state, or an id or unique key that is taken."""


class TooLarge(BatonError):
    """413: the request body is over the server's limit."""


class Invalid(BatonError):
    """422: an invalid job spec, workflow or schedule; the message names the field."""


class RateLimited(BatonError):
    """429: too many submits, or too many failed authentications."""


class Unavailable(BatonError):
    """503: the server is overloaded, starting, stopping, or its store is locked."""


class ServerError(BatonError):
    """500 and other 5xx answers: the server's log has the details."""


class BatonConnectionError(BatonError, ConnectionError):
    """The server could not be reached, or the connection broke mid-answer."""

    def __init__(self, message: str, *, url: str, code: str = "connection_error") -> None:
        super().__init__(message, code=code)
        self.url = url


class UntrustedCertificate(BatonConnectionError):
    """An `https://` server whose certificate the client does not trust (an unknown
    authority, a self-signed certificate, another name): pass `ca=` the certificate
    of the authority that signed it. Trying again does not help."""

    def __init__(self, message: str, *, url: str) -> None:
        super().__init__(message, url=url, code="untrusted_certificate")


class BatonTimeout(BatonError, TimeoutError):
    """A request, or a `wait`, took longer than its timeout."""

    def __init__(self, message: str, *, url: str = "") -> None:
        super().__init__(message, code="timeout")
        self.url = url


_BY_STATUS: Dict[int, Type[BatonError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: TooLarge,
    422: Invalid,
    429: RateLimited,
    503: Unavailable,
}


def error_for(response: httpx.Response) -> BatonError:
    """The exception for an error answer (its body must have been read)."""
    status = response.status_code
    cls = _BY_STATUS.get(status, ServerError if status >= 500 else BatonError)
    detail: Any = None
    try:
        detail = response.json().get("error")
    except (ValueError, AttributeError):
        pass
    if not isinstance(detail, dict):
        # Not Baton's error body (a proxy, or a server that is not Baton).
        text = response.text.strip()[:500] or response.reason_phrase
        return cls(text, status=status, code=f"http_{status}")
    index = detail.get("index")
    field = detail.get("field")
    return cls(
        str(detail.get("message", "")),
        status=status,
        code=str(detail.get("code", f"http_{status}")),
        index=index if isinstance(index, int) else None,
        field=field if isinstance(field, str) else None,
    )


# What an untrusted certificate's error says to do.
CA_HINT = "its certificate is not trusted: pass ca= the certificate (PEM) of the authority that signed it"


def transport_error(e: httpx.TransportError, url: str) -> BatonError:
    """The exception for a failure below HTTP: no connection, a refused certificate,
    or a timeout."""
    if isinstance(e, httpx.TimeoutException):
        return BatonTimeout(f"Baton at {url} did not answer in time: {e}", url=url)
    tls = tls_cause(e)
    if isinstance(tls, ssl.SSLCertVerificationError):
        reason = tls.verify_message or tls.reason or str(tls)
        return UntrustedCertificate(f"cannot talk to Baton at {url} securely: {reason}; {CA_HINT}", url=url)
    if tls is not None:
        return BatonConnectionError(f"cannot talk to Baton at {url} securely: {tls}", url=url)
    reason = str(e) or type(e).__name__
    return BatonConnectionError(f"cannot reach Baton at {url}: {reason}", url=url)


def tls_cause(e: BaseException) -> Optional[ssl.SSLError]:
    """The TLS error under `e` (httpx and httpcore wrap it), if any."""
    seen: Set[int] = set()
    cause: Optional[BaseException] = e
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, ssl.SSLError):
            return cause
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return None
