"""Which backend the dashboard talks to, and the one shared instance of it.

The pages only call the one interface (``rank``, ``reward``, ``activate``) plus,
when a backend has them, ``greedy``, ``stats``, ``get_service_configuration``,
``update_service_configuration`` and ``reset_model``. A :class:`BackendChoice`
says which backend; :func:`open_backend` turns it into the shared instance.

The embedded engine is one ``LocalPersonalizer`` per data directory for the whole
server process (``st.cache_resource``): every tab and session shares it, and
its lock serializes their calls. A remote endpoint (issue 4) is one more
``kind``: a cached client factory and a branch in :func:`open_backend`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import streamlit as st

from ..engine import LocalPersonalizer
from .ranking import Backend

log = logging.getLogger(__name__)

EMBEDDED = "embedded"
#: Backend kinds the sidebar offers, with their labels (issue 4 adds "remote").
KINDS = {EMBEDDED: "Embedded engine"}


@dataclass(frozen=True)
class BackendChoice:
    """A backend by kind and settings; hashable, so it can key a cache."""

    kind: str = EMBEDDED
    home: str | None = None                       # embedded: data directory
    endpoint: str | None = None                   # remote: base URL
    key: str | None = field(default=None, repr=False)  # remote: subscription key (never shown)

    @property
    def label(self) -> str:
        """How the sidebar names this backend."""
        return KINDS.get(self.kind, self.kind)


def resolve_home(home: str | os.PathLike[str] | None = None) -> str:
    """The embedded engine's data directory: ``home``, else ``$PERSONALIZER_HOME``, else ``./.personalizer``."""
    chosen = home or os.environ.get("PERSONALIZER_HOME") or ".personalizer"
    return str(Path(chosen).expanduser().resolve())


def default_choice() -> BackendChoice:
    """Zero configuration: the embedded engine in the default data directory."""
    return BackendChoice(kind=EMBEDDED, home=resolve_home())


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


def open_backend(choice: BackendChoice) -> Backend:
    """The shared backend instance for a choice."""
    if choice.kind == EMBEDDED:
        return embedded_engine(choice.home or resolve_home())
    raise ValueError(f"unknown backend kind {choice.kind!r}; known: {', '.join(KINDS)}")


def backend_stats(backend: Any) -> dict[str, Any] | None:
    """``stats()`` when the backend offers it (counts, learning mode, exploration), else None."""
    stats = getattr(backend, "stats", None)
    return None if stats is None else stats()


def service_configuration(backend: Any) -> dict[str, Any] | None:
    """The backend's service configuration when it offers one, else None."""
    getter = getattr(backend, "get_service_configuration", None)
    return None if getter is None else getter()
