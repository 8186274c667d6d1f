"""The TLS context that `Client`, `AsyncClient` and `Worker` verify a server with."""

from __future__ import annotations

import os
import ssl
from typing import Optional, Union

# A path to a PEM file, as a string or a Path.
CaFile = Union[str, "os.PathLike[str]"]


def tls_context(ca: Optional[CaFile]) -> ssl.SSLContext:
    """Verifies servers against the system's root certificates or, with `ca` (a PEM
    file of one or more certificates), against those only; and their names."""
    if ca is None:
        return ssl.create_default_context()
    path = os.fspath(ca)
    try:
        return ssl.create_default_context(cafile=path)
    except FileNotFoundError:
        raise ValueError(f"invalid ca {path!r}: no such file") from None
    except ssl.SSLError as e:
        # A file without a certificate in it (a key, a typo'd path to another file).
        raise ValueError(f"invalid ca {path!r}: it holds no PEM certificate ({e.reason or e})") from None
    except OSError as e:
        raise ValueError(f"invalid ca {path!r}: {e.strerror or e}") from None
