"""Which backend the dashboard talks to, and the one shared instance of it.

The pages only call the one interface (``rank``, ``reward``, ``activate``) plus,
when a backend has them, ``greedy``, ``stats``, ``get_service_configuration``,
``update_service_configuration``, ``reset_model`` and ``events``. A
:class:`BackendChoice` says which backend; :func:`open_backend` turns it into
the shared instance.

- **Embedded**: one ``LocalPersonalizer`` per data directory for the whole server
  process (``st.cache_resource``): every tab and session shares it, and its lock
  serializes their calls. Zero configuration: this is the default.
- **Remote**: a ``PersonalizerClient`` per (endpoint, key), also cached. The
  endpoint and key come from ``[personalizer]`` in ``.streamlit/secrets.toml``,
  else ``PERSONALIZER_ENDPOINT`` / ``PERSONALIZER_KEY``, else the sidebar; a
  configured endpoint makes remote the default. The key lives only in the
  session's :class:`BackendChoice` and the client: never in a widget, a repr or
  a message.

The engine's offline evaluations (:class:`~personalizer.evaluation.Evaluations`)
and its lift over baseline are cached per engine here too.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import streamlit as st

from ..client import PersonalizerClient
from ..contract import PersonalizerError
from ..engine import LocalPersonalizer
from ..evaluation import Evaluations
from ..importance import FeatureImportances
from ..settings import load_settings
from .lift import LiftReport, from_events
from .log_trends import LogRows
from .ranking import Backend
from .remote import ENV_ENDPOINT, ENV_KEY, RemoteSettings, endpoint_problem, remote_settings

log = logging.getLogger(__name__)

EMBEDDED = "embedded"
REMOTE = "remote"
#: Backend kinds the sidebar offers, with their labels.
KINDS = {EMBEDDED: "Embedded engine", REMOTE: "Remote endpoint"}
#: The dashboard's client waits less and retries less than a batch job would: a person is waiting.
REMOTE_TIMEOUT = 5.0
REMOTE_RETRIES = 1


@dataclass(frozen=True)
class BackendChoice:
    """A backend by kind and settings; hashable, so it can key a cache. The key never shows in repr."""

    kind: str = EMBEDDED
    home: str | None = None                       # embedded: data directory
    endpoint: str | None = None                   # remote: base URL
    key: str | None = field(default=None, repr=False)  # remote: subscription key (never shown)
    key_source: str | None = field(default=None, compare=False, repr=False)  # where the key came from

    @property
    def label(self) -> str:
        """How the sidebar names this backend."""
        return KINDS.get(self.kind, self.kind)

    @property
    def remote(self) -> bool:
        """True for a remote endpoint."""
        return self.kind == REMOTE


def resolve_home(home: str | os.PathLike[str] | None = None) -> str:
    """The embedded engine's data directory: ``home``, else ``$PERSONALIZER_HOME``, else ``./.personalizer``."""
    chosen = home or load_settings().home
    return str(Path(chosen).expanduser().resolve())


def _secrets() -> Mapping[str, Any] | None:
    """``st.secrets`` as a mapping, or None when there is no (readable) secrets.toml.

    Streamlit raises when no secrets file exists (and on a malformed one); neither
    may stop the dashboard, which then simply has no remote settings from there.
    """
    try:
        return {k: st.secrets[k] for k in st.secrets}
    except Exception as exc:  # StreamlitSecretNotFoundError (a FileNotFoundError), TOML errors
        log.debug("no usable secrets.toml: %s", type(exc).__name__)
        return None


def configured_remote() -> RemoteSettings:
    """Remote endpoint and key from secrets.toml or the environment (empty when neither has them)."""
    settings = load_settings()
    environ = {ENV_ENDPOINT: settings.endpoint or "", ENV_KEY: settings.keys()[0] if settings.keys() else ""}
    return remote_settings(_secrets(), environ)


def embedded_choice() -> BackendChoice:
    """The embedded engine in the default data directory."""
    return BackendChoice(kind=EMBEDDED, home=resolve_home())


def remote_choice(settings: RemoteSettings) -> BackendChoice:
    """A remote backend from settings."""
    return BackendChoice(kind=REMOTE, endpoint=settings.endpoint, key=settings.key, key_source=settings.key_source)


def default_choice() -> BackendChoice:
    """Zero configuration: the embedded engine; a configured endpoint (secrets or env): that endpoint."""
    settings = configured_remote()
    return remote_choice(settings) if settings.configured else embedded_choice()


def _close(backend: Any) -> None:
    """Release a cached backend (checkpoint and close the engine) when the cache drops it."""
    try:
        backend.close()
    except Exception:  # closing twice or after a failed start must not break a rerun
        log.debug("closing a backend failed", exc_info=True)


@st.cache_resource(show_spinner="Starting the embedded engine…", on_release=_close)
def embedded_engine(home: str) -> LocalPersonalizer:
    """The one shared engine for a data directory (all tabs and sessions of this server)."""
    return LocalPersonalizer(home)


