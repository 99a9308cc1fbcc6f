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

Both reuse the embedded engine (``LocalPersonalizer``): validation, encoding, prediction, learning
and replay are its own code; only where state lives differs (the database, not memory).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from datetime import UTC, datetime
from typing import Any

from .contract import PersonalizerError, parse_duration
from .engine import RETENTION_INTERVAL, LocalPersonalizer, _unknown_event
from .pgstore import MODELS_CHANNEL, PgEventLog
from .store import StoredEvent
from .vw import workspace as vw_workspace

log = logging.getLogger(__name__)

#: Seconds between a replica's checks for a new model when no NOTIFY arrives (the fallback).
MODEL_POLL_SECONDS = 2.0
#: Shortest model export interval honoured.
MIN_EXPORT_SECONDS = 1.0


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


class ReplicaEngine(_SharedLog, LocalPersonalizer):
    """A stateless API replica on a shared PostgreSQL log (``serve --role replica``)."""

    def __init__(self, url: str) -> None:
        store = PgEventLog(url, own=False)
        self._model_id: int | None = None
        self.model_error: str | None = None  # why the newest published model did not load (the old one serves)
        self._stop = threading.Event()
        super().__init__(store, clock=store.db_now)
        self._watcher = threading.Thread(target=self._watch_models, name="model-watcher", daemon=True)
        self._watcher.start()

    # -- model: the newest published one, swapped in without blocking ranks for the load
    def _restore(self) -> None:
        self._vw = self._workspace()
        self._learn_seq, self._created, self._modified = 0, self._clock(), None
        self._since_checkpoint, self.replayed_on_start = 0, 0
        self._load_published()

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
        except Exception as exc:  # keep serving the model that works, and say so in /health
            self.model_error = f"model {cp.id} did not load: {str(exc).splitlines()[0] if str(exc) else exc}"
            log.warning("%s; the previous model keeps serving", self.model_error)
            return False
        settings = self._log.get_setting("service")
        with self._lock:
            old, self._vw = self._vw, vw
            self._model_id = self._log.current_model_id = cp.id
            self._learn_seq, self._modified = cp.learn_seq, cp.created
            if settings is not None:
                self._apply_settings(settings)
            self.model_error = None
        old.finish()
        return True

    def _apply_settings(self, stored: dict[str, Any]) -> None:
        from .contract import ServiceConfiguration

        self._config = ServiceConfiguration.model_validate(stored)
        self._wait = self._config.reward_wait_seconds

    def _watch_models(self) -> None:
        """LISTEN for published models, with a poll as the fallback (a lost connection, a missed notify)."""
        import psycopg

        while not self._stop.is_set():
            try:
                with psycopg.connect(self._log.url, autocommit=True) as conn:
                    conn.execute(f"LISTEN {MODELS_CHANNEL}")
                    while not self._stop.is_set():
                        for _ in conn.notifies(timeout=MODEL_POLL_SECONDS, stop_after=1):
                            pass
                        self._refresh()
            except Exception as exc:  # the database went away: poll again after a pause
                log.warning("model watcher: %s", exc)
                self._stop.wait(MODEL_POLL_SECONDS)

    def _refresh(self) -> None:
        with contextlib.suppress(PersonalizerError):
            if not self._load_published():
                settings = self._log.get_setting("service")
                if settings is not None and settings != self._config.model_dump(by_alias=True):
                    with self._lock:
                        self._apply_settings(settings)

    def health_details(self) -> dict[str, Any]:
        """What ``/health`` adds for a replica: the role, the store, the model it ranks with and its age."""
        return {"role": "replica", "store": self._log.home, "modelId": self._model_id,
                "modelAgeSeconds": None if self._modified is None else round(time.time() - self._modified, 3),
                "modelError": self.model_error}

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

    # -- what a replica does not do yet (issue 10, later phases): the trainer owns the model
    def _not_on_replica(self, what: str) -> PersonalizerError:
        return PersonalizerError(
            "NotSupportedOnReplica", f"{what} is not available on a scaled-out replica yet; stop the deployment "
            "and run it with one 'serve --store URL' (role all)", 501)

    def enforce_retention(self, limit: int = 1000) -> int:
        """The trainer enforces ``logRetentionDays``; a replica deletes nothing."""
        return 0

    def update_policy(self, *_: Any, **__: Any) -> dict[str, Any]:
        raise self._not_on_replica("changing the learning policy")

    def reset_policy(self, *_: Any, **__: Any) -> dict[str, Any]:
        raise self._not_on_replica("resetting the learning policy")

    def rollback_policy(self, *_: Any, **__: Any) -> dict[str, Any]:
        raise self._not_on_replica("rolling back the learning policy")

    def import_model(self, model: bytes) -> None:
        raise self._not_on_replica("importing a model")

    def reset_model(self) -> None:
        raise self._not_on_replica("resetting the model")

    def delete_logs(self) -> int:
        raise self._not_on_replica("deleting the log")

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


def run_trainer(url: str, *, stop: threading.Event | None = None, idle_seconds: float = 0.2) -> None:
    """Lead when the owner lock is free, else wait as a standby; runs until ``stop`` is set."""
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
        try:
            while not stop.is_set():
                if trainer.step() == 0:
                    stop.wait(idle_seconds)
        except PersonalizerError as exc:
            log.warning("trainer stops leading: %s", exc.message)
        finally:
            with contextlib.suppress(Exception):
                trainer.close()
        time.sleep(0.1)
