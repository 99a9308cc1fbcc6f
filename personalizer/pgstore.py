"""The event log on PostgreSQL (psycopg 3 with its connection pool): the same semantics as
``store.EventLog``, for a log shared by several processes.

Tables mirror the SQLite schema (events, rewards, settings, checkpoints, evaluations,
feature_importances, policy_changes); the schema is versioned in ``schema_version`` and
created or migrated forward by the project under an advisory lock, so two processes
starting at once do not race. A database from a newer version is refused.

One process runs the embedded engine (role ``all``) on a database at a time, as one
process owns a SQLite data directory: it holds a session advisory lock (``OWNER_LOCK``)
on a dedicated connection for its lifetime, so a second engine is refused rather than
learning a diverging model from the same log. The lock dies with the session: a killed
process releases it.

Scaled out (``scaled``), replicas queue the changes the trainer applies in ``commands`` (claimed with
``FOR UPDATE SKIP LOCKED`` and finished in the claiming transaction), and the leading trainer writes
``trainer_heartbeat`` (one row) for every replica's ``/health``; ``NOTIFY`` channels wake the other side.

Request JSON is kept as the exact text the engine logged (``text``, not ``jsonb``):
rebuilding an example must see the same features in the same order.

Why one module of this size: it is the PostgreSQL twin of ``store.py`` (every query of the
``EventStore`` Protocol) plus the scale-out tables; each method is one short SQL statement,
and keeping the schema, its migrations and the queries that depend on them in one file is
what lets a schema change be checked in one place.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import threading
from collections.abc import Generator, Iterator
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg_pool import ConnectionPool

from .contract import PersonalizerError
from .store import (
    RECORD_TABLES,
    Checkpoint,
    LogPosition,
    LogRecord,
    PolicyChange,
    StoredEvent,
    _change,
    _event,
    log_record,
)

#: Advisory-lock key held by the process that runs the engine on this database (the ASCII of "PSOWNER").
OWNER_LOCK = 0x50534F574E4552

#: Forward migrations: ``_MIGRATIONS[n - 1]`` takes the database from version ``n - 1`` to ``n``.
_MIGRATIONS: tuple[str, ...] = (
    # 1: everything SQLite's schema version 3 holds.
    """
    CREATE TABLE events (
        seq          BIGSERIAL PRIMARY KEY,
        event_id     TEXT NOT NULL UNIQUE,
        created      DOUBLE PRECISION NOT NULL,
        request_hash TEXT NOT NULL,
        request      TEXT NOT NULL,
        response     TEXT NOT NULL,
        mode         TEXT NOT NULL,
        deferred     BOOLEAN NOT NULL,
        activated    DOUBLE PRECISION,
        status       TEXT NOT NULL,
        closed       DOUBLE PRECISION,
        learn_seq    BIGINT UNIQUE,
        labels       TEXT
    );
    CREATE INDEX events_pending ON events(seq) WHERE status = 'pending';
    CREATE INDEX events_created ON events(created);
    CREATE TABLE rewards (
        id          BIGSERIAL PRIMARY KEY,
        event_id    TEXT NOT NULL,
        slot_id     TEXT NOT NULL,
        value       DOUBLE PRECISION NOT NULL,
        received    DOUBLE PRECISION NOT NULL,
        late        BOOLEAN NOT NULL DEFAULT FALSE
    );
    CREATE INDEX rewards_event ON rewards(event_id);
    CREATE TABLE settings (
        key         TEXT PRIMARY KEY,
        value       TEXT NOT NULL
    );
    CREATE TABLE checkpoints (
        id          BIGSERIAL PRIMARY KEY,
        learn_seq   BIGINT NOT NULL,
        created     DOUBLE PRECISION NOT NULL,
        reason      TEXT NOT NULL,
        arguments   TEXT NOT NULL,
        model       BYTEA NOT NULL
    );
    CREATE TABLE evaluations (
        id          TEXT PRIMARY KEY,
        created     DOUBLE PRECISION NOT NULL,
        record      TEXT NOT NULL
    );
    CREATE TABLE feature_importances (
        id          TEXT PRIMARY KEY,
        created     DOUBLE PRECISION NOT NULL,
        record      TEXT NOT NULL
    );
    CREATE TABLE policy_changes (
        id          BIGSERIAL PRIMARY KEY,
        created     DOUBLE PRECISION NOT NULL,
        who         TEXT NOT NULL,
        action      TEXT NOT NULL,
        evaluation_id TEXT,
        before      TEXT NOT NULL,
        after       TEXT NOT NULL,
        details     TEXT
    );
    """,
    # 2: the id of the published model (checkpoint) that ranked each event (scaled-out replicas).
    """
    ALTER TABLE events ADD COLUMN model_id BIGINT;
    """,
    # 3: changes a replica accepted for the trainer to apply (policy, model, log deletion), in order, and the
    #    leading trainer's heartbeat (one row) that every replica's /health reports.
    """
    CREATE TABLE commands (
        id          BIGSERIAL PRIMARY KEY,
        kind        TEXT NOT NULL,
        payload     TEXT NOT NULL,
        data        BYTEA,
        created     DOUBLE PRECISION NOT NULL,
        state       TEXT NOT NULL DEFAULT 'queued'
                    CHECK (state IN ('queued', 'done', 'failed', 'cancelled')),
        finished    DOUBLE PRECISION,
        result      TEXT,
        error       TEXT
    );
    CREATE INDEX commands_queued ON commands(id) WHERE state = 'queued';
    CREATE TABLE trainer_heartbeat (
        id          INTEGER PRIMARY KEY CHECK (id = 1),
        leader      TEXT NOT NULL,
        beat        DOUBLE PRECISION NOT NULL,
        backlog     BIGINT NOT NULL,
        learned     BIGINT NOT NULL
    );
    """,
)
#: The schema version this code writes.
SCHEMA_VERSION = len(_MIGRATIONS)
#: Advisory-lock key taken (for one transaction) while the schema is created or migrated.
_MIGRATION_LOCK = 0x50534D4947
#: Advisory-lock key taken (for one transaction) to assign learning orders: gapless, in commit order.
_LEARN_ORDER_LOCK = 0x50534C4F
#: The channel a trainer notifies when it publishes a model (payload: the checkpoint id); a replica that
#: changed the service configuration notifies it too (payload ``settings``).
MODELS_CHANNEL = "personalizer_models"
#: The channel a replica notifies when it queues a command or a job (payload: ``command`` or ``job``).
WORK_CHANNEL = "personalizer_work"
#: The channel the trainer notifies when a command is done or failed (payload: the command id).
COMMANDS_DONE_CHANNEL = "personalizer_commands_done"
#: States a command ends in.
FINAL_COMMAND_STATES = ("done", "failed", "cancelled")

_EVENT_COLUMNS = ("seq, event_id, created, request_hash, request, response, mode, deferred, activated,"
                  " status, closed, learn_seq, labels")
_CHANGE_COLUMNS = "id, created, who, action, evaluation_id, before, after, details"
#: Seconds a listing by a process that does not own the log stays behind the database clock: events are
#: inserted by other processes, each with a creation time read just before its insert commits, so the
#: newest second or two may still gain rows that sort before the last one listed.
SETTLE_SECONDS = 2.0
#: Names of server-side cursors (unique per process: two may be open on one pinned connection).
_CURSOR_NAMES = (f"personalizer_stream_{n}" for n in itertools.count())


def redact(url: str) -> str:
    """The URL without its password, for messages and logs."""
    return re.sub(r"(://[^:/@]*):[^@/]*@", r"\1:***@", url)


class PgEventLog:
    """PostgreSQL-backed event log. Thread-safe: each call borrows a pooled connection, and
    ``transaction()`` pins one to the calling thread until it commits."""

    def __init__(self, url: str, *, own: bool = True, pool_size: int = 4) -> None:
        self.url = url
        self.home = redact(url)
        self.path = self.home
        self._local = threading.local()
        self._lease: psycopg.Connection[Any] | None = None
        #: The published model (checkpoint id) that ranks now; logged with each event (replicas set it).
        self.current_model_id: int | None = None
        try:
            if own:
                # Named so an operator (and the chaos test) can see which process leads: pg_stat_activity.
                self._lease = psycopg.connect(url, autocommit=True,
                                              application_name=f"personalizer-owner-{os.getpid()}")
                got = self._lease.execute("SELECT pg_try_advisory_lock(%s)", (OWNER_LOCK,)).fetchone()
                if not (got and got[0]):
                    raise PersonalizerError(
                        "InternalServerError",
                        f"the database {self.home} is in use by another Personalizer engine", 503)
            self._pool = ConnectionPool(url, min_size=1, max_size=pool_size, kwargs={"autocommit": True},
                                        open=False, name="personalizer")
            self._pool.open(wait=True, timeout=10)
            self._migrate()
        except BaseException as exc:
            self._close_quietly()
            if isinstance(exc, psycopg.Error):
                raise pg_error(exc, self.home) from None
            if exc.__class__.__name__ == "PoolTimeout":
                raise PersonalizerError("ServiceUnavailable",
                                        f"cannot connect to the event log {self.home} ({exc})", 503) from None
            raise

    def _close_quietly(self) -> None:
        with contextlib.suppress(Exception):
            if getattr(self, "_pool", None) is not None:
                self._pool.close()
        with contextlib.suppress(Exception):
            if self._lease is not None:
                # Released now, not when the server notices the closed session (asynchronous): an engine
                # opened right after this close (a restart, a standby) gets the lock at once.
                with contextlib.suppress(Exception):
                    self._lease.execute("SELECT pg_advisory_unlock_all()")
                self._lease.close()

    def _migrate(self) -> None:
        """Bring the schema to ``SCHEMA_VERSION`` in one transaction; refuse a newer one."""
        with self._pool.connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = conn.execute("SELECT version FROM schema_version").fetchone()
            version = int(row[0]) if row else 0
            if version > SCHEMA_VERSION:
                raise PersonalizerError(
                    "DatabaseVersionNotSupported",
                    f"the database {self.home} has schema version {version}, newer than this version of "
                    f"Personalizer Studio supports ({SCHEMA_VERSION}); upgrade Personalizer Studio", 503)
            for script in _MIGRATIONS[version:]:
                for statement in script.split(";"):
                    if statement.strip():
                        conn.execute(statement)
            if row is None:
                conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (SCHEMA_VERSION,))
            elif version != SCHEMA_VERSION:
                conn.execute("UPDATE schema_version SET version = %s", (SCHEMA_VERSION,))

    def schema_version(self) -> int:
        """The schema version of the database."""
        row = self._fetchone("SELECT version FROM schema_version")
        return int(row[0]) if row else 0

    def close(self) -> None:
        """Close the pool and release the database (the owner lock goes with its session)."""
        self._close_quietly()

    # ------------------------------------------------------------ connections
    @contextlib.contextmanager
    def _conn(self) -> Iterator[psycopg.Connection[Any]]:
        """The thread's pinned transaction connection, or a pooled one (autocommit) for one call."""
        pinned = getattr(self._local, "conn", None)
        if pinned is not None:
            yield pinned
            return
        try:
            with self._pool.connection(timeout=10) as conn:
                yield conn
        except psycopg.Error as exc:
            raise pg_error(exc, self.home) from None

    def _execute(self, sql: str, params: Any = ()) -> int:
        """One write statement; returns the rows it touched. A failure is a Personalizer error."""
        with self._conn() as conn:
            try:
                return conn.execute(sql, params).rowcount
            except psycopg.Error as exc:
                raise pg_error(exc, self.home) from None

    def _fetchone(self, sql: str, params: Any = ()) -> tuple[Any, ...] | None:
        with self._conn() as conn:
            try:
                return conn.execute(sql, params).fetchone()
            except psycopg.Error as exc:
                raise pg_error(exc, self.home) from None

    def _fetchall(self, sql: str, params: Any = ()) -> list[tuple[Any, ...]]:
        with self._conn() as conn:
            try:
                return conn.execute(sql, params).fetchall()
            except psycopg.Error as exc:
                raise pg_error(exc, self.home) from None

    def _stream(self, sql: str, params: Any = ()) -> Iterator[tuple[Any, ...]]:
        """Rows of a query in batches through a server-side cursor (a large log is never all in memory)."""
        with self._conn() as conn:
            try:
                with conn.transaction(), conn.cursor(name=next(_CURSOR_NAMES)) as cur:
                    cur.itersize = 2000
                    cur.execute(sql, params)
                    yield from cur
            except psycopg.Error as exc:
                raise pg_error(exc, self.home) from None

    @contextlib.contextmanager
    def pipeline(self) -> Iterator[None]:
        """Inside ``transaction()``: send its statements without waiting for each answer (psycopg's pipeline
        mode; a failure surfaces by the end of the block and rolls the transaction back)."""
        pinned = getattr(self._local, "conn", None)
        if pinned is None:
            yield
            return
        with pinned.pipeline():
            yield

    def transaction(self) -> _PgTransaction:
        """Context manager grouping this thread's writes into one commit."""
        return _PgTransaction(self)

    @contextlib.contextmanager
    def savepoint(self) -> Iterator[None]:
        """Inside ``transaction()``: a block whose writes roll back alone when it raises (a SAVEPOINT),
        so the enclosing transaction can still record why and commit."""
        pinned = getattr(self._local, "conn", None)
        if pinned is None:
            raise RuntimeError("savepoint() needs an open transaction() on this thread")
        try:
            with pinned.transaction():
                yield
        except psycopg.Error as exc:
            raise pg_error(exc, self.home) from None

    # ------------------------------------------------------------ events
    def add_event(self, event_id: str, created: float, request_hash: str, request_json: str,
                  response: dict[str, Any], mode: str, deferred: bool) -> int:
        """Log a ranked event as pending; returns its sequence number."""
        with self._conn() as conn:
            try:
                row = conn.execute(
                    "INSERT INTO events (event_id, created, request_hash, request, response, mode, deferred, status,"
                    " model_id) VALUES (%s, %s, %s, %s, %s, %s, %s, 'pending', %s) RETURNING seq",
                    (event_id, created, request_hash, request_json, json.dumps(response), mode, deferred,
                     self.current_model_id),
                ).fetchone()
            except psycopg.Error as exc:
                raise pg_error(exc, self.home) from None
        return int(row[0]) if row else 0

    def get_event(self, event_id: str) -> StoredEvent | None:
        """The event with this id, or None."""
        row = self._fetchone(f"SELECT {_EVENT_COLUMNS} FROM events WHERE event_id = %s", (event_id,))
        return _event(row) if row else None

    def event_source(self, event_id: str) -> tuple[str, str, dict[str, Any]] | None:
        """(request JSON text, mode, response) of an event: what rebuilding its VW example needs."""
        row = self._fetchone("SELECT request, mode, response FROM events WHERE event_id = %s", (event_id,))
        return None if row is None else (row[0], row[1], json.loads(row[2]))

    def event_answer(self, event_id: str) -> tuple[str, dict[str, Any]] | None:
        """(request hash, response) of an event: what answering a retried rank needs."""
        row = self._fetchone("SELECT request_hash, response FROM events WHERE event_id = %s", (event_id,))
        return None if row is None else (row[0], json.loads(row[1]))

    def pending_summaries(self) -> Iterator[tuple[str, float, str, bool, float | None, list[str]]]:
        """(event_id, created, mode, deferred, activated, slot ids) of each pending event, in rank order."""
        for event_id, created, mode, deferred, activated, response in self._stream(
                "SELECT event_id, created, mode, deferred, activated, response FROM events"
                " WHERE status = 'pending' ORDER BY seq"):
            yield event_id, created, mode, bool(deferred), activated, [s["id"] for s in json.loads(response)["slots"]]

    def pending_rewards(self) -> list[tuple[str, str, float]]:
        """(event_id, slot_id, value) of every on-time reward of a pending event, in arrival order."""
        return [tuple(r) for r in self._fetchall(  # type: ignore[misc]
            "SELECT r.event_id, r.slot_id, r.value FROM rewards r JOIN events e ON e.event_id = r.event_id"
            " WHERE e.status = 'pending' AND NOT r.late ORDER BY r.id")]

    def set_activated(self, event_id: str, when: float) -> None:
        """Record that a deferred event was activated."""
        self._execute("UPDATE events SET activated = %s WHERE event_id = %s", (when, event_id))

    def close_event(self, event_id: str, status: str, when: float, learn_seq: int | None,
                    labels: list[float | None] | None) -> None:
        """Mark an event learned, logged (not learned, e.g. LoggingOnly) or discarded (never activated)."""
        self._execute(
            "UPDATE events SET status = %s, closed = %s, learn_seq = %s, labels = %s WHERE event_id = %s",
            (status, when, learn_seq, None if labels is None else json.dumps(labels), event_id))

    def learned_after(self, learn_seq: int) -> Iterator[StoredEvent]:
        """Events learned after ``learn_seq``, in learning order (for replay)."""
        for row in self._stream(f"SELECT {_EVENT_COLUMNS} FROM events WHERE learn_seq > %s ORDER BY learn_seq",
                                (learn_seq,)):
            yield _event(row)

    def max_learn_seq(self) -> int:
        """The learning order of the last learned event (0 when none)."""
        row = self._fetchone("SELECT COALESCE(MAX(learn_seq), 0) FROM events")
        return int(row[0]) if row else 0

    def iter_events(self, start: float | None = None, end: float | None = None,
                    statuses: tuple[str, ...] = ("learned", "logged", "pending")) -> Iterator[StoredEvent]:
        """Events ranked in [start, end), in rank order (for evaluation and export)."""
        for row in self._stream(
                f"SELECT {_EVENT_COLUMNS} FROM events WHERE created >= %s AND created < %s"
                " AND status = ANY(%s) ORDER BY seq",
                (start if start is not None else float("-inf"), end if end is not None else float("inf"),
                 list(statuses))):
            yield _event(row)

    def export_events(self, start: float | None = None, end: float | None = None,
                      after: LogPosition | None = None, limit: int | None = None,
                      *, settle: bool = False) -> Iterator[LogRecord]:
        """Every event ranked in [start, end) after position ``after``, whatever its status, ordered by
        (created, seq), with the model that ranked it and its rewards (the log export and listing).

        ``settle``: when this process does not own the log (a replica), leave out the newest
        ``SETTLE_SECONDS`` by the database clock, so a paged listing never moves past an event that
        another replica is still committing.
        """
        if settle and self._lease is None:
            horizon = self.db_now() - SETTLE_SECONDS
            end = horizon if end is None else min(end, horizon)
        sql, params = export_query(start, end, after, limit)
        for row in self._stream(sql, params):
            yield _record(row)

    def counts(self) -> dict[str, int]:
        """Number of events per status, and of rewards."""
        out = {str(k): int(v) for k, v in self._fetchall("SELECT status, COUNT(*) FROM events GROUP BY status")}
        row = self._fetchone("SELECT COUNT(*) FROM rewards")
        out["rewards"] = int(row[0]) if row else 0
        return out

    def date_range(self) -> tuple[float, float] | None:
        """Time of the first and last logged event."""
        row = self._fetchone("SELECT MIN(created), MAX(created) FROM events")
        return None if row is None or row[0] is None else (float(row[0]), float(row[1]))

    def delete_closed(self) -> int:
        """Delete every event that is no longer pending, with its rewards; returns how many."""
        with self.transaction():
            self._execute(
                "DELETE FROM rewards WHERE event_id IN (SELECT event_id FROM events WHERE status <> 'pending')")
            return self._execute("DELETE FROM events WHERE status <> 'pending'")

    def delete_expired(self, cutoff: float, learned_upto: int, limit: int = 1000) -> int:
        """Delete up to ``limit`` closed events ranked before ``cutoff``, with their rewards; returns how many.

        Learned events after ``learned_upto`` (the newest checkpoint) are kept: a restart replays them.
        """
        with self.transaction():
            rows = self._fetchall(
                "DELETE FROM events WHERE seq IN (SELECT seq FROM events WHERE created < %s AND status <> 'pending'"
                " AND (learn_seq IS NULL OR learn_seq <= %s) ORDER BY seq LIMIT %s) RETURNING event_id",
                (cutoff, learned_upto, limit))
            if rows:
                self._execute("DELETE FROM rewards WHERE event_id = ANY(%s)", ([r[0] for r in rows],))
        return len(rows)

    # ------------------------------------------------------------ scale-out (replicas and the trainer)
    def db_now(self) -> float:
        """The database's clock (epoch seconds): every process of a deployment measures reward waits by it."""
        row = self._fetchone("SELECT extract(epoch FROM clock_timestamp())::float8")
        assert row is not None
        return float(row[0])

    def lock_event(self, event_id: str) -> StoredEvent | None:
        """The event, its row locked until the caller's ``transaction()`` ends (or None)."""
        row = self._fetchone(f"SELECT {_EVENT_COLUMNS} FROM events WHERE event_id = %s FOR UPDATE", (event_id,))
        return _event(row) if row else None

    def claim_due(self, wait_seconds: float, now: float, limit: int = 500) -> list[StoredEvent]:
        """Pending events whose reward wait ended by ``now``, locked for the caller's transaction; rows another
        process holds (a replica answering a reward) are skipped, not waited for."""
        rows = self._fetchall(
            f"SELECT {_EVENT_COLUMNS} FROM events WHERE status = 'pending'"
            " AND COALESCE(activated, created) + %s <= %s ORDER BY seq LIMIT %s FOR UPDATE SKIP LOCKED",
            (wait_seconds, now, limit))
        return [_event(row) for row in rows]

    def next_learn_seqs(self, n: int) -> int:
        """The first of ``n`` learning orders for this transaction (call inside ``transaction()``).

        An advisory lock held to commit serializes assignment, so orders are gapless and commit in order:
        a follower reading ``learned_after`` never skips one that commits later.
        """
        with self._conn() as conn:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LEARN_ORDER_LOCK,))
            # After a log deletion the learned events are gone but the checkpoint remembers how far the
            # order went: continue after it, or the trainer would never replay the new ones.
            row = conn.execute("SELECT GREATEST((SELECT COALESCE(MAX(learn_seq), 0) FROM events),"
                               " (SELECT COALESCE(MAX(learn_seq), 0) FROM checkpoints))").fetchone()
        return int(row[0]) + 1 if row else 1

    def holds_lease(self) -> bool:
        """True while this process's owner lock (the trainer's leadership) is held by its live session."""
        if self._lease is None or self._lease.closed:
            return False
        try:
            pid = self._lease.info.backend_pid
            row = self._fetchone(
                "SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted AND pid = %s"
                " AND classid = %s AND objid = %s AND objsubid = 1",
                (pid, (OWNER_LOCK >> 32) & 0xFFFFFFFF, OWNER_LOCK & 0xFFFFFFFF))
        except PersonalizerError:
            return False
        return row is not None

    def notify_model(self, checkpoint_id: int) -> None:
        """Tell listening replicas a model was published (delivered when the caller's transaction commits)."""
        self._execute("SELECT pg_notify(%s, %s)", (MODELS_CHANNEL, str(checkpoint_id)))

    def newest_checkpoint_id(self) -> int | None:
        """The id of the newest checkpoint (the published model), or None."""
        row = self._fetchone("SELECT MAX(id) FROM checkpoints")
        return None if row is None or row[0] is None else int(row[0])

    def checkpoint_by_id(self, checkpoint_id: int) -> Checkpoint | None:
        """One checkpoint with its model, or None (pruned)."""
        row = self._fetchone("SELECT id, learn_seq, created, reason, arguments, model FROM checkpoints WHERE id = %s",
                             (checkpoint_id,))
        return Checkpoint(*row[:5], bytes(row[5])) if row else None

    def lock_learn_order(self) -> None:
        """Hold the learning-order lock until the caller's ``transaction()`` ends: no event is learned
        meanwhile (the trainer applies a command that replaces the model or deletes the log under it)."""
        self._execute("SELECT pg_advisory_xact_lock(%s)", (_LEARN_ORDER_LOCK,))

    def leader_present(self) -> bool:
        """True while some process holds the owner lock (a trainer leads, or an embedded engine runs)."""
        row = self._fetchone(
            "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted"
            " AND classid = %s AND objid = %s AND objsubid = 1)",
            ((OWNER_LOCK >> 32) & 0xFFFFFFFF, OWNER_LOCK & 0xFFFFFFFF))
        return bool(row and row[0])

    def notify(self, channel: str, payload: str) -> None:
        """``pg_notify`` (delivered when the caller's transaction commits)."""
        self._execute("SELECT pg_notify(%s, %s)", (channel, payload))

    # ------------------------------------------------------------ commands (replicas -> trainer)
    def add_command(self, kind: str, payload: dict[str, Any], data: bytes | None, created: float) -> int:
        """Queue a command for the trainer and wake it; returns its id."""
        with self.transaction():
            row = self._fetchone("INSERT INTO commands (kind, payload, data, created) VALUES (%s, %s, %s, %s)"
                                 " RETURNING id", (kind, json.dumps(payload), data, created))
            self.notify(WORK_CHANNEL, "command")
        assert row is not None
        return int(row[0])

    def command_outcome(self, command_id: int) -> tuple[str, Any, Any]:
        """(state, result, error) of a command; result and error are decoded JSON (or None)."""
        row = self._fetchone("SELECT state, result, error FROM commands WHERE id = %s", (command_id,))
        if row is None:
            return "cancelled", None, None
        return row[0], None if row[1] is None else json.loads(row[1]), None if row[2] is None else json.loads(row[2])

    def cancel_command(self, command_id: int, lock_wait_seconds: float) -> bool:
        """Cancel a command still queued; True if it was. A command the trainer is applying holds its row
        lock, so this waits (at most ``lock_wait_seconds``, then 503) for the outcome and returns False."""
        with self.transaction():
            self._execute("SELECT set_config('lock_timeout', %s, true)", (f"{int(lock_wait_seconds * 1000)}ms",))
            return self._execute("UPDATE commands SET state = 'cancelled', finished = %s"
                                 " WHERE id = %s AND state = 'queued'", (self.db_now(), command_id)) > 0

    def claim_command(self) -> tuple[int, str, dict[str, Any], bytes | None] | None:
        """The oldest queued command, its row locked until the caller's ``transaction()`` ends (or None).

        Applying it and finishing it happen in that same transaction: a trainer that dies meanwhile
        rolls back to ``queued`` (the next leader applies it); a replica cancelling it waits for the outcome.
        """
        row = self._fetchone("SELECT id, kind, payload, data FROM commands WHERE state = 'queued'"
                             " ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED")
        if row is None:
            return None
        return int(row[0]), row[1], json.loads(row[2]), None if row[3] is None else bytes(row[3])

    def finish_command(self, command_id: int, state: str, result: Any = None, error: Any = None) -> None:
        """Record a claimed command's outcome and notify the waiting replica (at the caller's commit)."""
        self._execute("UPDATE commands SET state = %s, finished = %s, result = %s, error = %s, data = NULL"
                      " WHERE id = %s", (state, self.db_now(), None if result is None else json.dumps(result),
                                         None if error is None else json.dumps(error), command_id))
        self.notify(COMMANDS_DONE_CHANNEL, str(command_id))

    def queued_commands(self) -> int:
        """How many commands wait for the trainer."""
        row = self._fetchone("SELECT COUNT(*) FROM commands WHERE state = 'queued'")
        return int(row[0]) if row else 0

    # ------------------------------------------------------------ the trainer's heartbeat
    def due_backlog(self, wait_seconds: float) -> int:
        """Pending events whose reward wait has ended (by the database's clock): the trainer's backlog."""
        row = self._fetchone("SELECT COUNT(*) FROM events WHERE status = 'pending' AND COALESCE(activated, created)"
                             " + %s <= extract(epoch FROM clock_timestamp())", (wait_seconds,))
        return int(row[0]) if row else 0

    def beat(self, leader: str, backlog: int, learned: int) -> None:
        """Write the leading trainer's heartbeat (the database's clock)."""
        self._execute("INSERT INTO trainer_heartbeat (id, leader, beat, backlog, learned)"
                      " VALUES (1, %s, extract(epoch FROM clock_timestamp()), %s, %s) ON CONFLICT (id) DO UPDATE"
                      " SET leader = EXCLUDED.leader, beat = EXCLUDED.beat, backlog = EXCLUDED.backlog,"
                      " learned = EXCLUDED.learned", (leader, backlog, learned))

    def heartbeat(self) -> dict[str, Any] | None:
        """The last heartbeat: leader, backlog, learned and its age in seconds (or None: no trainer ever led)."""
        row = self._fetchone("SELECT leader, backlog, learned, extract(epoch FROM clock_timestamp()) - beat"
                             " FROM trainer_heartbeat WHERE id = 1")
        if row is None:
            return None
        return {"leader": row[0], "backlog": int(row[1]), "learnedEvents": int(row[2]),
                "heartbeatAgeSeconds": round(max(0.0, float(row[3])), 3)}

    # ------------------------------------------------------------ rewards
    def add_rewards(self, event_id: str, rewards: list[tuple[str, float]], when: float, late: bool = False) -> None:
        """Log rewards for an event (every call is kept, whatever the aggregation)."""
        with self._conn() as conn:
            try:
                with conn.cursor() as cur:
                    cur.executemany(
                        "INSERT INTO rewards (event_id, slot_id, value, received, late) VALUES (%s, %s, %s, %s, %s)",
                        [(event_id, slot, value, when, late) for slot, value in rewards])
            except psycopg.Error as exc:
                raise pg_error(exc, self.home) from None

    def rewards_of_events(self, event_ids: list[str]) -> dict[str, list[tuple[str, float, float]]]:
        """``rewards_of`` for many events in one query (the trainer closes a claimed batch with it)."""
        out: dict[str, list[tuple[str, float, float]]] = {}
        for event_id, slot_id, value, received in self._fetchall(
                "SELECT event_id, slot_id, value, received FROM rewards WHERE event_id = ANY(%s) AND NOT late"
                " ORDER BY id", (event_ids,)):
            out.setdefault(event_id, []).append((slot_id, value, received))
        return out

    def rewards_of(self, event_id: str) -> list[tuple[str, float, float]]:
        """(slot_id, value, received) of an event's on-time rewards, in arrival order."""
        return [tuple(r) for r in self._fetchall(  # type: ignore[misc]
            "SELECT slot_id, value, received FROM rewards WHERE event_id = %s AND NOT late ORDER BY id",
            (event_id,))]

    # ------------------------------------------------------------ settings
    def get_setting(self, key: str) -> Any:
        """A stored JSON setting, or None."""
        row = self._fetchone("SELECT value FROM settings WHERE key = %s", (key,))
        return json.loads(row[0]) if row else None

    def lock_setting(self, key: str) -> Any:
        """A stored JSON setting (or None), its row locked until the caller's ``transaction()`` ends."""
        row = self._fetchone("SELECT value FROM settings WHERE key = %s FOR UPDATE", (key,))
        return json.loads(row[0]) if row else None

    def set_setting(self, key: str, value: Any) -> None:
        """Store a JSON setting."""
        self._execute("INSERT INTO settings (key, value) VALUES (%s, %s)"
                      " ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value", (key, json.dumps(value)))

    # ------------------------------------------------------------ checkpoints
    def add_checkpoint(self, learn_seq: int, created: float, reason: str, arguments: str, model: bytes,
                       keep: int = 3) -> None:
        """Save a model checkpoint; keeps the newest ``keep`` and the current model's origin
        (the newest checkpoint not made periodically), as ``store.EventLog`` does."""
        with self.transaction():
            self._execute(
                "INSERT INTO checkpoints (learn_seq, created, reason, arguments, model) VALUES (%s, %s, %s, %s, %s)",
                (learn_seq, created, reason, arguments, model))
            self._execute(
                "DELETE FROM checkpoints WHERE id NOT IN (SELECT id FROM checkpoints ORDER BY id DESC LIMIT %s)"
                " AND id IS DISTINCT FROM (SELECT MAX(id) FROM checkpoints WHERE reason <> 'periodic')",
                (keep,))

    def checkpoints(self) -> list[Checkpoint]:
        """Every kept checkpoint, oldest first (models included)."""
        rows = self._fetchall("SELECT id, learn_seq, created, reason, arguments, model FROM checkpoints ORDER BY id")
        return [Checkpoint(*row[:5], bytes(row[5])) for row in rows]

    def latest_checkpoint(self) -> Checkpoint | None:
        """The newest checkpoint, or None."""
        return self._newest_checkpoint("")

    def first_checkpoint_since_reset(self) -> Checkpoint | None:
        """The newest checkpoint made by a reset, import or policy change (the model's creation)."""
        return self._newest_checkpoint("WHERE reason <> 'periodic'")

    def _newest_checkpoint(self, where: str) -> Checkpoint | None:
        row = self._fetchone(
            f"SELECT id, learn_seq, created, reason, arguments, model FROM checkpoints {where}"
            " ORDER BY id DESC LIMIT 1")
        return Checkpoint(*row[:5], bytes(row[5])) if row else None

    # ------------------------------------------------------------ job records
    def put_record(self, kind: str, record_id: str, created: float, record_json: str) -> None:
        """Insert or replace one job record (JSON text) of ``kind`` (a key of ``RECORD_TABLES``)."""
        self._execute(f"INSERT INTO {RECORD_TABLES[kind]} (id, created, record) VALUES (%s, %s, %s)"
                      " ON CONFLICT (id) DO UPDATE SET created = EXCLUDED.created, record = EXCLUDED.record",
                      (record_id, created, record_json))

    def update_record(self, kind: str, record_id: str, record_json: str) -> bool:
        """Replace an existing job record (never re-create a deleted one); True when there was one."""
        return self._execute(f"UPDATE {RECORD_TABLES[kind]} SET record = %s WHERE id = %s",
                             (record_json, record_id)) > 0

    def add_record(self, kind: str, record_id: str, created: float, record_json: str) -> bool:
        """Insert a job record unless one with this id exists (two replicas creating one id); True if inserted."""
        return self._execute(f"INSERT INTO {RECORD_TABLES[kind]} (id, created, record) VALUES (%s, %s, %s)"
                             " ON CONFLICT (id) DO NOTHING", (record_id, created, record_json)) > 0

    def delete_record(self, kind: str, record_id: str) -> bool:
        """Delete one job record; True when there was one."""
        return self._execute(f"DELETE FROM {RECORD_TABLES[kind]} WHERE id = %s", (record_id,)) > 0

    def record(self, kind: str, record_id: str) -> str | None:
        """One job record's JSON text, or None."""
        row = self._fetchone(f"SELECT record FROM {RECORD_TABLES[kind]} WHERE id = %s", (record_id,))
        return None if row is None else str(row[0])

    def record_ids(self, kind: str) -> list[str]:
        """The ids of every stored job of ``kind`` (without their possibly large results)."""
        return [str(r[0]) for r in self._fetchall(f"SELECT id FROM {RECORD_TABLES[kind]} ORDER BY created, id")]

    def records(self, kind: str) -> list[tuple[str, str]]:
        """(id, record JSON text) of every stored job of ``kind``, oldest first."""
        return [(r[0], r[1]) for r in self._fetchall(f"SELECT id, record FROM {RECORD_TABLES[kind]}"
                                                    " ORDER BY created, id")]

    # ------------------------------------------------------------ policy changes
    def add_policy_change(self, created: float, who: str, action: str, evaluation_id: str | None,
                          before: dict[str, Any], after: dict[str, Any], details: dict[str, Any] | None) -> int:
        """Record one change of the learning policy; returns its id."""
        row = self._fetchone(
            "INSERT INTO policy_changes (created, who, action, evaluation_id, before, after, details)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING id",
            (created, who, action, evaluation_id, json.dumps(before), json.dumps(after),
             None if details is None else json.dumps(details)))
        return int(row[0]) if row else 0

    def policy_changes(self, limit: int | None = None) -> list[PolicyChange]:
        """Recorded policy changes, newest first (at most ``limit``)."""
        rows = self._fetchall(f"SELECT {_CHANGE_COLUMNS} FROM policy_changes ORDER BY id DESC LIMIT %s", (limit,))
        return [_change(row) for row in rows]

    def policy_change(self, change_id: int) -> PolicyChange | None:
        """One recorded policy change, or None."""
        row = self._fetchone(f"SELECT {_CHANGE_COLUMNS} FROM policy_changes WHERE id = %s", (change_id,))
        return _change(row) if row else None


