"""Feature importances: what the model would lose without each feature, measured on the logged events.

Method (drop-column ablation with offline evaluation). For every feature of the
logged requests (a context, action or slot key such as ``time`` or ``category``,
all its values together, and the ids the encoder adds to actions and slots), the
policy the engine runs now is replayed over the log twice in fresh workspaces:
once with every feature and once with that feature masked out of every example
(its tokens removed from the VW lines, as ``--ignore`` would do for one feature).
Both replays are progressive validation, so each event is judged by a model that
has not seen it. The feature's importance is the drop in the estimated reward
per event, paired over the same events:

    drop = mean over events of  sum over slots (pi_all - pi_without) / p * r

(IPS with each slot's logged probability ``p``, the same terms offline evaluation
uses per slot), with a Gaussian confidence interval from the paired differences.
Normalized scores are ``max(drop, 0)`` over their sum: a feature whose removal
costs nothing, or helps, scores 0.

Why this method: it answers the product question ("what happens to the reward if
I drop this feature?") in the reward's own units, with an interval, for any
policy the engine can run; a feature that is pure noise costs nothing when it is
dropped. Its known limit: features that carry the same information share none of
it (in a fixed catalog an action's ``category`` says nothing its id does not, so
both can score near 0 while dropping both would hurt). The README says so.

``FeatureImportances`` runs these jobs on a background thread with progress, and
keeps them behind a small ``JobStore`` (a JSON file now; any store with ``load``,
``put`` and ``delete`` of plain dicts will do, such as a table in the event log).
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from statistics import NormalDist
from typing import Any, Protocol

import numpy as np

from .contract import FeatureImportanceContract, PersonalizerError, parse
from .evaluation import EvaluationCancelled, LoggedData, LoggedEvent, _engine_events, prepare, replay
from .interface import JobRecords, LocalEngine
from .jobs import PREPARED, JobRunner, has_logged_events, stored_jobs
from .protocol import iso_utc
from .vw import encoding

log = logging.getLogger(__name__)

__all__ = ["FeatureImportances", "ImportanceResult", "JobStore", "EngineJobStore", "FeatureScore",
           "feature_importances", "logged_features"]

_ROLE_OF_NAMESPACE = {encoding.CONTEXT_NAMESPACE: "context", encoding.ACTION_NAMESPACE: "action",
                      encoding.SLOT_NAMESPACE: "slot"}
_NAMESPACE_OF_ROLE = {role: ns for ns, role in _ROLE_OF_NAMESPACE.items()}
_ID_OK = re.compile(r"^[^\x00-\x1f/\\?#]{1,256}$")
_ARRAY_INDEX = re.compile(r"\[[0-9]+\]$")
_PERCENT = re.compile(r"%([0-9A-F]{2})")


# ================================================================ features of the log

def _token_name(token: str) -> str:
    """The feature key of one VW token (``time=evening`` -> ``time``; ``price:20`` -> ``price``), escaped."""
    name, colon, _ = token.partition(":")
    if colon:
        return _ARRAY_INDEX.sub("", name)
    return token.partition("=")[0]


def _unescape(text: str) -> str:
    return _PERCENT.sub(lambda m: chr(int(m.group(1), 16)), text)


def _namespace_tokens(line: str) -> tuple[str, list[str]]:
    at = line.find("|")
    if at < 0:
        return "", []
    return line[at + 1:at + 2], line[at + 2:].split()


def logged_features(data: LoggedData) -> list[tuple[str, str]]:
    """Every feature key ``(role, escaped name)`` in the prepared log, in order of first appearance."""
    seen: dict[tuple[str, str], None] = {}
    heads_done: set[int] = set()
    for head, bodies, _ in data.encoded:
        if id(head) not in heads_done:  # events of one request share their head lines
            heads_done.add(id(head))
            lines = [*head, *bodies]
        else:
            lines = list(bodies)
        for line in lines:
            ns, tokens = _namespace_tokens(line)
            role = _ROLE_OF_NAMESPACE.get(ns)
            if role is None:
                continue
            for token in tokens:
                seen.setdefault((role, _token_name(token)), None)
    return list(seen)


class _Mask:
    """Removes one feature's tokens from VW lines (memoized: logs repeat their lines)."""

    def __init__(self, role: str, name: str) -> None:
        self.namespace = _NAMESPACE_OF_ROLE[role]
        self.name = name
        self._memo: dict[str, str] = {}

    def line(self, line: str) -> str:
        at = line.find("|")
        if at < 0 or line[at + 1:at + 2] != self.namespace:
            return line
        hit = self._memo.get(line)
        if hit is not None:
            return hit
        tokens = line[at + 2:].split()
        kept = [t for t in tokens if _token_name(t) != self.name]
        out = line[:at + 2] + (" " + " ".join(kept) if kept else "")
        if len(self._memo) < 20_000 and not line.startswith("ccb slot"):  # slot lines carry per-event tags
            self._memo[line] = out
        return out

    def data(self, data: LoggedData) -> LoggedData:
        """The prepared log with the feature masked out of every example (everything else shared)."""
        heads: dict[int, list[str]] = {}
        encoded = []
        for head, bodies, allowed in data.encoded:
            masked_head = heads.get(id(head))
            if masked_head is None:
                masked_head = heads[id(head)] = [self.line(x) for x in head]
            encoded.append((masked_head, [self.line(b) for b in bodies], allowed))
        examples = ["\n".join(self.line(x) for x in ex.split("\n")) for ex in data.examples]
        return replace(data, examples=examples, encoded=encoded)


