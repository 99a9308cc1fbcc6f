"""Evaluations and feature importances in a scaled-out deployment: created on any replica, run by the trainer.

A replica's managers (``ReplicaEvaluations``, ``ReplicaFeatureImportances``) validate a new job as the
embedded ones do, insert its pending record into the shared store (insert-only: two replicas cannot
both create one id), ``NOTIFY`` the trainer and answer at once; every read re-reads the store, so any
replica shows any job, and a delete from any replica removes the row. They never run a job.

The leading trainer's managers (``TrainerEvaluations``, ``TrainerFeatureImportances``, held by
``TrainerJobs``) pick up pending records (woken by the ``NOTIFY``, and by a poll every second),
run them one at a time on the job runner reading the shared log, and write status, progress and
result back with update-only writes (the trainer engine's ``save_record``): a job deleted through a
replica meanwhile is cancelled and never written back. A job half-run when the trainer dies is still
``pending``/``running`` in the store, and the next leader runs it again from the start (as a restart
of the embedded server does).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, MutableMapping
from typing import Any

from .contract import PersonalizerError
from .evaluation import Evaluations, _parse_record, _Record, _record_item
from .importance import FeatureImportances, _Job, _job_from_item
from .jobs import stored_jobs

log = logging.getLogger(__name__)

__all__ = ["ReplicaEvaluations", "ReplicaFeatureImportances", "TrainerEvaluations", "TrainerFeatureImportances",
           "TrainerJobs", "TrainerSchedule"]

#: Seconds between a replica's re-reads while a caller waits for a job (``wait``).
WAIT_POLL_SECONDS = 0.2
#: The trainer keeps the replay models of this many of the newest evaluations, for applyFromEvaluation.
KEPT_MODEL_EVALUATIONS = 8


def _wait_until_done(read: Callable[[], Any], timeout: float | None, stop: threading.Event | None = None) -> None:
    """Poll ``read()`` (a job re-read from the store) until its ``done`` is set, ``timeout`` passes or
    ``stop`` is set."""
    deadline = None if timeout is None else time.monotonic() + timeout
    stop = stop or threading.Event()
    while not read().done.is_set():
        if deadline is not None and time.monotonic() >= deadline:
            return
        if stop.wait(WAIT_POLL_SECONDS):
            return


# ================================================================ replicas: create and read, never run

class ReplicaEvaluations(Evaluations):
    """Evaluations on a replica: validated and stored here, run by the trainer, read from the store.

    ``runs_schedule``: this manager may create automatic-optimization runs (only ``TrainerSchedule``'s).
    """

    def __init__(self, engine: Any, *, runs_schedule: bool = False) -> None:
        self.runs_schedule = runs_schedule
        self._closed = threading.Event()  # ends a ``wait`` (the trainer stopped leading, the app stops)
        super().__init__(engine)

    def _load(self) -> None:
        self._sync_all()

    def _sync_all(self) -> None:
        """Replace what this manager holds with the store's records."""
        fresh = {rec.id: rec for rec in stored_jobs(self._engine, "evaluation", _parse_record, self._set_aside)}
        with self._lock:
            self._records.clear()
            self._records.update(fresh)

    def _sync_one(self, evaluation_id: str) -> None:
        """Re-read one record (gone from the store: gone here)."""
        text = self._engine.record("evaluation", evaluation_id)  # type: ignore[attr-defined]
        with self._lock:
            self._records.pop(evaluation_id, None)
            if text is None:
                return
            try:
                self._records[evaluation_id] = _parse_record(evaluation_id, text)
            except Exception as exc:  # shown as unreadable, still deletable by id
                self._set_aside(evaluation_id, exc)

    def create(self, evaluation_id: str | None, name: str, start: Any, end: Any, *args: Any,
               **kwargs: Any) -> dict[str, Any]:
        """Validate and store a pending evaluation for the trainer; returns it (status pending).

        Automatic optimization (``evaluation_type="Auto"``) is refused here: it runs once per
        deployment, in the leading trainer (``TrainerSchedule``), never on the N replicas.
        """
        if kwargs.get("evaluation_type") == "Auto" and not self.runs_schedule:
            raise PersonalizerError("NotSupportedOnReplica", "automatic optimization runs in the leading trainer "
                                    "of a scaled-out deployment, not on a replica", 501)
        if isinstance(evaluation_id, str):
            self._sync_one(evaluation_id)
        return super().create(evaluation_id, name, start, end, *args, **kwargs)

    def get(self, evaluation_id: str, **kwargs: Any) -> dict[str, Any]:
        """The evaluation as stored now (the trainer updates status, progress and results)."""
        self._sync_one(evaluation_id)
        return super().get(evaluation_id, **kwargs)

    def list(self, **kwargs: Any) -> list[dict[str, Any]]:
        """Every stored evaluation, oldest first."""
        self._sync_all()
        return super().list(**kwargs)

    def delete(self, evaluation_id: str) -> None:
        """Delete the record; the trainer cancels it if it runs it."""
        self._sync_one(evaluation_id)
        super().delete(evaluation_id)
        self._engine.notify_jobs()  # type: ignore[attr-defined]

    def result(self, evaluation_id: str) -> Any:
        """The result object once the trainer stored it (None before)."""
        self._sync_one(evaluation_id)
        return super().result(evaluation_id)

    def wait(self, evaluation_id: str, timeout: float | None = None) -> dict[str, Any]:
        """Block until the trainer finished it (or ``timeout``); returns it. 503 once this manager is closed
        (for the schedule: this trainer stopped leading; the next leader's schedule goes on)."""
        def read() -> _Record:
            self._sync_one(evaluation_id)
            with self._lock:
                return self._get(evaluation_id)
        _wait_until_done(read, timeout, self._closed)
        if self._closed.is_set():
            raise PersonalizerError("ServiceUnavailable", "stopped waiting for the evaluation: closed", 503)
        return self.get(evaluation_id)

    def close(self) -> None:
        """End any ``wait`` and stop the (idle) runner."""
        self._closed.set()
        super().close()

    def policy(self, evaluation_id: str, policy_name: str) -> dict[str, str]:
        """A policy of a finished evaluation (re-read from the store)."""
        self._sync_one(evaluation_id)
        return super().policy(evaluation_id, policy_name)

    def apply(self, evaluation_id: str, policy_name: str | None = None, **kwargs: Any) -> dict[str, Any]:
        """applyFromEvaluation through the trainer (a policy command naming the evaluation). The replay's
        model is the trainer's: the trainer that ran the evaluation installs it with the policy (one
        transaction); a trainer that did not (a standby that took over since) starts a fresh model."""
        self._sync_one(evaluation_id)
        return super().apply(evaluation_id, policy_name, **kwargs)

    def _submit(self, evaluation_id: str) -> None:
        self._engine.notify_jobs()  # type: ignore[attr-defined]

    def _save(self, rec: _Record) -> None:
        """A new (pending) record is inserted only if its id is free; later changes update it."""
        item = json.dumps(_record_item(rec))
        if rec.status == "pending" and rec.result is None:
            if not self._engine.add_record("evaluation", rec.id, rec.created, item):  # type: ignore[attr-defined]
                raise PersonalizerError("EvaluationAlreadyExists", f"evaluation '{rec.id}' already exists", 409)
        else:
            self._engine.save_record("evaluation", rec.id, rec.created, item)


class ReplicaFeatureImportances(FeatureImportances):
    """Feature-importance jobs on a replica: validated and stored here, run by the trainer."""

    KIND = "featureImportance"

    def _load(self) -> None:
        self._sync_all()

    def _sync_all(self) -> None:
        fresh: dict[str, _Job] = {}
        for job_id, text in self._engine.records(self.KIND):
            job = _parse_job(job_id, text)
            if job is not None:
                fresh[job_id] = job
        with self._lock:
            self._jobs.clear()
            self._jobs.update(fresh)

    def _sync_one(self, job_id: str) -> None:
        text = self._engine.record(self.KIND, job_id)  # type: ignore[attr-defined]
        job = None if text is None else _parse_job(job_id, text)
        with self._lock:
            self._jobs.pop(job_id, None)
            if job is not None:
                self._jobs[job_id] = job

    def create(self, job_id: str, body: Any) -> dict[str, Any]:
        """Validate and store a pending job for the trainer; returns it (status Running)."""
        if isinstance(job_id, str):
            self._sync_one(job_id)
        try:
            return super().create(job_id, body)
        except PersonalizerError:
            if isinstance(job_id, str):
                self._sync_one(job_id)  # forget a job whose record was not inserted
            raise

    def get(self, job_id: str) -> dict[str, Any]:
        """The job as stored now."""
        self._sync_one(job_id)
        return super().get(job_id)

    def list(self) -> list[dict[str, Any]]:
        """Every stored job, oldest first."""
        self._sync_all()
        return super().list()

    def delete(self, job_id: str) -> None:
        """Delete the record; the trainer cancels it if it runs it."""
        self._sync_one(job_id)
        super().delete(job_id)
        self._engine.notify_jobs()  # type: ignore[attr-defined]

    def result(self, job_id: str) -> Any:
        """The result once the trainer stored it (None before)."""
        self._sync_one(job_id)
        return super().result(job_id)

    def wait(self, job_id: str, timeout: float | None = None) -> dict[str, Any]:
        """Block until the trainer finished it (or ``timeout``); returns it."""
        def read() -> _Job:
            self._sync_one(job_id)
            with self._lock:
                return self._get(job_id)
        _wait_until_done(read, timeout)
        return self.get(job_id)

    def _submit(self, job_id: str) -> None:
        self._engine.notify_jobs()  # type: ignore[attr-defined]

    def _persist(self, job: _Job) -> None:
        item = json.dumps(job.to_store())
        if job.status == "pending" and job.result is None:
            if not self._engine.add_record(self.KIND, job.id, job.created, item):  # type: ignore[attr-defined]
                raise PersonalizerError("FeatureImportanceAlreadyExists",
                                        f"feature importance '{job.id}' already exists", 409)
        else:
            self._engine.save_record(self.KIND, job.id, job.created, item)


def _parse_job(job_id: str, text: str) -> _Job | None:
    try:
        item = json.loads(text)
    except ValueError:
        return None
    job = _job_from_item(item) if isinstance(item, dict) else None
    return job if job is not None and job.id == job_id else None


# ================================================================ the trainer: run what the replicas queued

def _adopt(held: MutableMapping[str, Any], lock: Any, ids: list[str], read: Callable[[str], Any],
           submit: Callable[[str], None]) -> None:
    """Make ``held`` follow the store: cancel and drop deleted jobs, add (and submit, if unfinished) new ones."""
    present = set(ids)
    with lock:
        for job_id in [j for j in held if j not in present]:
            held[job_id].cancel.set()
            del held[job_id]
        new = [j for j in ids if j not in held]
    for job_id in new:
        job = read(job_id)
        if job is None:
            continue
        with lock:
            if job_id in held:
                continue
            held[job_id] = job
            if job.result is None and job.status in ("pending", "running", "notSubmitted"):
                job.status, job.progress = "pending", 0.0
                submit(job_id)


class TrainerEvaluations(Evaluations):
    """The trainer's evaluations: run the pending records replicas stored; write back only existing rows."""

    def sync(self) -> None:
        """Follow the store (new pending records run, deleted ones are cancelled); save running progress."""
        def read(evaluation_id: str) -> _Record | None:
            text = self._engine.record("evaluation", evaluation_id)  # type: ignore[attr-defined]
            try:
                return None if text is None else _parse_record(evaluation_id, text)
            except Exception as exc:
                self._set_aside(evaluation_id, exc)
                return None
        _adopt(self._records, self._lock, self._engine.record_ids("evaluation"),  # type: ignore[attr-defined]
               read, self._submit)
        self._drop_models()  # of evaluations deleted through a replica
        with self._lock:
            running = [r for r in self._records.values() if r.status == "running"]
        for rec in running:
            self._save_quietly(rec)

    def replay_model(self, evaluation_id: str, policy_name: str) -> bytes | None:
        """The model the replay of one policy trained (None once dropped, or never run here): what
        applyFromEvaluation through a replica starts from (``TrainerEngine.replay_models``)."""
        with self._lock:
            return self._models.get((evaluation_id, policy_name))

    def _work(self, rec: _Record) -> None:
        self._save_quietly(rec)  # "running" shows on every replica
        super()._work(rec)
        self._drop_models()

    def _drop_models(self) -> None:
        """Keep the replay models of the newest ``KEPT_MODEL_EVALUATIONS`` evaluations still in the store
        (the embedded engine keeps them until deleted; a trainer runs for months)."""
        with self._lock:
            held = [e for e in dict.fromkeys(k[0] for k in self._models) if e in self._records]
            keep = set(held[-KEPT_MODEL_EVALUATIONS:])
            for key in [k for k in self._models if k[0] not in keep]:
                del self._models[key]


class TrainerFeatureImportances(FeatureImportances):
    """The trainer's feature-importance jobs: run the pending records replicas stored."""

    KIND = "featureImportance"

    def sync(self) -> None:
        """Follow the store, as ``TrainerEvaluations.sync``."""
        def read(job_id: str) -> _Job | None:
            text = self._engine.record(self.KIND, job_id)  # type: ignore[attr-defined]
            return None if text is None else _parse_job(job_id, text)
        _adopt(self._jobs, self._lock, self._engine.record_ids(self.KIND),  # type: ignore[attr-defined]
               read, self._submit)
        with self._lock:
            running = [j for j in self._jobs.values() if j.status == "running"]
        for job in running:
            self._save_quietly(job)

    def _save_quietly(self, job: _Job) -> None:
        try:
            self._persist(job)
        except PersonalizerError as exc:
            log.warning("feature importance %s: saving its status failed: %s", ascii(job.id), exc.message)

    def _work(self, job: _Job) -> None:
        self._save_quietly(job)
        super()._work(job)


class TrainerJobs:
    """The leading trainer's two job managers, following the shared store."""

    def __init__(self, engine: Any) -> None:
        self.evaluations = TrainerEvaluations(engine)
        engine.replay_models = self.evaluations.replay_model
        self.feature_importances = TrainerFeatureImportances(engine)

    def sync(self) -> None:
        """Pick up new jobs, cancel deleted ones, publish progress (called about every second)."""
        for manager in (self.evaluations, self.feature_importances):
            try:
                manager.sync()
            except PersonalizerError as exc:  # the store is away: the next round tries again
                log.warning("job sync failed: %s", exc.message)

    def close(self) -> None:
        """Stop the runners (a running job is cancelled and runs again under the next leader)."""
        self.evaluations.close()
        self.feature_importances.close()


# ================================================================ automatic optimization: once per deployment

class TrainerSchedule:
    """Automatic optimization of a scaled-out deployment, run by the leading trainer only.

    Every replica serves the schedule's status but none runs it (N replicas would evaluate and apply N
    times). The leader runs ``AutoOptimizer`` over a replica's view of the shared store: its evaluation
    is stored as pending and run by the leader's jobs like any other, and a chosen policy is applied as
    a replica's applyFromEvaluation is (a command the leader applies, with the replay's model).
    ``options`` are ``AutoOptimizer``'s (``min_events``, ``margin``, ``poll_seconds``, ``clock``...).
    """

    def __init__(self, url: str, **options: Any) -> None:
        from .optimization import AutoOptimizer
        from .scaled import ReplicaEngine

        self.view = ReplicaEngine(url)
        self.evaluations = ReplicaEvaluations(self.view, runs_schedule=True)
        self.optimizer = AutoOptimizer(self.view, self.evaluations, **options)
        self.optimizer.start()

    def close(self) -> None:
        """Stop the schedule (a run waiting for its evaluation gives up; the next leader's schedule goes on)."""
        self.evaluations.close()
        self.optimizer.close()
        self.view.close()