def export_query(start: float | None, end: float | None, after: LogPosition | None,
                 limit: int | None) -> tuple[str, tuple[Any, ...]]:
    """The export's query: events with their model and rewards (one JSON array per event, arrival order)."""
    columns = ", ".join("e." + c.strip() for c in _EVENT_COLUMNS.split(","))
    position = after if after is not None else (float("-inf"), 0)
    return (f"SELECT {columns}, e.model_id, (SELECT json_agg(json_build_array(r.slot_id, r.value, r.received,"
            " r.late) ORDER BY r.id) FROM rewards r WHERE r.event_id = e.event_id)"
            " FROM events e WHERE e.created >= %s AND e.created < %s AND (e.created, e.seq) > (%s, %s)"
            " ORDER BY e.created, e.seq LIMIT %s",
            (start if start is not None else float("-inf"), end if end is not None else float("inf"),
             position[0], position[1], limit))


def _record(row: tuple[Any, ...]) -> LogRecord:
    rewards = [(str(slot), float(value), float(received), bool(late)) for slot, value, received, late in row[14] or []]
    return log_record(row, None if row[13] is None else int(row[13]), rewards)


def open_reader(url: str) -> psycopg.Connection[Any]:
    """A plain reading connection to the log at ``url``: no owner lock, no migration, nothing written.

    Raises a ``PersonalizerError`` when the database cannot be reached or holds no Personalizer log.
    """
    where = redact(url)
    try:
        conn = psycopg.connect(url, autocommit=True, application_name=f"personalizer-reader-{os.getpid()}",
                               connect_timeout=10)
    except psycopg.Error as exc:
        raise pg_error(exc, where) from None
    try:
        conn.execute("SET default_transaction_read_only = on")
        row = conn.execute("SELECT to_regclass('schema_version') IS NOT NULL").fetchone()
        version = conn.execute("SELECT version FROM schema_version").fetchone() if row and row[0] else None
    except psycopg.Error as exc:
        conn.close()
        raise pg_error(exc, where) from None
    if version is None:
        conn.close()
        raise PersonalizerError("ResourceNotFound", f"no Personalizer event log in {where}", 404)
    if int(version[0]) != SCHEMA_VERSION:
        conn.close()
        raise PersonalizerError(
            "DatabaseVersionNotSupported", f"the database {where} has schema version {version[0]}; this version "
            f"of Personalizer Studio reads version {SCHEMA_VERSION} (start its server once to migrate it)", 503)
    return conn


