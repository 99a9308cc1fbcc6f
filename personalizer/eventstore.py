"""What the engine needs from its event log, and which store a location names.

Two implementations: ``store.EventLog`` (SQLite in a data directory: the
zero-configuration default) and ``pgstore.PgEventLog`` (PostgreSQL, for a log
shared by several processes). ``open_store`` picks one from a location: a
``postgresql://`` (or ``postgres://``) URL means PostgreSQL, anything else is a
data directory.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import Any, Protocol, runtime_checkable

from .settings import load_settings
from .store import Checkpoint, EventLog, LogPosition, LogRecord, PolicyChange, StoredEvent

#: URL schemes that name a PostgreSQL store.
POSTGRES_SCHEMES = ("postgresql://", "postgres://")


@runtime_checkable
class EventStore(Protocol):
    """The durable log the engine runs on: events, rewards, settings, checkpoints, job records,
    policy changes and the schema version. Every write commits before it returns, unless it runs
    inside ``transaction()``, which commits all of them at once or none."""

    #: Where the log lives, for messages (a directory, or a URL without its password).
    home: Any
    #: The file or database the log is in, for messages.
    path: Any

    def schema_version(self) -> int: ...
    def close(self) -> None: ...
    def transaction(self) -> AbstractContextManager[None]: ...

    # events
    def add_event(self, event_id: str, created: float, request_hash: str, request_json: str,
                  response: dict[str, Any], mode: str, deferred: bool) -> int: ...
    def get_event(self, event_id: str) -> StoredEvent | None: ...
    def event_source(self, event_id: str) -> tuple[str, str, dict[str, Any]] | None: ...
    def event_answer(self, event_id: str) -> tuple[str, dict[str, Any]] | None: ...
    def pending_summaries(self) -> Iterator[tuple[str, float, str, bool, float | None, list[str]]]: ...
    def pending_rewards(self) -> list[tuple[str, str, float]]: ...
    def set_activated(self, event_id: str, when: float) -> None: ...
    def close_event(self, event_id: str, status: str, when: float, learn_seq: int | None,
                    labels: list[float | None] | None) -> None: ...
    def learned_after(self, learn_seq: int) -> Iterator[StoredEvent]: ...
    def max_learn_seq(self) -> int: ...
    def iter_events(self, start: float | None = None, end: float | None = None,
                    statuses: tuple[str, ...] = ("learned", "logged", "pending")) -> Iterator[StoredEvent]: ...
    def export_events(self, start: float | None = None, end: float | None = None,
                      after: LogPosition | None = None, limit: int | None = None,
                      *, settle: bool = False) -> Iterator[LogRecord]: ...
    def counts(self) -> dict[str, int]: ...
    def date_range(self) -> tuple[float, float] | None: ...
    def delete_closed(self) -> int: ...
    def delete_expired(self, cutoff: float, learned_upto: int, limit: int = 1000) -> int: ...

    # rewards
    def add_rewards(self, event_id: str, rewards: list[tuple[str, float]], when: float,
                    late: bool = False) -> None: ...
    def rewards_of(self, event_id: str) -> list[tuple[str, float, float]]: ...

    # settings
    def get_setting(self, key: str) -> Any: ...
    def set_setting(self, key: str, value: Any) -> None: ...

    # checkpoints
    def add_checkpoint(self, learn_seq: int, created: float, reason: str, arguments: str, model: bytes,
                       keep: int = 3) -> None: ...
    def checkpoints(self) -> list[Checkpoint]: ...
    def latest_checkpoint(self) -> Checkpoint | None: ...
    def first_checkpoint_since_reset(self) -> Checkpoint | None: ...

    # job records (evaluations, feature importances)
    def put_record(self, kind: str, record_id: str, created: float, record_json: str) -> None: ...
    def delete_record(self, kind: str, record_id: str) -> bool: ...
    def records(self, kind: str) -> list[tuple[str, str]]: ...

    # policy changes
    def add_policy_change(self, created: float, who: str, action: str, evaluation_id: str | None,
                          before: dict[str, Any], after: dict[str, Any], details: dict[str, Any] | None) -> int: ...
    def policy_changes(self, limit: int | None = None) -> list[PolicyChange]: ...
    def policy_change(self, change_id: int) -> PolicyChange | None: ...


def is_postgres_url(location: str | os.PathLike[str] | None) -> bool:
    """True when ``location`` is a PostgreSQL connection URL rather than a data directory."""
    return isinstance(location, str) and location.startswith(POSTGRES_SCHEMES)


def default_location() -> str | None:
    """``$PERSONALIZER_STORE`` when set (a directory or a ``postgresql://`` URL), else None (the default
    data directory, ``$PERSONALIZER_HOME`` or ``.personalizer``)."""
    return load_settings().store or None


def open_store(location: str | os.PathLike[str] | EventStore | None = None) -> EventStore:
    """The store ``location`` names: PostgreSQL for a ``postgresql://`` URL, else SQLite in that directory.

    ``None`` falls back to ``$PERSONALIZER_STORE``, then to the default data directory; a store that is
    already open is used as it is (the scaled-out roles open theirs with role-specific options).
    """
    if hasattr(location, "add_event"):
        return location  # type: ignore[return-value]
    if location is None:
        location = default_location()
    if is_postgres_url(location):
        from .pgstore import PgEventLog  # psycopg is imported only by those who use PostgreSQL

        return PgEventLog(str(location))
    return EventLog(location)