# ================================================================ the computation

@dataclass(frozen=True)
class FeatureScore:
    """One feature's importance: normalized score, reward drop without it, and the drop's interval."""

    namespace: str              # context | action | slot
    feature_name: str           # key path as sent (``user.geo.city``); ``_id`` for the ids the encoder adds
    score: float                # max(drop, 0) / sum of those; 0..1, the scores sum to 1 (or are all 0)
    drop: float                 # estimated reward per event lost without the feature
    interval: tuple[float, float]

    def to_dict(self) -> dict[str, Any]:
        """The contract's ``FeatureScore`` plus the drop and its interval (extensions)."""
        return {"namespace": self.namespace, "featureName": self.feature_name, "score": self.score,
                "rewardDrop": self.drop, "rewardDropInterval": [self.interval[0], self.interval[1]]}


@dataclass
class ImportanceResult:
    """Scores sorted by importance, with what the full policy earned in the same replay."""

    scores: list[FeatureScore]
    events: int
    arguments: str
    reward: float               # estimated reward per event of the policy with every feature
    confidence: float
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON (persisted and served)."""
        return {"featureScores": [s.to_dict() for s in self.scores], "events": self.events,
                "arguments": self.arguments, "estimatedReward": self.reward, "confidence": self.confidence,
                "seconds": self.seconds}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ImportanceResult:
        """Back from ``to_dict``."""
        scores = [FeatureScore(s["namespace"], s["featureName"], s["score"], s["rewardDrop"],
                               tuple(s["rewardDropInterval"])) for s in d["featureScores"]]
        return cls(scores, d["events"], d["arguments"], d["estimatedReward"], d["confidence"], d.get("seconds", 0.0))

    def by_namespace(self) -> dict[str, list[FeatureScore]]:
        """Scores split into context, action and slot features (each sorted, most important first)."""
        out: dict[str, list[FeatureScore]] = {"context": [], "action": [], "slot": []}
        for s in self.scores:
            out.setdefault(s.namespace, []).append(s)
        return out


def _per_event(data: LoggedData, pi: np.ndarray, centre: np.ndarray | None = None) -> np.ndarray:
    """Per event: the sum over its slots of the IPS terms pi / p * (r - centre)."""
    reward = data.reward if centre is None else data.reward - centre
    terms = pi / data.probability * reward
    return np.bincount(data.event_of_row, weights=terms, minlength=data.events)


def _slot_means(data: LoggedData) -> np.ndarray:
    """Per row: the mean logged reward of its slot (the control variate of the paired differences)."""
    sums = np.bincount(data.slot, weights=data.reward, minlength=len(data.slot_ids))
    counts = np.bincount(data.slot, minlength=len(data.slot_ids))
    return (sums / np.maximum(counts, 1))[data.slot]


def feature_importances(
    events: Iterable[LoggedEvent] | LoggedData,
    arguments: str,
    *,
    features: Sequence[tuple[str, str]] | None = None,
    confidence: float = 0.95,
    progress: Callable[[int, int], None] | None = None,
    cancel: Callable[[], bool] | None = None,
) -> ImportanceResult:
    """Ablation importances of the logged features for the policy ``arguments`` (see the module docstring).

    ``features``: ``(role, escaped name)`` keys to score (default: every feature in the log).
    ``progress(done, total)`` counts replayed events over all replays; ``cancel()`` True aborts
    (EvaluationCancelled). Raises NoLogsExistInDateRange when there is nothing to replay.
    """
    started = time.perf_counter()
    data = events if isinstance(events, LoggedData) else prepare(events)
    if data.events == 0:
        raise PersonalizerError("NoLogsExistInDateRange", "no rewarded events in the date range", 400)
    keys = list(features) if features is not None else logged_features(data)
    total = data.events * (len(keys) + 1)

    def step(offset: int) -> Callable[[int, int], None]:
        def report(done: int, _n: int) -> None:
            if progress is not None:
                progress(offset + done, total)
        return report

    full_pi, _ = replay(data, arguments, progress=step(0), cancel=cancel)
    # Both policies' probabilities over a slot's open actions sum to 1, so E[(pi - pi') / p] = 0 under
    # the logging policy: centring the reward changes no expectation and takes out much of the variance.
    centre = _slot_means(data)
    full = _per_event(data, full_pi, centre)
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    n = data.events
    raw: list[tuple[str, str, float, tuple[float, float]]] = []
    for j, (role, name) in enumerate(keys):
        masked = _Mask(role, name).data(data)
        pi, _ = replay(masked, arguments, progress=step((j + 1) * n), cancel=cancel)
        diff = full - _per_event(data, pi, centre)
        drop = float(diff.mean())
        half = z * float(diff.std(ddof=1)) / math.sqrt(n) if n > 1 else math.inf
        raw.append((role, _unescape(name), drop, (drop - half, drop + half)))
    positive = sum(max(d, 0.0) for _, _, d, _ in raw)
    scores = [FeatureScore(role, name, (max(d, 0.0) / positive) if positive > 0 else 0.0, d, iv)
              for role, name, d, iv in raw]
    scores.sort(key=lambda s: (-s.score, -s.drop, s.namespace, s.feature_name))
    reward = float(_per_event(data, full_pi).mean())
    return ImportanceResult(scores, n, arguments, reward, confidence, time.perf_counter() - started)


# ================================================================ jobs

class JobStore(Protocol):
    """Where feature-importance jobs are kept: plain JSON-able dicts keyed by ``id``."""

    def load(self) -> list[dict[str, Any]]:
        """Every stored job."""
        ...

    def put(self, job: dict[str, Any]) -> None:
        """Insert or replace one job (by its ``id``)."""
        ...

    def delete(self, job_id: str) -> None:
        """Forget one job (no error if absent)."""
        ...


class EngineJobStore:
    """A ``JobStore`` in the engine's own database (one row per job), beside the log and the evaluations."""

    KIND = "featureImportance"

    def __init__(self, engine: JobRecords) -> None:
        self._engine = engine

    def load(self) -> list[dict[str, Any]]:
        def set_aside(job_id: str, _exc: Exception) -> None:  # one unreadable row never hides the others
            log.warning("feature importance '%s' is unreadable in the store; left out", job_id)

        return list(stored_jobs(self._engine, self.KIND, lambda _id, text: json.loads(text), set_aside))

    def put(self, job: dict[str, Any]) -> None:
        self._engine.save_record(self.KIND, job["id"], float(job["created"]), json.dumps(job))

    def delete(self, job_id: str) -> None:
        self._engine.delete_record(self.KIND, job_id)


