"""Scale-out on PostgreSQL: stateless rank/reward replicas and one leading trainer over one shared log.

``ReplicaEngine`` (``serve --role replica``) ranks with the newest published model and logs each
event (with the id of that model) before answering; rewards and activations are one transaction
each, with the event's row locked, so no acknowledged reward is lost or counted twice against a
concurrent closing. A reward that completes an event closes it there (labels and a gapless learning
order assigned in the same transaction); the trainer learns it.

``TrainerEngine`` (``train``) leads while it holds the database's owner lock (a session advisory
lock: it dies with the process). It claims due events (``FOR UPDATE SKIP LOCKED``), closes them with
their labels and learning orders, commits, learns every event the log says was learned after its
model, and publishes the model every ``modelExportFrequency`` (at least 1 s) as a checkpoint with a
``NOTIFY``; it also enforces ``logRetentionDays`` in bounded batches. Standbys wait for the lock and
take over within about a second of the leader's death.

Changes that replace the model or delete the log (policy update, reset and rollback, model import and
reset, log deletion) are accepted by any replica: it checks them as the embedded engine does (a bad one
is a 400 and queues nothing), queues a command (``commands`` table, ``NOTIFY``), and waits for the
outcome. The leader applies commands in order, each claimed, applied and finished in one transaction
(a leader that dies mid-command rolls it back to ``queued``), and publishes the new model at once. A
replica that gets no outcome (no leader for ``leaderless_grace`` s, or ``command_timeout`` s) cancels
the command while it is still queued, so it is never applied after its caller got the 503. The leader
also writes a heartbeat row every second (backlog of due events, learned count) that every replica's
``/health`` reports, and runs the evaluations and feature-importance jobs replicas queue
(``scaled_jobs``).

Both reuse the embedded engine (``LocalPersonalizer``): validation, encoding, prediction, learning
and replay are its own code; only where state lives differs (the database, not memory).

Why one module of this size: the replica and the trainer are the two halves of one protocol
over the shared tables (closing rules, commands, heartbeat, model publication); each half is
short only when read beside the other. The jobs the trainer runs for replicas are in ``scaled_jobs``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from .contract import PersonalizerError, PolicyContract, ServiceConfiguration, parse_duration
from .engine import RETENTION_INTERVAL, LocalPersonalizer, _unknown_event
from .pgstore import COMMANDS_DONE_CHANNEL, FINAL_COMMAND_STATES, MODELS_CHANNEL, WORK_CHANNEL, PgEventLog
from .policy_history import ChangeNote
from .store import StoredEvent
from .vw import trial
from .vw import workspace as vw_workspace

log = logging.getLogger(__name__)

#: Seconds between a replica's checks for a new model when no NOTIFY arrives (the fallback).
MODEL_POLL_SECONDS = 2.0
#: Shortest model export interval honoured.
MIN_EXPORT_SECONDS = 1.0
#: Seconds a replica waits for the trainer to apply a command before it cancels it and answers 503.
COMMAND_TIMEOUT_SECONDS = 30.0
#: Seconds with no trainer leading at all after which a replica cancels a queued command (a standby
#: takes over well within this).
LEADERLESS_GRACE_SECONDS = 3.0
#: Seconds between a command waiter's checks when no NOTIFY arrives (the fallback).
COMMAND_POLL_SECONDS = 0.25
#: Seconds between the leading trainer's heartbeats.
HEARTBEAT_SECONDS = 1.0
#: A heartbeat older than this makes ``/health`` warn (the trainer is dead, stuck or cut off).
HEARTBEAT_STALE_SECONDS = 10.0
#: What each command is, for messages.
_COMMAND_WHAT = {"updatePolicy": "policy update", "resetPolicy": "policy reset", "rollbackPolicy": "policy rollback",
                 "importModel": "model import", "resetModel": "model reset", "deleteLogs": "log deletion"}
#: Commands that replace the model (the trainer publishes the new one at once).
_MODEL_COMMANDS = frozenset({"updatePolicy", "resetPolicy", "rollbackPolicy", "importModel", "resetModel"})


def _iso(ts: float | None) -> str | None:
    """A Unix time as ISO-8601 UTC with a ``Z``, as the engine writes it (``protocol.iso_utc`` after the
    structure merge; kept here so this module does not depend on a private helper's location)."""
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def _labels(slot_ids: list[str], rewards: list[tuple[str, float, float]], aggregation: str,
            default: float) -> list[float | None]:
    """Each slot's learned reward from its on-time rewards in arrival order (earliest or sum), default if none."""
    joined: dict[str, float] = {}
    for slot_id, value, _ in rewards:
        if aggregation == "sum":
            joined[slot_id] = joined.get(slot_id, 0.0) + value
        else:
            joined.setdefault(slot_id, value)
    return [joined.get(s, default) for s in slot_ids]


class _SharedLog:
    """Closing events in the shared log: the same rules for replicas and the trainer."""

    _log: PgEventLog
    _config: Any

    def _close_stored(self, ev: StoredEvent, now: float, learn_seq: int | None,
                      rewards: list[tuple[str, float, float]] | None = None) -> tuple[str, int | None]:
        """Close a locked pending event (inside the caller's transaction); returns (status, learn_seq used).

        ``rewards``: its on-time rewards when the caller read them already (the trainer, for a whole batch).
        """
        if ev.deferred and ev.activated is None:
            self._log.close_event(ev.event_id, "discarded", now, None, None)
            return "discarded", None
        slot_ids = [s["id"] for s in ev.response["slots"]]
        labels = _labels(slot_ids, self._log.rewards_of(ev.event_id) if rewards is None else rewards,
                         self._config.reward_aggregation, self._config.default_reward)
        if ev.mode == "LoggingOnly":
            self._log.close_event(ev.event_id, "logged", now, None, labels)
            return "logged", None
        seq = learn_seq if learn_seq is not None else self._log.next_learn_seqs(1)
        self._log.close_event(ev.event_id, "learned", now, seq, labels)
        return "learned", seq

    def record(self, kind: str, record_id: str) -> str | None:
        """One stored job record's JSON text, or None."""
        return self._log.record(kind, record_id)

    def record_ids(self, kind: str) -> list[str]:
        """The ids of the stored jobs of ``kind``, oldest first."""
        return self._log.record_ids(kind)


class ReplicaEngine(_SharedLog, LocalPersonalizer):
    """A stateless API replica on a shared PostgreSQL log (``serve --role replica``)."""

    def __init__(self, url: str, *, command_timeout: float = COMMAND_TIMEOUT_SECONDS,
                 leaderless_grace: float = LEADERLESS_GRACE_SECONDS) -> None:
        store = PgEventLog(url, own=False)
        self._model_id: int | None = None
        self.model_error: str | None = None  # why the newest published model did not load (the old one serves)
        self._stop = threading.Event()
        #: Seconds to wait for the trainer to apply a command (then cancel it and answer 503).
        self.command_timeout = command_timeout
        #: Seconds with no leading trainer after which a queued command is cancelled (503).
        self.leaderless_grace = leaderless_grace
        self._refreshing = threading.Lock()  # one model load at a time (watcher and request threads)
        self._polled = time.monotonic()  # the watcher's last poll for a model (the NOTIFY's fallback)
        self._commands_done = threading.Condition()
        self._done_generation = 0  # bumped on each "command done" NOTIFY: waiters re-read their command
        # The trainer's last heartbeat as the watcher last read it (and when, monotonic): /health answers
        # from memory, on the event loop, never waiting for the database.
        self._heartbeat: tuple[dict[str, Any] | None, float, str | None] = (None, 0.0, None)
        super().__init__(store, clock=store.db_now)
        self._read_heartbeat()
        self._watcher = threading.Thread(target=self._watch_models, name="model-watcher", daemon=True)
        self._watcher.start()

    # -- model: the newest published one, swapped in without blocking ranks for the load
    def _restore(self) -> None:
        self._vw = self._workspace()
        self._learn_seq, self._created, self._modified = 0, self._clock(), None
        self._since_checkpoint, self.replayed_on_start = 0, 0
        self._load_published()
        origin = self._log.first_checkpoint_since_reset()  # the model's creation, as every replica reports it
        if origin is not None:
            self._created = origin.created

    def _checkpoint(self, reason: str) -> None:
        """Replicas publish nothing: models come from the trainer."""

    def _load_published(self) -> bool:
        newest = self._log.newest_checkpoint_id()
        if newest is None or newest == self._model_id:
            return False
        cp = self._log.checkpoint_by_id(newest)
        if cp is None:
            return False
        try:
            vw = vw_workspace.load(cp.model, cp.arguments)
        except (PersonalizerError, OSError) as exc:  # keep serving the model that works, say so in /health
            self.model_error = f"model {cp.id} did not load: {str(exc).splitlines()[0] if str(exc) else exc}"
            log.warning("%s; the previous model keeps serving", self.model_error)
            return False
        settings = self._log.get_setting("service")
        policy = self._log.get_setting("policy")
        with self._lock:
            old, self._vw = self._vw, vw
            self._model_id = self._log.current_model_id = cp.id
            self._learn_seq, self._modified = cp.learn_seq, cp.created
            if cp.reason != "periodic":  # a new lineage (policy change, import, reset): created now
                self._created = cp.created
            if policy is not None:
                self._policy = PolicyContract.model_validate(policy)
            if settings is not None:
                self._apply_settings(settings, rebuild=False)
            self.model_error = None
        old.finish()
        return True

    def _apply_settings(self, stored: dict[str, Any], *, rebuild: bool = True) -> None:
        """Serve with the stored configuration; a changed exploration rebuilds the workspace with it
        (``rebuild``; call with the engine lock held)."""
        arguments = self.arguments
        self._config = ServiceConfiguration.model_validate(stored)
        self._wait = self._config.reward_wait_seconds
        if rebuild and self.arguments != arguments:
            old, self._vw = self._vw, self._workspace(self._model_bytes())
            old.finish()

    def _watch_models(self) -> None:
        """LISTEN for published models, with a poll as the fallback (a lost connection, a missed notify)."""
        import psycopg

        while not self._stop.is_set():
            try:
                with psycopg.connect(self._log.url, autocommit=True) as conn:
                    conn.execute(f"LISTEN {MODELS_CHANNEL}")
                    conn.execute(f"LISTEN {COMMANDS_DONE_CHANNEL}")
                    while not self._stop.is_set():
                        if time.monotonic() - self._heartbeat[1] >= HEARTBEAT_SECONDS:
                            self._read_heartbeat()
                        notes = list(conn.notifies(timeout=HEARTBEAT_SECONDS, stop_after=1))
                        if any(n.channel == COMMANDS_DONE_CHANNEL for n in notes):
                            self._wake_command_waiters()
                        if any(n.channel == MODELS_CHANNEL for n in notes) or \
                                time.monotonic() - self._polled >= MODEL_POLL_SECONDS:
                            self._polled = time.monotonic()
                            self._refresh()
            except Exception as exc:  # the database went away: poll again after a pause
                if not self._stop.is_set():  # (a closed replica's watcher may outlive the database)
                    log.warning("model watcher: %s", exc)
                self._stop.wait(MODEL_POLL_SECONDS)

    def _read_heartbeat(self) -> None:
        """Read the leading trainer's heartbeat for ``/health`` (the watcher does, every second)."""
        try:
            self._heartbeat = (self._log.heartbeat(), time.monotonic(), None)
        except PersonalizerError as exc:
            self._heartbeat = (None, time.monotonic(), exc.message)

    def _refresh(self) -> None:
        """Load the newest published model, or else apply a changed stored configuration."""
        with self._refreshing, contextlib.suppress(PersonalizerError):
            if not self._load_published():
                settings = self._log.get_setting("service")
                if settings is not None and settings != self._config.model_dump(by_alias=True):
                    with self._lock:
                        self._apply_settings(settings)

    def health_details(self) -> dict[str, Any]:
        """What ``/health`` adds for a replica: the role, the store kind, the model it ranks with and its
        age, and the leading trainer's last heartbeat (backlog of due events, learned count, its age).

        ``status`` is ``warning`` (still a 200: the replica itself serves) when the heartbeat is older than
        ``HEARTBEAT_STALE_SECONDS`` or no trainer ever led, or when a newer model failed to load.
        """
        out: dict[str, Any] = {
            "role": "replica", "store": "postgresql", "modelId": self._model_id,
            "modelAgeSeconds": None if self._modified is None else round(max(0.0, time.time() - self._modified), 3),
            "modelError": self.model_error}
        warnings = [] if self.model_error is None else [self.model_error]
        beat, read_at, unreachable = self._heartbeat
        if beat is not None:  # aged by the time since the watcher read it
            beat = {**beat, "heartbeatAgeSeconds": round(beat["heartbeatAgeSeconds"] + time.monotonic() - read_at, 3)}
        if unreachable is not None:
            warnings.append(f"the store is unreachable: {unreachable}")
        else:
            if beat is None:
                warnings.append("no trainer has run on this store yet: run 'python -m personalizer train --store URL'")
            elif beat["heartbeatAgeSeconds"] > HEARTBEAT_STALE_SECONDS:
                warnings.append(f"the trainer's last heartbeat is {beat['heartbeatAgeSeconds']:.0f} s old: no trainer "
                                "leads (rewards are not learned, commands are not applied)")
        out["trainer"] = beat
        if warnings:
            out["status"], out["warnings"] = "warning", warnings
        return out

    # -- commands: validated here, applied by the leading trainer, answered with its result
    def _wake_command_waiters(self) -> None:
        with self._commands_done:
            self._done_generation += 1
            self._commands_done.notify_all()

    def _command(self, kind: str, payload: dict[str, Any], data: bytes | None = None) -> Any:
        """Queue a command, wait for the trainer's outcome, and answer it as the embedded engine would.

        No trainer leading for ``leaderless_grace`` seconds, or no outcome within ``command_timeout``:
        the command is cancelled if still queued (so it is never applied after this caller got an
        error) and the answer is 503; one the trainer is applying is waited for.
        """
        what = _COMMAND_WHAT[kind]
        command_id = self._log.add_command(kind, payload, data, self._clock())
        deadline = time.monotonic() + self.command_timeout
        leaderless_since: float | None = None
        while True:
            generation = self._done_generation
            state, result, error = self._log.command_outcome(command_id)
            if state in FINAL_COMMAND_STATES:
                break
            now = time.monotonic()
            if self._log.leader_present():
                leaderless_since = None
            elif leaderless_since is None:
                leaderless_since = now
            leaderless = leaderless_since is not None and now - leaderless_since >= self.leaderless_grace
            if leaderless or now >= deadline:
                try:
                    cancelled = self._log.cancel_command(command_id, self.command_timeout)
                except PersonalizerError:
                    raise PersonalizerError(
                        "ServiceUnavailable", f"the trainer is still applying the {what} (command {command_id}); "
                        "check the outcome (e.g. the policy or model properties) before retrying", 503) from None
                if cancelled:
                    why = ("no trainer is running for this deployment (start 'python -m personalizer train "
                           "--store URL')") if leaderless else \
                        f"the trainer did not apply it within {self.command_timeout:g} s"
                    raise PersonalizerError("ServiceUnavailable", f"the {what} was not applied: {why}; it was "
                                            "cancelled and will not be applied later, retry", 503)
                continue  # finished while we cancelled: read its outcome
            with self._commands_done:
                if self._done_generation == generation:
                    self._commands_done.wait(COMMAND_POLL_SECONDS)
        if state == "failed":
            raise PersonalizerError(error["code"], error["message"], int(error["status"]))
        if state == "cancelled":
            raise PersonalizerError("ServiceUnavailable", f"the {what} was cancelled before it was applied; retry", 503)
        if kind in _MODEL_COMMANDS:
            self._refresh()  # answer with the published model loaded here: read-your-writes on this replica
        return result

    @property
    def model_id(self) -> int | None:
        """The id of the published model (checkpoint) this replica ranks with."""
        return self._model_id

    # -- rank: nothing kept in memory; the log holds the event
    def _process_due(self, now: float) -> int:
        return 0  # the trainer closes due events

    def _reload_pending(self) -> None:
        pass

    def _rank(self, req: Any, extra: Any = None, *, explain: bool = False) -> dict[str, Any]:
        with self._locked():
            answer = super()._rank(req, extra, explain=explain)
            event_id = answer["eventId"]
            self._pending.pop(event_id, None)
            self._recent.pop(event_id)
            self._deadlines.clear()
            return answer

    # -- reward and activate: one transaction each, the event's row locked
    def _reward(self, event_id: str, values: list[tuple[str, float]]) -> dict[str, Any]:
        with self._log.transaction():
            ev = self._log.lock_event(event_id)
            if ev is None:
                raise _unknown_event(event_id)
            slot_ids = [s["id"] for s in ev.response["slots"]]
            for slot_id, _ in values:
                if slot_id not in slot_ids:
                    raise PersonalizerError("InvalidRewardRequest",
                                            f"slotId '{slot_id}' is not a slot of event '{event_id}'", 400)
            now = self._clock()
            if ev.status == "pending" and (ev.activated or ev.created) + self._wait <= now:
                ev.status, ev.closed = self._close_stored(ev, now, None)[0], now  # due: close it as the trainer would
            if ev.status == "pending":
                self._log.add_rewards(event_id, values, now)
                if self._config.reward_aggregation == "earliest" and (ev.activated is not None or not ev.deferred):
                    had = {slot for slot, _, _ in self._log.rewards_of(event_id)}
                    if had >= set(slot_ids):
                        self._close_stored(ev, now, None)
                        return {"eventId": event_id, "status": "learned"}
                return {"eventId": event_id, "status": "pending"}
            had = {slot for slot, _, _ in self._log.rewards_of(event_id)}
            if self._config.reward_aggregation == "earliest" and all(slot in had for slot, _ in values):
                return {"eventId": event_id, "status": "duplicate"}
            self._log.add_rewards(event_id, values, now, late=True)
        why = {"discarded": "it was never activated",
               "logged": "it was logged (LoggingOnly)"}.get(ev.status, "its reward wait time had passed")
        raise PersonalizerError(
            "InvalidRewardRequest",
            f"event '{event_id}' was closed at {_iso(ev.closed)} because {why}; "
            "this late reward was logged but not learned", 409)

    def activate(self, event_id: str) -> dict[str, Any]:
        """Activate a deferred event so it will be learned; a no-op for active ones."""
        with self._log.transaction():
            ev = self._log.lock_event(event_id)
            if ev is None:
                raise PersonalizerError("InvalidEventIdToActivate",
                                        f"no event '{event_id}' was ranked; nothing to activate", 404)
            now = self._clock()
            if ev.status == "pending" and ev.deferred and ev.activated is None and ev.created + self._wait <= now:
                self._close_stored(ev, now, None)
                ev.status, ev.closed = "discarded", now
            if ev.status == "discarded":
                raise PersonalizerError(
                    "InvalidEventIdToActivate",
                    f"event '{event_id}' was discarded at {_iso(ev.closed)}: not activated within the "
                    f"reward wait time ({self._config.reward_wait_time})", 409)
            if ev.status != "pending":
                return {"eventId": event_id, "status": ev.status}
            if ev.deferred and ev.activated is None:
                self._log.set_activated(event_id, now)
                ev.activated = now
                slot_ids = {s["id"] for s in ev.response["slots"]}
                had = {slot for slot, _, _ in self._log.rewards_of(event_id)}
                if self._config.reward_aggregation == "earliest" and had >= slot_ids:
                    return {"eventId": event_id, "status": self._close_stored(ev, now, None)[0]}
            return {"eventId": event_id, "status": "pending"}

    def enforce_retention(self, limit: int = 1000) -> int:
        """The trainer enforces ``logRetentionDays``; a replica deletes nothing."""
        return 0

    def update_policy(self, policy: dict[str, Any], *, exploration_percentage: float | None = None,
                      note: ChangeNote | None = None) -> dict[str, Any]:
        """Checked here (400 and nothing queued when bad), applied by the trainer; returns the new policy."""
        self._checked_policy(policy, exploration_percentage)
        note = note or ChangeNote()
        return self._command("updatePolicy", {"policy": policy, "explorationPercentage": exploration_percentage,
                                              "note": dataclasses.asdict(note)})

    def reset_policy(self, *, note: ChangeNote | None = None) -> dict[str, Any]:
        """Back to the default policy (applied by the trainer); returns it."""
        return self._command("resetPolicy", {"note": dataclasses.asdict(note or ChangeNote(action="reset"))})

    def rollback_policy(self, change_id: str | int, *, who: str = "api") -> dict[str, Any]:
        """Checked here (404 unknown change, 409 already live, 400 a policy that fails its trial), applied
        by the trainer; returns the new change."""
        self._refresh()
        target = self._rollback_target(change_id)
        before = target.before
        self._checked_policy({"name": before["name"], "arguments": before["arguments"]},
                             before.get("explorationPercentage"))
        return self._command("rollbackPolicy", {"changeId": str(target.id), "who": who})

    def import_model(self, model: bytes) -> None:
        """Checked here (header, allow-list, child-process trial), installed and published by the trainer."""
        if not model:
            raise PersonalizerError("InvalidModelImportFormat", "the model file is empty")
        vw_workspace.read_header(model)
        with self._locked():
            arguments = self.arguments
            examples = self._trial_examples()
        trial.trial_model(model, arguments, examples)
        self._command("importModel", {}, model)

    def reset_model(self) -> None:
        """A fresh model with the current policy, made and published by the trainer."""
        self._command("resetModel", {})

    def delete_logs(self) -> int:
        """Closed events deleted by the trainer (after a checkpoint of everything learned); returns how many."""
        deleted = int(self._command("deleteLogs", {}))
        self._counts = None
        return deleted

    def update_service_configuration(self, configuration: dict[str, Any]) -> dict[str, Any]:
        """Merge into the stored configuration (its row locked, so concurrent updates through other
        replicas are not lost), serve with it here, and notify the other replicas and the trainer."""
        if not isinstance(configuration, dict):
            raise PersonalizerError("InvalidServiceConfiguration", "configuration must be a JSON object")
        with self._log.transaction():
            stored = self._log.lock_setting("service")
            with self._locked():
                if stored is not None and stored != self._config.model_dump(by_alias=True):
                    self._apply_settings(stored)
                answer = super().update_service_configuration(configuration)
            self._log.notify(MODELS_CHANNEL, "settings")
        return answer

    def get_service_configuration(self) -> dict[str, Any]:
        """The shared configuration (re-read, so a change through another replica shows at once)."""
        self._refresh()
        return super().get_service_configuration()

    def get_policy(self) -> dict[str, Any]:
        """The policy of the newest published model (re-read, as the configuration)."""
        self._refresh()
        return super().get_policy()

    def model_properties(self) -> dict[str, Any]:
        """Creation and last learning time of the newest published model."""
        self._refresh()
        return super().model_properties()

    def notify_jobs(self) -> None:
        """Wake the trainer's job runner: an evaluation or feature-importance job was queued or deleted."""
        self._log.notify(WORK_CHANNEL, "job")

    def add_record(self, kind: str, record_id: str, created: float, record_json: str) -> bool:
        """Insert a job record unless the id is taken (another replica created it); True if inserted."""
        return self._log.add_record(kind, record_id, created, record_json)

    def job_managers(self) -> tuple[Any, Any]:
        """The evaluations and feature-importance managers a replica's app serves: they create and read
        records in the shared store; the trainer runs them (``scaled_jobs``)."""
        from .scaled_jobs import ReplicaEvaluations, ReplicaFeatureImportances

        return ReplicaEvaluations(self), ReplicaFeatureImportances(self)

    def stats(self) -> dict[str, Any]:
        """Counts from the shared log (no events are pending in a replica's memory)."""
        with self._locked():
            counts = self._log.counts()
            out = super().stats()
            out.update({k: counts.get(k, 0) for k in ("learned", "logged", "discarded", "pending", "rewards")})
            out.update({"role": "replica", "modelId": self._model_id, "modelError": self.model_error})
            return out

    def close(self) -> None:
        """Stop watching for models and close the log (a replica has nothing to checkpoint)."""
        self._stop.set()
        with self._lock:
            self._vw.finish()
            self._log.close()


class TrainerEngine(_SharedLog, LocalPersonalizer):
    """The trainer while it leads (it holds the owner lock from construction to ``close``)."""

    def __init__(self, url: str) -> None:
        store = PgEventLog(url, own=True)  # raises 503 "in use" while another trainer leads
        self._published_at = 0.0
        self._retention_due = 0.0
        self._beat_due = 0.0
        #: Who leads, as the heartbeat names it (host and process id).
        self.leader = f"{socket.gethostname()}:{os.getpid()}"
        #: The models this trainer's evaluation replays trained, by (evaluation id, policy name); set by
        #: ``TrainerJobs``. applyFromEvaluation through any replica starts from one when this trainer
        #: still holds it (as the embedded engine does), else from a fresh model.
        self.replay_models: Callable[[str, str], bytes | None] | None = None
        super().__init__(store, clock=store.db_now)
        self._publish()

    def _reload_pending(self) -> None:
        pass  # pending events live in the database; ``step`` claims them when due

    def _export_seconds(self) -> float:
        return max(MIN_EXPORT_SECONDS, parse_duration(self._config.model_export_frequency).total_seconds())

    def step(self, batch: int = 500) -> int:
        """One round: close due events, learn what the log says was learned since, publish when due.

        Returns how many events were closed. Raises ``PersonalizerError`` once leadership is lost
        (the lease session died): a dead leader writes nothing more.
        """
        settings = self._log.get_setting("service")
        if settings is not None and settings != self._config.model_dump(by_alias=True):
            from .contract import ServiceConfiguration

            args = self.arguments
            self._config = ServiceConfiguration.model_validate(settings)
            self._wait = self._config.reward_wait_seconds
            if self.arguments != args:
                self._vw = self._workspace(self._model_bytes())
        with self._log.transaction():
            if not self._log.holds_lease():
                raise PersonalizerError("ServiceUnavailable", "this trainer lost its leadership", 503)
            now = self._clock()
            due = self._log.claim_due(self._wait, now, batch)
            learnable = {ev.event_id for ev in due
                         if not (ev.deferred and ev.activated is None) and ev.mode != "LoggingOnly"}
            seq = self._log.next_learn_seqs(len(learnable)) if learnable else None
            # One query for the batch's rewards, the closing updates pipelined: a round trip per batch,
            # not two per event.
            rewards = self._log.rewards_of_events([ev.event_id for ev in due]) if due else {}
            with self._log.pipeline():
                for ev in due:
                    if seq is not None and ev.event_id in learnable:
                        self._close_stored(ev, now, seq, rewards.get(ev.event_id, []))
                        seq += 1
                    else:
                        self._close_stored(ev, now, None, rewards.get(ev.event_id, []))
        learned = self._replay_after(self._learn_seq)
        self._since_checkpoint += learned
        if self._since_checkpoint and self._clock() - self._published_at >= self._export_seconds():
            self._publish()
        if self._clock() >= self._retention_due:
            self._retention_due = self._clock() + RETENTION_INTERVAL
            with self._log.transaction():
                if self._log.holds_lease():
                    self.enforce_retention()
        return len(due)

    def _replay_after(self, start: int) -> int:
        n = super()._replay_after(start)
        if n:
            self._learn_seq = start + n
        return n

    def _check_lease(self) -> None:
        if not self._log.holds_lease():
            raise PersonalizerError("ServiceUnavailable", "this trainer lost its leadership", 503)

    # -- commands queued by replicas: applied in order, each in one transaction with its outcome
    def apply_commands(self) -> int:
        """Apply every queued command, oldest first; returns how many were applied or failed.

        Each command is claimed (row locked), applied and marked done or failed in ONE transaction,
        with the learning order locked (no event is learned meanwhile) and what was learned so far
        replayed first (a log deletion's checkpoint keeps it). A trainer that dies mid-command rolls
        it back to ``queued``: the next leader applies it, or the waiting replica cancels it.
        """
        applied = 0
        while True:
            with self._log.transaction():
                self._check_lease()
                claimed = self._log.claim_command()
                if claimed is None:
                    return applied
                command_id, kind, payload, data = claimed
                self._log.lock_learn_order()
                self._since_checkpoint += self._replay_after(self._learn_seq)
                result: Any = None
                error: dict[str, Any] | None = None
                try:
                    with self._log.savepoint():
                        result = self._apply_command(kind, payload, data)
                except PersonalizerError as exc:
                    if exc.status >= 500 and exc.code != "InternalServerError":
                        raise  # the database failed: roll back, the command stays queued
                    error = {"code": exc.code, "message": exc.message, "status": exc.status}
                except Exception as exc:  # a bug or a VW failure: the caller gets a 500, the trainer goes on
                    log.exception("command %s (%s) failed", command_id, kind)
                    error = {"code": "InternalServerError", "message": f"the trainer failed to apply it: "
                             f"{type(exc).__name__}: {str(exc)[:200]}", "status": 500}
                self._log.finish_command(command_id, "failed" if error else "done", result, error)
                if error is None and kind in _MODEL_COMMANDS | {"deleteLogs"}:
                    newest = self._log.newest_checkpoint_id()
                    if newest is not None:
                        self._log.notify_model(newest)
                self._check_lease()  # a dead leader commits nothing
            if error is None and kind in _MODEL_COMMANDS | {"deleteLogs"}:
                self._published_at = self._clock()
            applied += 1

    def _apply_command(self, kind: str, payload: dict[str, Any], data: bytes | None) -> Any:
        """One command, with the embedded engine's own code (its checks run again here)."""
        if kind == "updatePolicy":
            note = ChangeNote(**payload["note"])
            policy = self.update_policy(payload["policy"], exploration_percentage=payload.get("explorationPercentage"),
                                        note=note)
            model = None
            if note.evaluation_id is not None and self.replay_models is not None:
                model = self.replay_models(note.evaluation_id, payload["policy"]["name"])
            if model is not None:  # applied from an evaluation this trainer ran: its replay's model, as embedded
                self.import_model(model)
            return policy
        if kind == "resetPolicy":
            return self.reset_policy(note=ChangeNote(**payload["note"]))
        if kind == "rollbackPolicy":
            return self.rollback_policy(payload["changeId"], who=payload.get("who", "api"))
        if kind == "importModel":
            self.import_model(data or b"")
            return None
        if kind == "resetModel":
            self.reset_model()
            return None
        if kind == "deleteLogs":
            return self.delete_logs()
        raise PersonalizerError("InvalidCommand", f"unknown command kind '{kind}'", 400)

    # -- the heartbeat every replica's /health reports
    def beat(self, force: bool = False) -> None:
        """Write the heartbeat (backlog of due events, learned count) at most every ``HEARTBEAT_SECONDS``."""
        now = time.monotonic()
        if not force and now < self._beat_due:
            return
        self._beat_due = now + HEARTBEAT_SECONDS
        self._log.beat(self.leader, self._log.due_backlog(self._wait), self._learn_seq)

    # -- job records: the replicas create them; the trainer only updates those that still exist
    def save_record(self, kind: str, record_id: str, created: float, record_json: str) -> None:
        """Update a job's record if it still exists: one deleted through a replica is not written back."""
        self._log.update_record(kind, record_id, record_json)

    def _publish(self) -> None:
        with self._log.transaction():
            if not self._log.holds_lease():
                raise PersonalizerError("ServiceUnavailable", "this trainer lost its leadership", 503)
            self._checkpoint("periodic")
            newest = self._log.newest_checkpoint_id()
            if newest is not None:
                self._log.notify_model(newest)
        self._published_at = self._clock()


    def close(self) -> None:
        """Checkpoint (only while still leading: a dead leader writes nothing more) and close the log."""
        if not self._log.holds_lease():
            self._since_checkpoint = 0
        super().close()

    def stats(self) -> dict[str, Any]:
        """The embedded engine's counts, with the role and the backlog of due events."""
        out = super().stats()
        out["role"] = "trainer"
        return out

    def health_details(self) -> dict[str, Any]:
        """The trainer's own view (it serves no HTTP; replicas report its heartbeat): role, published
        model, backlog of due events and learned count."""
        return {"role": "trainer", "store": "postgresql", "leader": self.leader,
                "modelId": self._log.newest_checkpoint_id(), "backlog": self._log.due_backlog(self._wait),
                "learnedEvents": self._learn_seq}


def run_trainer(url: str, *, stop: threading.Event | None = None, idle_seconds: float = 0.2,
                run_jobs: bool = True, auto_optimization: dict[str, Any] | None = None) -> None:
    """Lead when the owner lock is free, else wait as a standby; runs until ``stop`` is set.

    While leading: applies the replicas' commands, closes and learns due events, publishes models,
    writes the heartbeat, and (``run_jobs``) runs the evaluations and feature-importance jobs the
    replicas queued and the automatic-optimization schedule (``scaled_jobs.TrainerSchedule``;
    ``auto_optimization``: its options). A ``NOTIFY`` from a replica wakes it at once; otherwise it
    polls every ``idle_seconds``.
    """
    import psycopg

    stop = stop or threading.Event()
    while not stop.is_set():
        try:
            trainer = TrainerEngine(url)
        except PersonalizerError as exc:
            if exc.status != 503:
                raise
            stop.wait(0.5)  # another trainer leads (or the database is away): try again shortly
            continue
        log.info("trainer leads on %s", trainer.home)
        jobs = schedule = None
        try:
            with psycopg.connect(url, autocommit=True) as wake:
                wake.execute(f"LISTEN {WORK_CHANNEL}")
                if run_jobs:
                    from .scaled_jobs import TrainerJobs, TrainerSchedule

                    jobs = TrainerJobs(trainer)
                    schedule = TrainerSchedule(url, **(auto_optimization or {}))
                jobs_due = 0.0
                while not stop.is_set():
                    trainer.apply_commands()
                    closed = trainer.step()
                    trainer.beat()
                    if jobs is not None and time.monotonic() >= jobs_due:
                        jobs.sync()
                        jobs_due = time.monotonic() + 1.0
                    if closed == 0:
                        notes = list(wake.notifies(timeout=idle_seconds, stop_after=1))
                        if jobs is not None and any(n.payload == "job" for n in notes):
                            jobs_due = 0.0
        except (PersonalizerError, psycopg.Error) as exc:
            why = exc.message if isinstance(exc, PersonalizerError) else str(exc).splitlines()[0] if str(exc) else exc
            log.warning("trainer stops leading: %s", why)
            # Its memory may be ahead of what committed (a command rolled back): write no checkpoint from
            # it; the next leader replays the log, which is the truth.
            trainer._since_checkpoint = 0
        finally:
            if schedule is not None:
                with contextlib.suppress(Exception):
                    schedule.close()
            if jobs is not None:
                with contextlib.suppress(Exception):
                    jobs.close()
            with contextlib.suppress(Exception):
                trainer.close()
        time.sleep(0.1)