def export_rows(conn: psycopg.Connection[Any], start: float | None = None, end: float | None = None,
                after: LogPosition | None = None, limit: int | None = None) -> Generator[LogRecord, None, None]:
    """``PgEventLog.export_events`` on a reader's connection: one snapshot, streamed by a server-side cursor."""
    sql, params = export_query(start, end, after, limit)
    try:
        with conn.transaction(), conn.cursor(name=next(_CURSOR_NAMES)) as cur:
            cur.itersize = 2000
            cur.execute(sql, params)
            for row in cur:
                yield _record(row)
    except psycopg.Error as exc:
        raise pg_error(exc, redact(conn.info.dsn)) from None


class _PgTransaction:
    """Pins one pooled connection to the thread for the outermost ``with``; commits on a clean exit."""

    def __init__(self, log: PgEventLog) -> None:
        self._log = log
        self._outer = False
        self._pooled: contextlib.AbstractContextManager[psycopg.Connection[Any]] | None = None
        self._tx: Any = None

    def __enter__(self) -> None:
        local = self._log._local
        self._outer = getattr(local, "conn", None) is None
        if not self._outer:
            return
        try:
            self._pooled = self._log._pool.connection(timeout=10)
            conn = self._pooled.__enter__()
            self._tx = conn.transaction()
            self._tx.__enter__()
        except psycopg.Error as exc:
            if self._pooled is not None:
                self._pooled.__exit__(None, None, None)
            raise pg_error(exc, self._log.home) from None
        local.conn = conn

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if not self._outer:
            return
        self._log._local.conn = None
        assert self._pooled is not None
        try:
            self._tx.__exit__(exc_type, exc, tb)  # commits, or rolls back when the block raised
        except psycopg.Error as commit_error:
            self._pooled.__exit__(type(commit_error), commit_error, None)
            raise pg_error(commit_error, self._log.home) from None
        self._pooled.__exit__(exc_type, exc, tb)
        if isinstance(exc, psycopg.Error):
            raise pg_error(exc, self._log.home) from None


def pg_error(exc: psycopg.Error, where: str | None = None) -> PersonalizerError:
    """The Personalizer error for a failed PostgreSQL call: full disk 507, anything else 503.

    Never a bare 500: the caller can tell "retry when there is space" from "retry", and the message
    names the database (without its password) rather than dumping the driver's internals.
    """
    at = f" ({where})" if where else ""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
    if isinstance(exc, pg_errors.DiskFull):
        return PersonalizerError(
            "InsufficientStorage", f"the event log's disk is full{at}; nothing was written, retry when there "
            "is space", 507)
    if isinstance(exc, psycopg.OperationalError):
        return PersonalizerError("ServiceUnavailable", f"the event log{at} is unreachable ({first}); retry", 503)
    return PersonalizerError("ServiceUnavailable", f"the event log{at} failed ({first}); nothing was written", 503)