_STATUS = {"pending": "Running", "running": "Running", "succeeded": "Succeeded", "failed": "Failed",
           "canceled": "Canceled"}


@dataclass
class _Job:
    id: str
    name: str
    start: float
    end: float
    created: float
    arguments: str
    status: str = "pending"
    message: str = ""
    progress: float = 0.0
    result: ImportanceResult | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)

    def to_store(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "start": self.start, "end": self.end, "created": self.created,
                "arguments": self.arguments, "status": self.status, "message": self.message,
                "result": self.result.to_dict() if self.result else None, "progress": round(self.progress, 4)}


class FeatureImportances:
    """Feature-importance jobs over an engine's log, run one at a time on a background thread.

    Thread-safe. ``store`` keeps the jobs (default: the engine's database, ``EngineJobStore``;
    none with ``persist=False``); jobs interrupted by a restart run again. ``events``
    overrides where events come from: ``events(start, end) -> iterable``.
    """

    def __init__(self, engine: LocalEngine, *, store: JobStore | None = None, persist: bool = True,
                 events: Callable[[float, float], Iterable[LoggedEvent]] | None = None,
                 clock: Callable[[], float] | None = None) -> None:
        self._engine = engine
        self._events = events or (lambda start, end: _engine_events(engine, start, end))
        self._clock = clock or time.time
        self._lock = threading.RLock()
        self._jobs: dict[str, _Job] = {}
        self._runner: JobRunner[_Job] = JobRunner("personalizer-feature-importances", self._lock, self._jobs,
                                                  self._work, self._persist, EvaluationCancelled)
        if store is None and persist:
            store = EngineJobStore(engine)
        self._store = store
        self._load()

    # ---------------------------------------------------------------- API
    def create(self, job_id: str, body: Any) -> dict[str, Any]:
        """Validate a ``FeatureImportanceContract`` body and queue the job; returns it (status Running)."""
        if not isinstance(job_id, str) or not _ID_OK.match(job_id):
            raise PersonalizerError("InvalidContract", "feature importance id must be 1..256 characters "
                                                       "without '/', '\\', '?', '#' or controls")
        contract = parse(FeatureImportanceContract, body, "InvalidContract")
        t0, t1 = _epoch(contract.start_time), _epoch(contract.end_time)
        if t1 <= t0:
            raise PersonalizerError("InvalidContract", "endTime must be after startTime")
        with self._lock:
            if job_id in self._jobs:
                raise PersonalizerError("FeatureImportanceAlreadyExists",
                                        f"feature importance '{job_id}' already exists", 409)
        if not self._has_events(t0, t1):
            raise PersonalizerError("NoLogsExistInDateRange",
                                    f"no rewarded events between {iso_utc(t0)} and {iso_utc(t1)}", 400)
        arguments = self._engine.get_policy()["arguments"]
        with self._lock:
            if job_id in self._jobs:
                raise PersonalizerError("FeatureImportanceAlreadyExists",
                                        f"feature importance '{job_id}' already exists", 409)
            job = _Job(job_id, contract.name, t0, t1, self._clock(), arguments)
            self._jobs[job_id] = job
            self._persist(job)
            self._submit(job_id)
            return self._render(job)

    def get(self, job_id: str) -> dict[str, Any]:
        """The job as the contract's ``FeatureImportance`` (featureScores once it succeeded)."""
        with self._lock:
            return self._render(self._get(job_id))

    def list(self) -> list[dict[str, Any]]:
        """Every job as ``FeatureImportanceDetails`` (no scores), oldest first."""
        with self._lock:
            return [self._details(j) for j in sorted(self._jobs.values(), key=lambda j: j.created)]

    def delete(self, job_id: str) -> None:
        """Delete a job; a running one is cancelled."""
        with self._lock:
            job = self._get(job_id)
            self._runner.cancel(job)
            del self._jobs[job_id]
            if self._store is not None:
                self._store.delete(job_id)

    def result(self, job_id: str) -> ImportanceResult | None:
        """The Python result (None until the job succeeded)."""
        with self._lock:
            return self._get(job_id).result

    def wait(self, job_id: str, timeout: float | None = None) -> dict[str, Any]:
        """Block until the job finished (or ``timeout``); returns it."""
        with self._lock:
            job = self._get(job_id)
        self._runner.wait(job, timeout)
        return self.get(job_id)

    def close(self) -> None:
        """Stop the worker; a running job is cancelled and runs again on the next start."""
        self._runner.close()

    # The client's names for the same calls, so code can drive either backend alike.
    def create_feature_importance(self, feature_importance_id: str, contract: dict[str, Any]) -> dict[str, Any]:
        """``create`` under the client's name."""
        return self.create(feature_importance_id, contract)

    def get_feature_importance(self, feature_importance_id: str) -> dict[str, Any]:
        """``get`` under the client's name."""
        return self.get(feature_importance_id)

    def list_feature_importances(self) -> list[dict[str, Any]]:
        """``list`` under the client's name."""
        return self.list()

    def delete_feature_importance(self, feature_importance_id: str) -> None:
        """``delete`` under the client's name."""
        self.delete(feature_importance_id)

    def __enter__(self) -> FeatureImportances:
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()

    # ---------------------------------------------------------------- worker
    def _get(self, job_id: str) -> _Job:
        job = self._jobs.get(job_id)
        if job is None:
            raise PersonalizerError("FeatureImportanceNotFound", f"no feature importance '{job_id}'", 404)
        return job

    def _has_events(self, start: float, end: float) -> bool:
        return has_logged_events(self._events(start, end))

    def _submit(self, job_id: str) -> None:
        self._runner.submit(job_id)

    def _work(self, job: _Job) -> None:
        data = prepare(self._events(job.start, job.end))
        job.progress = PREPARED
        job.result = feature_importances(data, job.arguments, progress=self._runner.progress(job),
                                         cancel=job.cancel.is_set)

    def _persist(self, job: _Job) -> None:
        if self._store is not None:
            self._store.put(job.to_store())

    def _load(self) -> None:
        if self._store is None:
            return
        for item in self._store.load():
            job = _job_from_item(item)
            if job is None:
                continue  # a record this version cannot read: skip it rather than refuse to start
            if job.status in ("pending", "running"):
                job.status, job.progress = "pending", 0.0  # interrupted by a restart: run again
                self._jobs[job.id] = job
                self._submit(job.id)
            else:
                job.progress = 1.0
                job.done.set()
                self._jobs[job.id] = job

    # ---------------------------------------------------------------- rendering
    def _details(self, job: _Job) -> dict[str, Any]:
        return {"id": job.id, "name": job.name, "startTime": iso_utc(job.start), "endTime": iso_utc(job.end),
                "creationTime": iso_utc(job.created), "status": _STATUS[job.status],
                "progress": round(job.progress, 4)}

    def _render(self, job: _Job) -> dict[str, Any]:
        out = self._details(job)
        res = job.result
        out["featureScores"] = [s.to_dict() for s in res.scores] if res else []
        out["description"] = job.message or _describe(job)
        if res is not None:  # extensions: what was replayed, and what the full policy earned
            out.update({"events": res.events, "arguments": res.arguments, "estimatedReward": res.reward,
                        "confidence": res.confidence})
        return out


def _job_from_item(item: dict[str, Any]) -> _Job | None:
    """A stored job (``_Job.to_store``) back as a job, or None when this version cannot read it."""
    try:
        job = _Job(item["id"], item["name"], item["start"], item["end"], item["created"],
                   item["arguments"], item["status"], item.get("message", ""))
        if item.get("result"):
            job.result = ImportanceResult.from_dict(item["result"])
        job.progress = float(item.get("progress", 0.0))
    except (KeyError, TypeError, ValueError):
        return None
    if job.status not in ("pending", "running"):
        job.progress = 1.0
        job.done.set()
    return job


def _epoch(value: datetime) -> float:
    return (value if value.tzinfo is not None else value.replace(tzinfo=UTC)).timestamp()


def _describe(job: _Job) -> str:
    if job.result is None:
        return ""
    res = job.result
    return (f"{res.events} events replayed with '{res.arguments}' once with every feature and once without each; "
            f"score = the share of the estimated reward lost without the feature ({res.confidence:.0%} intervals "
            "on the drop). Features that duplicate each other share none of it.")