@st.cache_resource(show_spinner=False, max_entries=16, on_release=_close)
def remote_client(endpoint: str, key: str | None) -> PersonalizerClient:
    """One shared HTTP client (connection pool) per endpoint and key."""
    return PersonalizerClient(endpoint, key, timeout=REMOTE_TIMEOUT, retries=REMOTE_RETRIES)


def open_backend(choice: BackendChoice) -> Backend:
    """The shared backend instance for a choice.

    PersonalizerError ``MissingEndpoint`` / ``InvalidEndpoint`` (400) while a remote
    choice has no usable URL; the pages show it like any backend error.
    """
    if choice.kind == EMBEDDED:
        return embedded_engine(choice.home or resolve_home())
    if choice.kind == REMOTE:
        problem = endpoint_problem(choice.endpoint)
        if problem is not None:
            code = "MissingEndpoint" if not (choice.endpoint or "").strip() else "InvalidEndpoint"
            raise PersonalizerError(code, problem, 400)
        return remote_client((choice.endpoint or "").strip(), choice.key or None)
    raise ValueError(f"unknown backend kind {choice.kind!r}; known: {', '.join(KINDS)}")


def backend_stats(backend: Any) -> dict[str, Any] | None:
    """``stats()`` when the backend offers it (counts, learning mode, exploration), else None."""
    stats = getattr(backend, "stats", None)
    return None if stats is None else stats()


def service_configuration(backend: Any) -> dict[str, Any] | None:
    """The backend's service configuration when it offers one, else None."""
    getter = getattr(backend, "get_service_configuration", None)
    return None if getter is None else getter()


def has_event_log(backend: Any) -> bool:
    """True when the dashboard can list the backend's logged events (``log_events``: embedded or remote)."""
    return callable(getattr(backend, "log_events", None))


def has_local_log(backend: Any) -> bool:
    """True when the backend's log is in this process (the embedded engine): offline evaluations run here."""
    return callable(getattr(backend, "events", None)) and callable(getattr(backend, "log_properties", None))


# ---------------------------------------------------------------- per-engine caches

def _close_evaluations(manager: Evaluations) -> None:
    try:
        manager.close()
    except Exception:
        log.debug("closing the evaluations manager failed", exc_info=True)


@st.cache_resource(show_spinner=False, on_release=_close_evaluations)
def _evaluations(home: str, engine_id: int, _engine: Any) -> Evaluations:
    return Evaluations(_engine)


def evaluations_for(engine: Any) -> Evaluations:
    """The engine's offline-evaluations manager (one per engine instance; results kept in its data directory)."""
    return _evaluations(str(getattr(engine, "home", "")), id(engine), engine)


@st.cache_data(show_spinner="Estimating lift over baseline…", max_entries=32)
def _log_lift(home: str, engine_id: int, counts: tuple[int, ...], start: float | None, end: float | None,
              catalog: tuple[frozenset[str], tuple[str, ...]] | None, _engine: Any) -> LiftReport:
    return from_events(_engine.events(start, end), catalog)


def log_lift(engine: Any, start: float | None = None, end: float | None = None,
             catalog: tuple[frozenset[str], tuple[str, ...]] | None = None) -> LiftReport:
    """Lift over baseline from the engine's log in [start, end) (one catalog's events), recomputed when the log grew."""
    stats = engine.stats()
    counts = (int(stats.get("learned", 0)), int(stats.get("logged", 0)), int(stats.get("rewards", 0)))
    return _log_lift(str(getattr(engine, "home", "")), id(engine), counts, start, end, catalog, engine)


def clear_caches() -> None:
    """Drop every cached backend, evaluations manager and lift (managers first: they use the engines)."""
    _evaluations.clear()
    _importances.clear()
    _log_lift.clear()
    _log_rows.clear()
    remote_client.clear()
    embedded_engine.clear()


# ---------------------------------------------------------------- the log as trend rows

@st.cache_resource(show_spinner="Reading the event log…", max_entries=8)
def _log_rows(home: str, engine_id: int, _engine: Any) -> LogRows:
    return LogRows(_engine)


def log_rows_for(engine: Any, progress: Callable[[float], None] | None = None) -> LogRows:
    """The backend's log as trend rows (one reader per backend for the whole server: tabs share it), up to date.

    ``progress(share)`` hears how far a first read of a large log got.
    """
    rows = _log_rows(str(getattr(engine, "home", "")), id(engine), engine)
    rows.refresh(progress)
    return rows


# ---------------------------------------------------------------- feature importances

def _close_importances(manager: FeatureImportances) -> None:
    try:
        manager.close()
    except Exception:
        log.debug("closing the feature-importance jobs failed", exc_info=True)


@st.cache_resource(show_spinner=False, on_release=_close_importances)
def _importances(home: str, engine_id: int, _engine: Any) -> FeatureImportances:
    return FeatureImportances(_engine)


def importances_for(backend: Any) -> Any:
    """Who runs feature-importance jobs for a backend: the engine's job manager, or the remote client itself.

    Both answer ``create_feature_importance``, ``get_feature_importance``,
    ``list_feature_importances`` and ``delete_feature_importance`` alike.
    """
    if isinstance(backend, LocalPersonalizer):
        return _importances(str(getattr(backend, "home", "")), id(backend), backend)
    return backend
