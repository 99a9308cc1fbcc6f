"""Which backend the dashboard talks to, and the one shared instance of it.

Every backend is a :class:`~personalizer.interface.Personalizer` (the pages call
that API); what only the embedded engine offers (its event log, job records) is
decided once in :mod:`.capabilities`. A :class:`BackendChoice` says which
backend; :func:`open_backend` turns it into the shared instance.

- **Embedded**: one ``LocalPersonalizer`` per data directory for the whole server
  process (``st.cache_resource``): every tab and session shares it, and its lock
  serializes their calls. Zero configuration: this is the default.
- **Remote**: a ``PersonalizerClient`` per (endpoint, key), also cached. The
  endpoint and key come from ``[personalizer]`` in ``.streamlit/secrets.toml``,
  else ``PERSONALIZER_ENDPOINT`` / ``PERSONALIZER_KEY``, else the sidebar; a
  configured endpoint makes remote the default. The key lives only in the
  session's :class:`BackendChoice` and the client: never in a widget, a repr or
  a message.

The engine's offline evaluations (:class:`~personalizer.evaluation.Evaluations`; a remote
backend's run on its server), feature-importance jobs, log rows and lift over baseline are
cached per backend here too.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pandas as pd
import streamlit as st

from ..client import PersonalizerClient
from ..contract import PersonalizerError
from ..engine import LocalPersonalizer
from ..evaluation import Evaluations
from ..importance import FeatureImportances
from ..interface import LocalEngine, Personalizer
from ..settings import load_settings
from .capabilities import EvaluationJobs, FeatureImportanceJobs, local_engine
from .lift import LiftReport, from_events, from_history
from .log_trends import LogRows, in_scope
from .remote import ENV_ENDPOINT, ENV_KEY, RemoteSettings, endpoint_problem, remote_settings
from .remote_jobs import ClientEvaluations

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

    Streamlit raises ``StreamlitSecretNotFoundError`` (a FileNotFoundError) when no
    secrets file exists and on a malformed one, and an OSError or UnicodeDecodeError
    from a secrets directory it cannot read; none may stop the dashboard, which then
    simply has no remote settings from there.
    """
    try:
        return {k: st.secrets[k] for k in st.secrets}
    except (OSError, UnicodeDecodeError) as exc:
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


class _Closable(Protocol):
    def close(self) -> None: ...


def _close(resource: _Closable) -> None:
    """Release a cached resource (a backend, an engine's job manager) when the cache drops it.

    Broad on purpose: this runs inside Streamlit's cache eviction, where any error
    (closing twice, after a failed start, a database already gone) must not break
    the rerun that evicted it; it is logged with its traceback instead.
    """
    try:
        resource.close()
    except Exception:
        log.warning("closing %s failed", type(resource).__name__, exc_info=True)


@st.cache_resource(show_spinner="Starting the embedded engine…", on_release=_close)
def embedded_engine(home: str) -> LocalPersonalizer:
    """The one shared engine for a data directory (all tabs and sessions of this server)."""
    return LocalPersonalizer(home)


@st.cache_resource(show_spinner=False, max_entries=16, on_release=_close)
def remote_client(endpoint: str, key: str | None) -> PersonalizerClient:
    """One shared HTTP client (connection pool) per endpoint and key."""
    return PersonalizerClient(endpoint, key, timeout=REMOTE_TIMEOUT, retries=REMOTE_RETRIES)


def remote_endpoint(choice: BackendChoice) -> str:
    """A remote choice's endpoint URL, stripped.

    PersonalizerError ``MissingEndpoint`` / ``InvalidEndpoint`` (400) while it has no
    usable URL; the pages show it like any backend error.
    """
    problem = endpoint_problem(choice.endpoint)
    if problem is not None:
        code = "MissingEndpoint" if not (choice.endpoint or "").strip() else "InvalidEndpoint"
        raise PersonalizerError(code, problem, 400)
    return (choice.endpoint or "").strip()


