"""A remote Personalizer endpoint for the dashboard: where its settings come from, and "Test connection".

Plain Python (no Streamlit), so tests call it directly. The subscription key is
handled as an opaque secret: it is never part of a message, a repr or a log line
produced here (the client scrubs it from server messages as well).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..client import PersonalizerClient, normalize_endpoint
from ..contract import PersonalizerError
from .ranking import error_text

log = logging.getLogger(__name__)

ENV_ENDPOINT = "PERSONALIZER_ENDPOINT"
ENV_KEY = "PERSONALIZER_KEY"
SECRETS_SECTION = "personalizer"

#: Where a remote setting came from.
SOURCE_SECRETS = "secrets"
SOURCE_ENV = "environment"
SOURCE_TAB = "tab"
_KEY_SOURCES = {SOURCE_SECRETS: "from .streamlit/secrets.toml", SOURCE_ENV: f"from {ENV_KEY}",
                SOURCE_TAB: "entered in this tab"}


@dataclass(frozen=True)
class RemoteSettings:
    """Endpoint and key of a remote backend, with where each came from (the key never shows in repr)."""

    endpoint: str | None = None
    key: str | None = field(default=None, repr=False)
    endpoint_source: str | None = None
    key_source: str | None = None

    @property
    def configured(self) -> bool:
        """True when an endpoint is set (the dashboard then starts on the remote backend)."""
        return bool(self.endpoint)


def _text(value: Any) -> str | None:
    """A non-empty stripped string, else None (TOML may hold numbers or nothing)."""
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def remote_settings(secrets: Mapping[str, Any] | None, environ: Mapping[str, str]) -> RemoteSettings:
    """Endpoint and key from ``[personalizer]`` in secrets.toml, else from ``PERSONALIZER_ENDPOINT`` / ``_KEY``.

    Each value is taken from the first place that has it, secrets first: a file the
    operator wrote for this dashboard beats the process environment.
    """
    section = secrets.get(SECRETS_SECTION) if secrets is not None else None
    section = section if isinstance(section, Mapping) else {}
    endpoint, endpoint_source = _text(section.get("endpoint")), SOURCE_SECRETS
    if endpoint is None:
        endpoint, endpoint_source = _text(environ.get(ENV_ENDPOINT)), SOURCE_ENV
    key, key_source = _text(section.get("key")), SOURCE_SECRETS
    if key is None:
        key, key_source = _text(environ.get(ENV_KEY)), SOURCE_ENV
    return RemoteSettings(endpoint, key, endpoint_source if endpoint else None, key_source if key else None)


def key_caption(has_key: bool, source: str | None) -> str:
    """The line under the key field: where the key came from, never the key."""
    if not has_key:
        return "Key: none (for a server without a key)"
    return f"Key: {_KEY_SOURCES.get(source or '', 'set')} · never shown"


def endpoint_problem(endpoint: str | None) -> str | None:
    """Why ``endpoint`` cannot be used (a readable sentence), or None when it is a usable http(s) URL."""
    if not endpoint or not endpoint.strip():
        return "Enter the endpoint URL, e.g. http://127.0.0.1:8000"
    try:
        normalize_endpoint(endpoint)
    except ValueError:
        return "The endpoint must be an http:// or https:// URL, e.g. http://127.0.0.1:8000"
    return None


@dataclass(frozen=True)
class ConnectionCheck:
    """The outcome of "Test connection": one line per step, and the Personalizer error code on failure."""

    ok: bool
    endpoint: str
    lines: tuple[str, ...]
    code: str | None = None


def check_connection(client: PersonalizerClient, endpoint: str, has_key: bool = True) -> ConnectionCheck:
    """Health (needs no key), then an authenticated call (the service configuration).

    A wrong key fails the second step with the server's code (``Unauthorized``);
    an unreachable server fails the first (``ServiceUnreachable``). ``has_key``
    only words the success line (a server without a key accepts calls without one).
    """
    lines: list[str] = []
    try:
        answer = client.health()
    except PersonalizerError as exc:  # the client reports every transport and HTTP failure as one
        log.info("health check of %s failed: %r", endpoint, exc)
        return ConnectionCheck(False, endpoint, (f"Health: {error_text(exc)}",), exc.code)
    status = answer.get("status", "ok") if isinstance(answer, Mapping) else "ok"
    version = answer.get("version") if isinstance(answer, Mapping) else None
    lines.append(f"Health: {status}" + (f" (version {version})" if version else ""))
    try:
        config = client.get_service_configuration()
    except PersonalizerError as exc:
        log.info("authenticated call to %s failed: %r", endpoint, exc)
        return ConnectionCheck(False, endpoint, (*lines, f"Key: {error_text(exc)}"), exc.code)
    mode = config.get("learningMode", "?") if isinstance(config, Mapping) else "?"
    lines.append(f"{'Key accepted' if has_key else 'No key needed'} · learning mode {mode}")
    return ConnectionCheck(True, endpoint, tuple(lines))

