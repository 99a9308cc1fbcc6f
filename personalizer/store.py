"""Durable event log and model checkpoints in SQLite (stdlib, WAL).

The log is the source of truth: every ranked event, every reward the engine
acknowledged, what was learned and in which order. The model is a cache of it:
a checkpoint records how far into the learning order (``learn_seq``) it is, and
on start the engine replays what was learned after the newest checkpoint.

Writes commit before the engine answers, so an acknowledged reward survives a
crash of the process. With ``synchronous=NORMAL`` (the default) a power loss can
still drop the last transactions; set ``PERSONALIZER_SYNC=FULL`` to fsync each
commit as well.

The schema is versioned (``PRAGMA user_version``) and migrated forward in place
when an older database is opened; a database from a newer version, or a file
that is not a readable SQLite database, is refused with a one-line
``PersonalizerError``. A full disk (``SQLITE_FULL``) is ``InsufficientStorage``
(507) and other I/O failures ``ServiceUnavailable`` (503): the failed write is
rolled back, and reads keep working.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .contract import PersonalizerError
from .settings import load_settings

#: The schema as the first release created it (user_version 0); kept verbatim: migrations start from it.
_SCHEMA_V0 = """
CREATE TABLE IF NOT EXISTS events (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id    TEXT NOT NULL UNIQUE,
    created     REAL NOT NULL,
    request_hash TEXT NOT NULL,
    request     TEXT NOT NULL,      -- the validated rank request (JSON)
    response    TEXT NOT NULL,      -- slots: id, rewardActionId, probability (JSON)
    mode        TEXT NOT NULL,      -- learning mode when ranked
    deferred    INTEGER NOT NULL,
    activated   REAL,               -- when activated (deferred events only)
    status      TEXT NOT NULL,      -- pending | learned | logged | discarded
    closed      REAL,               -- when it left pending
    learn_seq   INTEGER,            -- order in which it was learned
    labels      TEXT                -- reward per slot that was learned (JSON list)
);
CREATE INDEX IF NOT EXISTS events_status ON events(status) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS events_learn_seq ON events(learn_seq) WHERE learn_seq IS NOT NULL;
CREATE TABLE IF NOT EXISTS rewards (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id    TEXT NOT NULL,
    slot_id     TEXT NOT NULL,
    value       REAL NOT NULL,
    received    REAL NOT NULL,
    late        INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS rewards_event ON rewards(event_id);
CREATE TABLE IF NOT EXISTS settings (
    key         TEXT PRIMARY KEY,
    value       TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS checkpoints (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    learn_seq   INTEGER NOT NULL,
    created     REAL NOT NULL,
    reason      TEXT NOT NULL,
    arguments   TEXT NOT NULL,
    model       BLOB NOT NULL
);
"""

#: Forward migrations: ``_MIGRATIONS[n - 1]`` takes a database from version ``n - 1`` to ``n``.
_MIGRATIONS: tuple[str, ...] = (
    # 1: evaluations live in the database (one store), one row each, so one bad record
    #    cannot make the others unreadable.
    """
    CREATE TABLE IF NOT EXISTS evaluations (
        id          TEXT PRIMARY KEY,
        created     REAL NOT NULL,
        record      TEXT NOT NULL      -- the evaluation as JSON
    );
    """,
    # 2: every change of the learning policy (manual, from an evaluation, automatic, rollback),
    #    so it can be listed and rolled back after a restart.
    """
    CREATE TABLE IF NOT EXISTS policy_changes (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        created     REAL NOT NULL,
        who         TEXT NOT NULL,     -- auto | person | api
        action      TEXT NOT NULL,     -- update | reset | evaluation | auto | rollback
        evaluation_id TEXT,            -- the evaluation it came from, if any
        before      TEXT NOT NULL,     -- {name, arguments, explorationPercentage} before (JSON)
        after       TEXT NOT NULL,     -- the same, after (JSON)
        details     TEXT               -- estimated lift with its interval, rolled-back change... (JSON)
    );
    """,
    # 3: feature-importance jobs live in the database too, one row each, like evaluations.
    """
    CREATE TABLE IF NOT EXISTS feature_importances (
        id          TEXT PRIMARY KEY,
        created     REAL NOT NULL,
        record      TEXT NOT NULL      -- the job as JSON
    );
    """,
)
#: Background-job records kept beside the log, one table per kind (table names fixed here, never a caller's).
RECORD_TABLES = {"evaluation": "evaluations", "featureImportance": "feature_importances"}
#: The schema version this code writes.
SCHEMA_VERSION = len(_MIGRATIONS)


@dataclass
class StoredEvent:
    """One row of the event log."""

    seq: int
    event_id: str
    created: float
    request_hash: str
    request: dict[str, Any]
    response: dict[str, Any]
    mode: str
    deferred: bool
    activated: float | None
    status: str
    closed: float | None
    learn_seq: int | None
    labels: list[float | None] | None


@dataclass
class Checkpoint:
    """A saved model and how far into the learning order it is."""

    id: int
    learn_seq: int
    created: float
    reason: str
    arguments: str
    model: bytes


@dataclass
class PolicyChange:
    """One recorded change of the learning policy (``before``/``after``: name, arguments, exploration)."""

    id: int
    created: float
    who: str
    action: str
    evaluation_id: str | None
    before: dict[str, Any]
    after: dict[str, Any]
    details: dict[str, Any] | None


@dataclass
class LogRecord:
    """One event as the log export reads it: the row (its request as the logged JSON text: the export
    writes it as it is, without decoding and encoding it again), the model that ranked it and every reward."""

    seq: int
    event_id: str
    created: float
    request_json: str
    response: dict[str, Any]
    mode: str
    deferred: bool
    activated: float | None
    status: str
    closed: float | None
    learn_seq: int | None
    labels: list[float | None] | None
    #: The published model (checkpoint id) that ranked it: PostgreSQL replicas record it; SQLite does not.
    model_id: int | None
    #: (slot_id, value, received, late) of every reward received, on time or late, in arrival order.
    rewards: list[tuple[str, float, float, bool]]


def log_record(row: tuple[Any, ...], model_id: int | None, rewards: list[tuple[str, float, float, bool]]) -> LogRecord:
    """A ``LogRecord`` from a row of ``_EVENT_COLUMNS`` (both stores select them in this order)."""
    return LogRecord(
        seq=row[0], event_id=row[1], created=row[2], request_json=row[4], response=json.loads(row[5]), mode=row[6],
        deferred=bool(row[7]), activated=row[8], status=row[9], closed=row[10], learn_seq=row[11],
        labels=json.loads(row[12]) if row[12] else None, model_id=model_id, rewards=rewards)


#: The export's position in the log: (created, seq) of the last event read; ``(-inf, 0)`` is the start.
LogPosition = tuple[float, int]


def default_home() -> Path:
    """The data directory: ``$PERSONALIZER_HOME`` or ``.personalizer/`` in the working directory."""
    return load_settings().home


class EventLog:
    """SQLite-backed event log; not thread-safe by itself (the engine holds one lock)."""

    def __init__(self, home: str | os.PathLike[str] | None = None) -> None:
        self.home = Path(home) if home is not None else default_home()
        self.home.mkdir(parents=True, exist_ok=True)
        self.path = self.home / "personalizer.sqlite3"
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=1.0)
        except sqlite3.Error as exc:  # e.g. a directory that cannot be written
            raise storage_error(exc, self.path) from None
        try:
            self._open()
        except BaseException:
            self.close()
            raise

    def _open(self) -> None:
        try:
            # One process owns a data directory: a second engine would learn a diverging model
            # from the same log. An exclusive lock on a file beside the database enforces that
            # while SQLite itself keeps NORMAL locking, so readers in other processes (``logs
            # export`` while the server runs) can read the WAL database. Where ``fcntl`` is
            # missing, SQLite's EXCLUSIVE locking mode does it (and then nothing else can read).
            self._owner = _lock_owner(self.home)
            if self._owner is None:
                self._db.execute("PRAGMA locking_mode=EXCLUSIVE")
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={'FULL' if load_settings().full_sync else 'NORMAL'}")
            # Checkpointing the WAL is what fsyncs; doing it every ~40 MB instead of every
            # ~4 MB takes most of the cost off each commit.
            self._db.execute("PRAGMA wal_autocheckpoint=10000")
            self._db.execute("BEGIN IMMEDIATE")  # the write lock for the migration (EXCLUSIVE mode keeps it)
        except _InUse as exc:
            raise PersonalizerError(
                "InternalServerError", f"the data directory {self.home} is in use by another process ({exc})",
                503) from None
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode & 0xFF not in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                raise storage_error(exc, self.path) from None
            raise PersonalizerError(
                "InternalServerError",
                f"the data directory {self.home} is in use by another process ({exc})", 503) from None
        except sqlite3.DatabaseError as exc:
            raise storage_error(exc, self.path) from None
        try:
            self._migrate()
            self._db.execute("COMMIT")
        except BaseException as exc:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise storage_error(exc, self.path) from None
            raise

    def _migrate(self) -> None:
        """Bring the schema to ``SCHEMA_VERSION`` inside the open transaction; refuse a newer one."""
        version = int(self._db.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise PersonalizerError(
                "DatabaseVersionNotSupported",
                f"the database {self.path} has schema version {version}, newer than this version of "
                f"Personalizer Studio supports ({SCHEMA_VERSION}); upgrade Personalizer Studio", 503)
        if version == SCHEMA_VERSION:
            return
        if version == 0:  # a new file, or one written before versioning: the v0 tables, idempotently
            _execute_script(self._db, _SCHEMA_V0)
        for script in _MIGRATIONS[version:]:
            _execute_script(self._db, script)
        self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def schema_version(self) -> int:
        """The schema version of the open database (``PRAGMA user_version``)."""
        return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    def close(self) -> None:
        """Close the database connection and release the data directory."""
        self._db.close()
        owner = getattr(self, "_owner", None)
        if owner is not None:
            owner.close()  # closing the file drops its lock
            self._owner = None

    def _write(self, sql: str, params: Any = ()) -> sqlite3.Cursor:
        """One write statement; a failure (full disk, I/O) becomes a Personalizer error, nothing written."""
        try:
            return self._db.execute(sql, params)
        except sqlite3.Error as exc:
            raise storage_error(exc, self.path) from None

    # ------------------------------------------------------------ events
    def add_event(self, event_id: str, created: float, request_hash: str, request_json: str,
                  response: dict[str, Any], mode: str, deferred: bool) -> int:
        """Log a ranked event as pending; returns its sequence number."""
        cur = self._write(
            "INSERT INTO events (event_id, created, request_hash, request, response, mode, deferred, status)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, 'pending')",
            (event_id, created, request_hash, request_json, json.dumps(response), mode, int(deferred)),
        )
        return int(cur.lastrowid or 0)

    def get_event(self, event_id: str) -> StoredEvent | None:
        """The event with this id, or None."""
        row = self._db.execute(f"SELECT {_EVENT_COLUMNS} FROM events WHERE event_id = ?", (event_id,)).fetchone()
        return _event(row) if row else None

    def event_source(self, event_id: str) -> tuple[str, str, dict[str, Any]] | None:
        """(request JSON text, mode, response) of an event: what rebuilding its VW example needs."""
        row = self._db.execute("SELECT request, mode, response FROM events WHERE event_id = ?",
                               (event_id,)).fetchone()
        return None if row is None else (row[0], row[1], json.loads(row[2]))

    def event_answer(self, event_id: str) -> tuple[str, dict[str, Any]] | None:
        """(request hash, response) of an event: what answering a retried rank needs."""
        row = self._db.execute("SELECT request_hash, response FROM events WHERE event_id = ?",
                               (event_id,)).fetchone()
        return None if row is None else (row[0], json.loads(row[1]))

    def pending_summaries(self) -> Iterator[tuple[str, float, str, bool, float | None, list[str]]]:
        """(event_id, created, mode, deferred, activated, slot ids) of each pending event, in rank order.

        Only what the engine keeps in memory for a pending event: no request, no parsed example.
        """
        cur = self._db.execute(
            "SELECT event_id, created, mode, deferred, activated, response FROM events WHERE status = 'pending'"
            " ORDER BY seq")
        for event_id, created, mode, deferred, activated, response in cur:
            yield event_id, created, mode, bool(deferred), activated, [s["id"] for s in json.loads(response)["slots"]]

    def pending_rewards(self) -> list[tuple[str, str, float]]:
        """(event_id, slot_id, value) of every on-time reward of a pending event, in arrival order."""
        return self._db.execute(
            "SELECT r.event_id, r.slot_id, r.value FROM rewards r JOIN events e ON e.event_id = r.event_id"
            " WHERE e.status = 'pending' AND r.late = 0 ORDER BY r.id").fetchall()

    def set_activated(self, event_id: str, when: float) -> None:
        """Record that a deferred event was activated."""
        self._write("UPDATE events SET activated = ? WHERE event_id = ?", (when, event_id))

    def close_event(self, event_id: str, status: str, when: float, learn_seq: int | None,
                    labels: list[float | None] | None) -> None:
        """Mark an event learned, logged (not learned, e.g. LoggingOnly) or discarded (never activated)."""
        self._write(
            "UPDATE events SET status = ?, closed = ?, learn_seq = ?, labels = ? WHERE event_id = ?",
            (status, when, learn_seq, None if labels is None else json.dumps(labels), event_id),
        )

    def learned_after(self, learn_seq: int) -> Iterator[StoredEvent]:
        """Events learned after ``learn_seq``, in learning order (for replay)."""
        cur = self._db.execute(
            f"SELECT {_EVENT_COLUMNS} FROM events WHERE learn_seq > ? ORDER BY learn_seq", (learn_seq,))
        for row in cur:
            yield _event(row)

    def max_learn_seq(self) -> int:
        """The learning order of the last learned event (0 when none)."""
        return int(self._db.execute("SELECT COALESCE(MAX(learn_seq), 0) FROM events").fetchone()[0])

    def iter_events(self, start: float | None = None, end: float | None = None,
                    statuses: tuple[str, ...] = ("learned", "logged", "pending")) -> Iterator[StoredEvent]:
        """Events ranked in [start, end), in rank order (for evaluation and export)."""
        marks = ",".join("?" for _ in statuses)
        cur = self._db.execute(
            f"SELECT {_EVENT_COLUMNS} FROM events WHERE created >= ? AND created < ? AND status IN ({marks})"
            " ORDER BY seq",
            (start if start is not None else float("-inf"), end if end is not None else float("inf"), *statuses),
        )
        for row in cur:
            yield _event(row)

    def counts(self) -> dict[str, int]:
        """Number of events per status, and of rewards."""
        out = dict(self._db.execute("SELECT status, COUNT(*) FROM events GROUP BY status").fetchall())
        out["rewards"] = int(self._db.execute("SELECT COUNT(*) FROM rewards").fetchone()[0])
        return {k: int(v) for k, v in out.items()}

    def date_range(self) -> tuple[float, float] | None:
        """Time of the first and last logged event."""
        lo, hi = self._db.execute("SELECT MIN(created), MAX(created) FROM events").fetchone()
        return None if lo is None else (float(lo), float(hi))

    def delete_closed(self) -> int:
        """Delete every event that is no longer pending, with its rewards; returns how many."""
        with self.transaction():
            self._db.execute(
                "DELETE FROM rewards WHERE event_id IN (SELECT event_id FROM events WHERE status != 'pending')")
            n = self._db.execute("DELETE FROM events WHERE status != 'pending'").rowcount
        return int(n)

    def delete_expired(self, cutoff: float, learned_upto: int, limit: int = 1000) -> int:
        """Delete up to ``limit`` closed events ranked before ``cutoff``, with their rewards; returns how many.

        Learned events after ``learned_upto`` (the newest checkpoint) are kept: a restart replays them.
        """
        with self.transaction():
            ids = [r[0] for r in self._db.execute(
                "SELECT event_id FROM events WHERE created < ? AND status != 'pending'"
                " AND (learn_seq IS NULL OR learn_seq <= ?) ORDER BY seq LIMIT ?",
                (cutoff, learned_upto, limit)).fetchall()]
            for start in range(0, len(ids), 500):
                chunk = ids[start:start + 500]
                marks = ",".join("?" for _ in chunk)
                self._db.execute(f"DELETE FROM rewards WHERE event_id IN ({marks})", chunk)
                self._db.execute(f"DELETE FROM events WHERE event_id IN ({marks})", chunk)
        return len(ids)

    def export_events(self, start: float | None = None, end: float | None = None,
                      after: LogPosition | None = None, limit: int | None = None,
                      *, settle: bool = False) -> Iterator[LogRecord]:
        """Every event ranked in [start, end) after position ``after``, whatever its status, in log order,
        with its rewards (the log export and listing). ``settle`` matters only to a log shared by several
        writers (PostgreSQL); here one process writes, so the order of ``seq`` is the order of creation."""
        return export_rows(self._db, start, end, after, limit)

    # ------------------------------------------------------------ rewards
    def add_rewards(self, event_id: str, rewards: list[tuple[str, float]], when: float, late: bool = False) -> None:
        """Log rewards for an event (every call is kept, whatever the aggregation)."""
        try:
            self._db.executemany(
                "INSERT INTO rewards (event_id, slot_id, value, received, late) VALUES (?, ?, ?, ?, ?)",
                [(event_id, slot, value, when, int(late)) for slot, value in rewards],
            )
        except sqlite3.Error as exc:
            raise storage_error(exc, self.path) from None

    def rewards_of(self, event_id: str) -> list[tuple[str, float, float]]:
        """(slot_id, value, received) of an event's on-time rewards, in arrival order."""
        return self._db.execute(
            "SELECT slot_id, value, received FROM rewards WHERE event_id = ? AND late = 0 ORDER BY id",
            (event_id,)).fetchall()

    # ------------------------------------------------------------ settings
    def get_setting(self, key: str) -> Any:
        """A stored JSON setting, or None."""
        row = self._db.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def set_setting(self, key: str, value: Any) -> None:
        """Store a JSON setting."""
        self._write("INSERT OR REPLACE INTO settings (key, value) VALUES (?, ?)", (key, json.dumps(value)))

    # ------------------------------------------------------------ checkpoints
    def add_checkpoint(self, learn_seq: int, created: float, reason: str, arguments: str, model: bytes,
                       keep: int = 3) -> None:
        """Save a model checkpoint; keeps the newest ``keep`` and the current model's origin.

        The origin is the newest checkpoint not made periodically (``created``, ``reset``,
        ``import``, ``policy``): it holds the model's ``creationTime``, and when a newer
        checkpoint cannot load, the rebuild starts from it and never replays events learned
        before it. Origins of earlier lineages are pruned: nothing rebuilds into them.
        """
        with self.transaction():
            self._db.execute(
                "INSERT INTO checkpoints (learn_seq, created, reason, arguments, model) VALUES (?, ?, ?, ?, ?)",
                (learn_seq, created, reason, arguments, model))
            self._db.execute(
                "DELETE FROM checkpoints WHERE id NOT IN (SELECT id FROM checkpoints ORDER BY id DESC LIMIT ?)"
                " AND id IS NOT (SELECT MAX(id) FROM checkpoints WHERE reason != 'periodic')",
                (keep,))

    def checkpoints(self) -> list[Checkpoint]:
        """Every kept checkpoint, oldest first (models included)."""
        rows = self._db.execute(
            "SELECT id, learn_seq, created, reason, arguments, model FROM checkpoints ORDER BY id").fetchall()
        return [Checkpoint(*row[:5], bytes(row[5])) for row in rows]

    def latest_checkpoint(self) -> Checkpoint | None:
        """The newest checkpoint, or None."""
        return self._newest_checkpoint("")

    def first_checkpoint_since_reset(self) -> Checkpoint | None:
        """The newest checkpoint made by a reset, import or policy change (the model's creation)."""
        return self._newest_checkpoint("WHERE reason != 'periodic'")

    def _newest_checkpoint(self, where: str) -> Checkpoint | None:
        row = self._db.execute(
            f"SELECT id, learn_seq, created, reason, arguments, model FROM checkpoints {where} ORDER BY id DESC LIMIT 1"
        ).fetchone()
        return Checkpoint(*row[:5], bytes(row[5])) if row else None

    # ------------------------------------------------------------ job records (evaluations, feature importances)
    def put_record(self, kind: str, record_id: str, created: float, record_json: str) -> None:
        """Insert or replace one job record (JSON text) of ``kind`` (a key of ``RECORD_TABLES``)."""
        self._write(f"INSERT OR REPLACE INTO {RECORD_TABLES[kind]} (id, created, record) VALUES (?, ?, ?)",
                    (record_id, created, record_json))

    def delete_record(self, kind: str, record_id: str) -> bool:
        """Delete one job record; True when there was one."""
        return self._write(f"DELETE FROM {RECORD_TABLES[kind]} WHERE id = ?", (record_id,)).rowcount > 0

    def records(self, kind: str) -> list[tuple[str, str]]:
        """(id, record JSON text) of every stored job of ``kind``, oldest first."""
        return self._db.execute(f"SELECT id, record FROM {RECORD_TABLES[kind]} ORDER BY created, id").fetchall()

    # ------------------------------------------------------------ policy changes
    def add_policy_change(self, created: float, who: str, action: str, evaluation_id: str | None,
                          before: dict[str, Any], after: dict[str, Any], details: dict[str, Any] | None) -> int:
        """Record one change of the learning policy; returns its id."""
        cur = self._write(
            "INSERT INTO policy_changes (created, who, action, evaluation_id, before, after, details)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (created, who, action, evaluation_id, json.dumps(before), json.dumps(after),
             None if details is None else json.dumps(details)))
        return int(cur.lastrowid or 0)

    def policy_changes(self, limit: int | None = None) -> list[PolicyChange]:
        """Recorded policy changes, newest first (at most ``limit``)."""
        rows = self._db.execute(f"SELECT {_CHANGE_COLUMNS} FROM policy_changes ORDER BY id DESC LIMIT ?",
                                (-1 if limit is None else limit,)).fetchall()
        return [_change(row) for row in rows]

    def policy_change(self, change_id: int) -> PolicyChange | None:
        """One recorded policy change, or None."""
        row = self._db.execute(f"SELECT {_CHANGE_COLUMNS} FROM policy_changes WHERE id = ?",
                               (change_id,)).fetchone()
        return _change(row) if row else None

    # ------------------------------------------------------------ transactions
    def transaction(self) -> _Transaction:
        """Context manager grouping writes into one commit."""
        return _Transaction(self._db)


class _Transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        self._outer = False

    def __enter__(self) -> None:
        self._outer = not self._db.in_transaction
        if self._outer:
            self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: Any, exc: BaseException | None, _: Any) -> None:
        if not self._outer:
            return
        if exc_type is None:
            try:
                self._db.execute("COMMIT")
                return
            except sqlite3.Error as commit_error:
                _rollback(self._db)
                raise storage_error(commit_error) from None
        _rollback(self._db)
        if isinstance(exc, sqlite3.Error):
            raise storage_error(exc) from None