def open_backend(choice: BackendChoice) -> Personalizer:
    """The shared backend instance for a choice (PersonalizerError 400 for a remote one without a usable URL)."""
    if choice.kind == EMBEDDED:
        return embedded_engine(choice.home or resolve_home())
    if choice.kind == REMOTE:
        return remote_client(remote_endpoint(choice), choice.key or None)
    raise ValueError(f"unknown backend kind {choice.kind!r}; known: {', '.join(KINDS)}")


# ---------------------------------------------------------------- per-engine caches

@st.cache_resource(show_spinner=False, on_release=_close)
def _evaluations(home: str, engine_id: int, _engine: LocalEngine) -> Evaluations:
    return Evaluations(_engine)


def evaluations_for(backend: Personalizer) -> EvaluationJobs:
    """Who runs offline evaluations for a backend: the engine's manager (one per engine instance, results kept
    in its data directory), or the server through the client (an embedded ``serve``, or any replica of a
    scaled-out deployment whose trainer runs them).

    PersonalizerError 501 for a backend that is neither (the Evaluate page says so).
    """
    engine = local_engine(backend)
    if engine is not None:
        return _evaluations(str(engine.home), id(engine), engine)
    if isinstance(backend, PersonalizerClient):
        return ClientEvaluations(backend)
    raise PersonalizerError("EvaluationsUnavailable", "this backend runs no offline evaluations", 501)


@st.cache_data(show_spinner="Estimating lift over baseline…", max_entries=32)
def _log_lift(home: str, engine_id: int, counts: tuple[int, ...], start: float | None, end: float | None,
              catalog: tuple[frozenset[str], tuple[str, ...]] | None, _engine: LocalEngine) -> LiftReport:
    return from_events(_engine.events(start, end), catalog)


def log_lift(backend: Personalizer, start: float | None = None, end: float | None = None,
             catalog: tuple[frozenset[str], tuple[str, ...]] | None = None) -> LiftReport:
    """Lift over baseline from the backend's log in [start, end) (one catalog's events), recomputed when the log
    grew: the engine's events in process, else the log listed through the API (the trends page's rows)."""
    engine = local_engine(backend)
    if engine is not None:
        stats = engine.stats()
        counts = (int(stats.get("learned", 0)), int(stats.get("logged", 0)), int(stats.get("rewards", 0)))
        return _log_lift(str(engine.home), id(engine), counts, start, end, catalog, engine)
    rows = log_rows_for(backend)
    number = None if catalog is None else rows.catalog_number(catalog)

    def compute() -> LiftReport:
        frame = rows.frame() if catalog is None else in_scope(rows.frame(), number)
        if start is not None:
            frame = frame[frame["time"] >= pd.Timestamp(start, unit="s", tz="UTC")]
        if end is not None:
            frame = frame[frame["time"] < pd.Timestamp(end, unit="s", tz="UTC")]
        return from_history(frame)

    return rows.memo(("lift", number, catalog is None, start, end), compute)


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
def _log_rows(backend_id: int, _backend: Personalizer) -> LogRows:
    return LogRows(_backend)


def log_rows_for(engine: Personalizer, progress: Callable[[float], None] | None = None) -> LogRows:
    """The backend's log as trend rows (one reader per backend for the whole server: tabs share it), up to date.

    ``progress(share)`` hears how far a first read of a large log got.
    """
    rows = _log_rows(id(engine), engine)
    rows.refresh(progress)
    return rows


# ---------------------------------------------------------------- feature importances

@st.cache_resource(show_spinner=False, on_release=_close)
def _importances(home: str, engine_id: int, _engine: LocalEngine) -> FeatureImportances:
    return FeatureImportances(_engine)


def importances_for(backend: Personalizer) -> FeatureImportanceJobs:
    """Who runs feature-importance jobs for a backend: the engine's job manager, or the remote client itself.

    Both answer ``create_feature_importance``, ``get_feature_importance``,
    ``list_feature_importances`` and ``delete_feature_importance`` alike.
    """
    engine = local_engine(backend)
    if engine is not None:
        return _importances(str(engine.home), id(engine), engine)
    if isinstance(backend, PersonalizerClient):
        return backend
    raise PersonalizerError("FeatureImportancesUnavailable", "this backend runs no feature-importance reports", 501)
