"""The HTTP protocol both sides speak: header names, API versions, error codes, ids, timestamps.

The server (``server.py``) and the client (``client.py``) import these rather than
spelling them out, so a header or version named here is the same on both ends of the
wire. The request and response *bodies* are in ``contract.py``.
"""

from __future__ import annotations

import secrets
import string
from datetime import UTC, datetime
from typing import overload

__all__ = [
    "API_VERSION",
    "API_VERSIONS",
    "DELETED_HEADER",
    "ERROR_CODE_HEADER",
    "KEY_HEADER",
    "STATUS_CODES",
    "STATUS_HEADER",
    "VERSIONED_PREFIXES",
    "code_of_status",
    "iso_utc",
    "new_event_id",
]

#: Header carrying the subscription key (the retired service's Azure API Management header).
KEY_HEADER = "Ocp-Apim-Subscription-Key"
#: ``api-version`` values the unversioned ``/personalizer/...`` paths accept (from the published contract).
API_VERSIONS = ("2022-09-01-preview",)
#: The version the client speaks.
API_VERSION = API_VERSIONS[0]
#: Versioned base paths; ``v1.0`` predates multi-slot and serves single-slot and admin routes only.
VERSIONED_PREFIXES = ("v1.1-preview.1", "v1.1-preview.2", "v1.1-preview.3", "v1.0")
#: Header naming the error code of an error answer, as the service sent it.
ERROR_CODE_HEADER = "x-ms-error-code"
#: Response header carrying the engine's receipt for 204 answers (reward/activate status).
STATUS_HEADER = "x-personalizer-status"
#: Response header with the number of events a log deletion removed.
DELETED_HEADER = "x-personalizer-deleted"
#: Personalizer's error code for an HTTP status, where an answer carries no error body of its own.
STATUS_CODES = {400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "ResourceNotFound",
                405: "OperationNotAllowed", 408: "RequestTimeout", 409: "Conflict", 413: "PayloadSizeExceeded",
                415: "UnsupportedMediaType", 429: "TooManyRequests", 431: "RequestHeaderFieldsTooLarge",
                500: "InternalServerError", 501: "OperationNotAllowed", 502: "BadGateway",
                503: "ServiceUnavailable", 504: "GatewayTimeout"}

_ALPHANUMERIC = string.ascii_letters + string.digits


def code_of_status(status: int) -> str:
    """The error code for ``status`` (``Http<status>`` for one the service never named)."""
    return STATUS_CODES.get(status, f"Http{status}")


def new_event_id() -> str:
    """An event id shaped like Personalizer's: 32 hex digits, '-', 5 alphanumerics."""
    raw = secrets.token_bytes(21)
    tail = "".join(_ALPHANUMERIC[b % 62] for b in raw[16:])
    return f"{raw[:16].hex()}-{tail}"


@overload
def iso_utc(ts: float, timespec: str = ...) -> str: ...
@overload
def iso_utc(ts: None, timespec: str = ...) -> None: ...
def iso_utc(ts: float | None, timespec: str = "auto") -> str | None:
    """A Unix time as ISO-8601 UTC with a ``Z`` (None stays None).

    ``timespec`` as ``datetime.isoformat``: each wire shape keeps the precision it has always sent.
    """
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec=timespec).replace("+00:00", "Z")