def _rollback(db: sqlite3.Connection) -> None:
    # SQLite rolls a transaction back by itself on some errors (SQLITE_FULL among them).
    if db.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            db.execute("ROLLBACK")


class _InUse(Exception):
    """The data directory's owner lock is held by another process (or another open log)."""


def _lock_owner(home: Path) -> Any:
    """Hold the data directory's owner lock (``personalizer.lock``, an exclusive ``flock``) on an open file.

    The lock dies with the process (a SIGKILL releases it) or when the file is closed. Returns the
    open file, or None where ``fcntl`` does not exist; raises ``_InUse`` while another holds it.
    """
    try:
        import fcntl
    except ImportError:  # Windows: SQLite's EXCLUSIVE locking mode guards the directory instead
        return None
    owner = open(home / "personalizer.lock", "a+b")  # noqa: SIM115 - held open for the log's lifetime
    try:
        fcntl.flock(owner.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        owner.close()
        raise _InUse(f"{home / 'personalizer.lock'} is locked: {exc.strerror or exc}") from None
    return owner


def open_reader(home: str | os.PathLike[str]) -> sqlite3.Connection:
    """A read-only connection to the event log in ``home`` (none is created), usable while a server owns it.

    Raises a ``PersonalizerError`` (404 when there is no log there, 503 when it cannot be read).
    """
    path = Path(home) / "personalizer.sqlite3"
    if not path.is_file():
        raise PersonalizerError("ResourceNotFound", f"no event log in {home} ({path.name} is missing)", 404)
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False,
                             timeout=5.0)
        version = int(db.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            db.close()
            raise PersonalizerError(
                "DatabaseVersionNotSupported", f"the database {path} has schema version {version}, newer than "
                f"this version of Personalizer Studio supports ({SCHEMA_VERSION})", 503)
        db.execute("SELECT 1 FROM events LIMIT 1").fetchall()
    except sqlite3.Error as exc:
        raise storage_error(exc, path) from None
    return db


def export_rows(db: sqlite3.Connection, start: float | None = None, end: float | None = None,
                after: LogPosition | None = None, limit: int | None = None) -> Generator[LogRecord, None, None]:
    """``EventLog.export_events`` on any connection (the owner's or a read-only reader's), streamed.

    One query: each event's rewards come from a correlated subquery on ``rewards_event``, as JSON text
    with ``quote()``d numbers (SQLite's JSON prints 15 digits; ``quote`` round-trips a float).
    """
    cur = db.execute(
        f"SELECT {', '.join('e.' + c.strip() for c in _EVENT_COLUMNS.split(','))},"
        " (SELECT json_group_array(json_array(slot_id, quote(value), quote(received), late))"
        "  FROM (SELECT slot_id, value, received, late FROM rewards r WHERE r.event_id = e.event_id ORDER BY r.id))"
        " FROM events e WHERE e.created >= ? AND e.created < ? AND e.seq > ? ORDER BY e.seq LIMIT ?",
        (start if start is not None else float("-inf"), end if end is not None else float("inf"),
         after[1] if after is not None else 0, -1 if limit is None else limit))
    try:
        for row in cur:
            rewards = [(slot, float(value), float(received), bool(late))
                       for slot, value, received, late in json.loads(row[13])]
            yield log_record(row, None, rewards)
    except sqlite3.Error as exc:
        raise storage_error(exc) from None
    finally:
        cur.close()


def _execute_script(db: sqlite3.Connection, script: str) -> None:
    """Run each statement of a script inside the caller's transaction (``executescript`` would commit)."""
    for statement in script.split(";"):
        if statement.strip():
            db.execute(statement)


def storage_error(exc: sqlite3.Error, path: os.PathLike[str] | str | None = None) -> PersonalizerError:
    """The Personalizer error for a failed SQLite call: full disk 507, I/O or corruption 503.

    Never a bare 500: the caller can tell "retry when there is space" from a bug, and
    the message names the file rather than dumping SQLite's internals.
    """
    code = getattr(exc, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    where = f" ({path})" if path is not None else ""
    if primary == sqlite3.SQLITE_FULL:
        return PersonalizerError(
            "InsufficientStorage", f"the event log's disk is full{where}; nothing was written, retry when there "
            "is space", 507)
    if primary in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
        return PersonalizerError(
            "DatabaseCorrupt", f"the event log{where} is not a readable Personalizer database ({exc}); restore it "
            "from a backup or move it aside", 503)
    if primary in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
        return PersonalizerError("ServiceUnavailable", f"the event log{where} is busy ({exc}); retry", 503)
    return PersonalizerError("ServiceUnavailable", f"the event log{where} failed ({exc}); nothing was written", 503)


_EVENT_COLUMNS = ("seq, event_id, created, request_hash, request, response, mode, deferred, activated,"
                  " status, closed, learn_seq, labels")


def _event(row: tuple[Any, ...]) -> StoredEvent:
    return StoredEvent(
        seq=row[0], event_id=row[1], created=row[2], request_hash=row[3], request=json.loads(row[4]),
        response=json.loads(row[5]), mode=row[6], deferred=bool(row[7]), activated=row[8], status=row[9],
        closed=row[10], learn_seq=row[11], labels=json.loads(row[12]) if row[12] else None,
    )


_CHANGE_COLUMNS = "id, created, who, action, evaluation_id, before, after, details"


def _change(row: tuple[Any, ...]) -> PolicyChange:
    return PolicyChange(id=row[0], created=row[1], who=row[2], action=row[3], evaluation_id=row[4],
                        before=json.loads(row[5]), after=json.loads(row[6]),
                        details=json.loads(row[7]) if row[7] else None)
