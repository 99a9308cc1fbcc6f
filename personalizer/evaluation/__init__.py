"""Offline evaluation: what would the baseline, a random page or other learning settings have earned?

Layout: ``estimators`` (Estimate, intervals), ``lift`` (beside them), ``logged`` (LoggedData, prepare, reading the
engine's log), ``replay`` (Replayer), ``results`` (EvaluationResult, evaluate, the wire shapes),
``apprentice``, ``constants``; the evaluations manager (jobs on a background thread, kept in the engine's
database) is here, and every name callers used before the split is still importable from here.
The estimators, the policies evaluated and the multi-slot caveat are described in ``estimators``.

The evaluations manager stays in this module (~550 lines of its ~750) because callers and tests
replace ``evaluation.evaluate`` here and the manager must call the replaced function.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..contract import DEFAULT_EXPLORATION, EvaluationContract, PersonalizerError, parse
from ..interface import LocalEngine
from ..jobs import PREPARED, JobRunner, has_logged_events, stored_jobs
from ..policy_history import ChangeNote, estimate_details
from ..vw import trial
from ..vw.arguments import effective_arguments, option_value, parse_arguments
from .apprentice import (
    apprentice_metrics as apprentice_metrics,
)
from .constants import (
    _MAX_BUCKETS as _MAX_BUCKETS,
)
from .constants import (
    _MIN_PROBABILITY as _MIN_PROBABILITY,
)
from .constants import (  # re-exported: callers import them from here
    APPRENTICE_READY_MATCH_RATE as APPRENTICE_READY_MATCH_RATE,
)
from .constants import (
    BUILTIN_POLICIES as BUILTIN_POLICIES,
)
from .constants import (
    INTERVALS_MINUTES as INTERVALS_MINUTES,
)
from .constants import (
    LESS_EXPLORATION as LESS_EXPLORATION,
)
from .constants import (
    MAX_CUSTOM_POLICIES as MAX_CUSTOM_POLICIES,
)
from .constants import (
    MORE_EXPLORATION as MORE_EXPLORATION,
)
from .constants import (
    PRESET_POLICIES as PRESET_POLICIES,
)
from .constants import (
    _iso as _iso,
)
from .estimators import (
    _FIELDS as _FIELDS,
)
from .estimators import (
    _MAX_FIELDS as _MAX_FIELDS,
)
from .estimators import (
    _N as _N,
)
from .estimators import (
    _NZ as _NZ,
)
from .estimators import (
    _SD as _SD,
)
from .estimators import (
    _SD2 as _SD2,
)
from .estimators import (
    _SW as _SW,
)
from .estimators import (
    _SW2 as _SW2,
)
from .estimators import (
    _SW2R as _SW2R,
)
from .estimators import (
    _SW2R2 as _SW2R2,
)
from .estimators import (
    _SWR as _SWR,
)
from .estimators import (
    _WB as _WB,
)
from .estimators import (
    _WMAX as _WMAX,
)
from .estimators import (
    HEADLINE_INTERVAL as HEADLINE_INTERVAL,
)
from .estimators import (
    INTERVAL_KINDS as INTERVAL_KINDS,
)
from .estimators import (  # re-exported: callers import them from here
    Estimate as Estimate,
)
from .estimators import (
    _cressie_read_bound as _cressie_read_bound,
)
from .estimators import (
    _cressie_read_value as _cressie_read_value,
)
from .estimators import (
    _finite as _finite,
)
from .estimators import (
    _from_stats as _from_stats,
)
from .estimators import (
    _reward_range as _reward_range,
)
from .estimators import (
    _stats as _stats,
)
from .estimators import (
    _z as _z,
)
from .estimators import (
    estimate as estimate,
)
from .lift import (  # re-exported: callers import them from here
    Lift as Lift,
)
from .lift import (
    _lift as _lift,
)
from .lift import (
    _paired_cressie_read as _paired_cressie_read,
)
from .lift import (
    lift_over_baseline as lift_over_baseline,
)
from .logged import (
    LoggedData as LoggedData,
)
from .logged import (
    LoggedEvent as LoggedEvent,
)
from .logged import (
    _baseline_pairs as _baseline_pairs,
)
from .logged import (
    _cascade as _cascade,
)
from .logged import (
    _cascade_bound as _cascade_bound,
)
from .logged import (
    _concatenate_pairs as _concatenate_pairs,
)
from .logged import (
    _distribution_pairs as _distribution_pairs,
)
from .logged import (
    _engine_events as _engine_events,
)
from .logged import (
    _log_range as _log_range,
)
from .logged import (
    _open_actions as _open_actions,
)
from .logged import (
    _RewardModel as _RewardModel,
)
from .logged import (
    _Template as _Template,
)
from .logged import (
    _template as _template,
)
from .logged import (  # re-exported: callers import them from here
    _timestamp as _timestamp,
)
from .logged import (
    prepare as prepare,
)
from .logged import (
    recent_events as recent_events,
)
from .replay import (
    EvaluationCancelled as EvaluationCancelled,
)
from .replay import (
    ProgressFn as ProgressFn,
)
from .replay import (
    Replayer as Replayer,
)
from .replay import (
    _needs_exact as _needs_exact,
)
from .replay import (
    _prob_of as _prob_of,
)
from .replay import (
    _tick as _tick,
)
from .replay import (
    replay as replay,
)
from .results import (  # re-exported: callers import them from here
    EvaluationResult as EvaluationResult,
)
from .results import (
    PolicyEvaluation as PolicyEvaluation,
)
from .results import (
    _bucket_seconds as _bucket_seconds,
)
from .results import (
    _duration as _duration,
)
from .results import (
    _merge as _merge,
)
from .results import (
    _policy_stats as _policy_stats,
)
from .results import (
    _upgrade_stats as _upgrade_stats,
)
from .results import (
    evaluate as evaluate,
)

__all__ = [
    "APPRENTICE_READY_MATCH_RATE",
    "MAX_CUSTOM_POLICIES",
    "PRESET_POLICIES",
    "Estimate",
    "EvaluationCancelled",
    "EvaluationResult",
    "Evaluations",
    "Lift",
    "LoggedData",
    "PolicyEvaluation",
    "Replayer",
    "apprentice_metrics",
    "estimate",
    "evaluate",
    "lift_over_baseline",
    "prepare",
    "replay",
]

# ================================================================ evaluations manager

_STATUS_V1 = {"notSubmitted": "notSubmitted", "pending": "pending", "running": "pending",
              "succeeded": "completed", "failed": "failed", "optimalPolicyApplied": "optimalPolicyApplied",
              "onlinePolicyRetained": "onlinePolicyRetained"}
_STATUS_2022 = {"notSubmitted": "NotSubmitted", "pending": "Running", "running": "Running",
                "succeeded": "Succeeded", "failed": "Failed", "optimalPolicyApplied": "OptimalPolicyApplied",
                "onlinePolicyRetained": "OnlinePolicyRetained"}
API_V1 = "v1.1-preview.1"
API_2022 = "2022-09-01-preview"
_ID_OK = re.compile(r"^[^\x00-\x1f/\\?#]{1,256}$")


@dataclass
class _Record:
    id: str
    name: str
    start: float
    end: float
    policies: list[dict[str, str]]
    online_policy: dict[str, str]
    created: float
    evaluation_type: str = "Manual"
    offline_experimentation: bool = False
    status: str = "notSubmitted"
    message: str = ""
    progress: float = 0.0
    result: EvaluationResult | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)


_evaluations_log = logging.getLogger(__name__)


class Evaluations:
    """Offline evaluations of an engine's log, run one at a time on a background thread.

    Thread-safe. Results live in memory and, with ``persist`` (default), in the engine's
    SQLite database, one row per evaluation (``engine.records("evaluation")``), so the log,
    the model and the evaluations are one store with one backup; evaluations interrupted
    by a restart run again. A stored record that cannot be loaded or shown is left out of
    the listing (logged once) and can still be deleted by its id. An ``evaluations.json``
    written by earlier versions is imported once and renamed ``evaluations.json.migrated``.
    ``events`` overrides where events come from: ``events(start, end) -> iterable``.
    """

    def __init__(self, engine: LocalEngine, *, persist: bool = True,
                 events: Callable[[float, float], Iterable[LoggedEvent]] | None = None,
                 clock: Callable[[], float] | None = None) -> None:
        self._engine = engine
        self._events = events or (lambda start, end: _engine_events(engine, start, end))
        self._clock = clock or time.time
        self._lock = threading.RLock()
        self._records: dict[str, _Record] = {}
        self._models: dict[tuple[str, str], bytes] = {}
        self._runner: JobRunner[_Record] = JobRunner("personalizer-evaluations", self._lock, self._records,
                                                     self._work, self._save_quietly, EvaluationCancelled)
        self._store: LocalEngine | None = engine if persist else None
        self._unreadable: set[str] = set()  # stored ids that failed to load or render (logged once each)
        self._load()

    # ---------------------------------------------------------------- API
    def create(self, evaluation_id: str | None, name: str, start: Any, end: Any,
               policies: Sequence[dict[str, str]] = (), *, enable_offline_experimentation: bool = False,
               evaluation_type: str = "Manual") -> dict[str, Any]:
        """Validate and queue an evaluation; returns it (status ``pending``). ``evaluation_id`` None: generated.

        Policies are evaluated as written, except that one without ``--epsilon`` explores
        at the engine's ``explorationPercentage``, as the engine would run it once applied
        (its result's ``arguments`` show what was evaluated).
        """
        evaluation_id = evaluation_id if evaluation_id is not None else uuid.uuid4().hex
        if not isinstance(evaluation_id, str) or not _ID_OK.match(evaluation_id):
            raise PersonalizerError("InvalidEvaluationContract",
                                    "evaluation id must be 1..256 characters without '/', '\\', '?', '#' or controls")
        # The wire contract's rules (name, times, at most 10 policies of {name, arguments}), once.
        contract = parse(EvaluationContract, {"name": name, "startTime": start, "endTime": end,
                                              "policies": policies}, "InvalidEvaluationContract")
        t0, t1 = contract.start_time.timestamp(), contract.end_time.timestamp()
        clean = self._check_policies([p.model_dump(by_alias=True) for p in contract.policies], self._exploration())
        if enable_offline_experimentation:
            taken = {p["name"].casefold() for p in clean}
            clean += [{"name": n, "arguments": a, "source": "OfflineExperimentation"}
                      for n, a in PRESET_POLICIES.items() if n.casefold() not in taken]
        with self._lock:
            if evaluation_id in self._records:
                raise PersonalizerError("EvaluationAlreadyExists", f"evaluation '{evaluation_id}' already exists", 409)
        if not self._has_events(t0, t1):
            raise PersonalizerError("NoLogsExistInDateRange",
                                    f"no rewarded events between {_iso(t0)} and {_iso(t1)}", 400)
        online = self._online_policy()
        with self._lock:
            if evaluation_id in self._records:
                raise PersonalizerError("EvaluationAlreadyExists", f"evaluation '{evaluation_id}' already exists", 409)
            rec = _Record(evaluation_id, name, t0, t1, clean, online, self._clock(), evaluation_type,
                          enable_offline_experimentation, status="pending")
            self._save(rec)  # first: a failed write (a full disk) leaves no half-created evaluation
            self._records[evaluation_id] = rec
            self._submit(evaluation_id)
            return self._render(rec, API_V1)

    def get(self, evaluation_id: str, *, api_version: str = API_V1, interval_minutes: int | None = None,
            start: Any = None, end: Any = None, window: str = "Expanding") -> dict[str, Any]:
        """The evaluation in the shape of ``api_version`` (v1.1-preview.1 or 2022-09-01-preview)."""
        # Checked here, not only when results exist: a bad query is a 400 while the evaluation runs too.
        if interval_minutes is not None and interval_minutes not in INTERVALS_MINUTES:
            raise PersonalizerError("BadRequest", f"intervalInMinutes must be one of {list(INTERVALS_MINUTES)}")
        if not isinstance(window, str) or window.lower() not in ("expanding", "rolling"):
            raise PersonalizerError("BadRequest", "window must be Expanding or Rolling")
        with self._lock:
            rec = self._get(evaluation_id)
            return self._render(rec, api_version, interval_minutes,
                                None if start is None else _timestamp(start, "startTime"),
                                None if end is None else _timestamp(end, "endTime"), window)

    def details(self) -> list[dict[str, Any]]:
        """Every evaluation, oldest first, without results (the 2022 listing): what a page lists on every
        rerun (rendering each one's results costs about 0.1 s)."""
        return self.list(api_version=API_2022)

    def list(self, *, api_version: str = API_V1) -> list[dict[str, Any]]:
        """Every evaluation, oldest first (2022 shape: details without results)."""
        with self._lock:
            recs = sorted(self._records.values(), key=lambda r: r.created)
            shown = []
            for rec in recs:
                if rec.id in self._unreadable:
                    continue
                try:
                    item = self._details(rec) if api_version == API_2022 else self._render(rec, api_version)
                    _check_encodable(item)
                except Exception as exc:  # one bad record must not break the listing of the others
                    self._set_aside(rec.id, exc)
                    continue
                shown.append(item)
            return shown

    def delete(self, evaluation_id: str) -> None:
        """Delete an evaluation; a running one is cancelled."""
        with self._lock:
            if evaluation_id in self._unreadable and evaluation_id not in self._records:
                if self._store is not None:
                    self._store.delete_record("evaluation", evaluation_id)
                self._unreadable.discard(evaluation_id)
                return
            rec = self._get(evaluation_id)
            if self._store is not None:
                self._store.delete_record("evaluation", evaluation_id)
            rec.cancel.set()
            del self._records[evaluation_id]
            self._unreadable.discard(evaluation_id)
            for key in [k for k in self._models if k[0] == evaluation_id]:
                del self._models[key]

    def result(self, evaluation_id: str) -> EvaluationResult | None:
        """The Python result object (None until the evaluation succeeded)."""
        with self._lock:
            return self._get(evaluation_id).result

    def wait(self, evaluation_id: str, timeout: float | None = None) -> dict[str, Any]:
        """Block until the evaluation finished (or ``timeout``); returns it."""
        with self._lock:
            rec = self._get(evaluation_id)
        rec.done.wait(timeout)
        return self.get(evaluation_id)

    def policy(self, evaluation_id: str, policy_name: str) -> dict[str, str]:
        """``{"name", "arguments"}`` of a policy of a finished evaluation (for applyFromEvaluation)."""
        with self._lock:
            rec = self._get(evaluation_id)
            if rec.result is None:
                raise PersonalizerError("EvaluationModelNotFound",
                                        f"evaluation '{evaluation_id}' has no results (status {rec.status})", 404)
            if policy_name == "Online":
                return dict(rec.online_policy)
            try:
                p = rec.result.policy(policy_name)
            except KeyError:
                raise PersonalizerError("LearningSettingsNotFound",
                                        f"evaluation '{evaluation_id}' has no policy '{policy_name}'", 404) from None
            if p.arguments is None:
                raise PersonalizerError("LearningSettingsNotFound",
                                        f"policy '{policy_name}' is a reference policy, not learning settings", 400)
            return {"name": p.name, "arguments": p.arguments}

    def apply(self, evaluation_id: str, policy_name: str | None = None, *, with_model: bool = True,
              who: str = "api") -> dict[str, Any]:
        """applyFromEvaluation: make a policy of the evaluation (default: its optimal one) the engine's.

        Sets the learning settings, and the exploration percentage to the policy's own
        ``--epsilon`` so the engine runs what was evaluated; with ``with_model`` the model
        the replay trained is imported (while this process still holds it), else the
        model starts fresh. Choosing ``Online`` keeps the current settings.
        The change is recorded in the engine's policy history with the evaluation's id and
        the policy's estimated lift over the online policy; ``who``: auto | person | api.
        Returns the engine's policy.
        """
        with self._lock:
            rec = self._get(evaluation_id)
            if rec.result is None:
                raise PersonalizerError("EvaluationModelNotFound",
                                        f"evaluation '{evaluation_id}' has no results (status {rec.status})", 404)
            name = policy_name or rec.result.optimal_policy or "Online"
            chosen = self.policy(evaluation_id, name)
            model = self._models.get((evaluation_id, name)) if with_model else None
            details = estimate_details(rec.result, name)
        if name == "Online":
            status = "onlinePolicyRetained"
        else:
            epsilon = option_value(parse_arguments(chosen["arguments"]), "--epsilon")
            note = ChangeNote(who, "auto" if who == "auto" else "evaluation", evaluation_id,
                              None if details is None else {"estimate": details})
            self._engine.update_policy(chosen, exploration_percentage=None if epsilon is None else float(epsilon),
                                       note=note)
            if model is not None:
                self._engine.import_model(model)
            status = "optimalPolicyApplied"
        with self._lock:
            if evaluation_id in self._records:
                self._records[evaluation_id].status = status
                self._save_quietly(self._records[evaluation_id])
        return self._engine.get_policy()

    def close(self) -> None:
        """Stop the worker (a running evaluation is cancelled and will run again on restart)."""
        self._runner.close()

    def __enter__(self) -> Evaluations:
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()

    # ---------------------------------------------------------------- validation
    def _exploration(self) -> float:
        return float(self._engine.get_service_configuration().get("explorationPercentage", DEFAULT_EXPLORATION))

    def _check_policies(self, policies: Sequence[dict[str, str]], exploration: float | None) -> list[dict[str, str]]:
        """Unique names and arguments VW accepts (the shapes are ``EvaluationContract``'s)."""
        seen: set[str] = {n.casefold() for n in BUILTIN_POLICIES}
        clean = []
        for i, p in enumerate(policies):
            name, args = p["name"], p["arguments"]
            if not name.strip():
                raise PersonalizerError("InvalidPolicyContract", f"policies[{i}].name must be 1..256 characters")
            if name.casefold() in seen:
                why = " (a built-in policy name)" if name.casefold() in {n.casefold() for n in BUILTIN_POLICIES} else ""
                raise PersonalizerError("DuplicateCustomPolicyNames", f"policy name '{name}' is used twice{why}")
            seen.add(name.casefold())
            tokens = parse_arguments(args)
            if "--epsilon" not in tokens and exploration is not None:
                args = effective_arguments(args, exploration)
            # VW's own checks, and crashes or freezes in a child process, not in the server.
            trial.trial_policy(" ".join(parse_arguments(args)))
            clean.append({"name": name, "arguments": args, "source": "Custom"})
        return clean

    def _has_events(self, start: float, end: float) -> bool:
        return has_logged_events(self._events(start, end))

    def _online_policy(self) -> dict[str, str]:
        return dict(self._engine.get_policy())

    def _get(self, evaluation_id: str) -> _Record:
        rec = self._records.get(evaluation_id)
        if rec is None:
            raise PersonalizerError("EvaluationNotFound", f"no evaluation '{evaluation_id}'", 404)
        return rec

    # ---------------------------------------------------------------- worker
    def _submit(self, evaluation_id: str) -> None:
        self._runner.submit(evaluation_id)

    def _work(self, rec: _Record) -> None:
        data = prepare(self._events(rec.start, rec.end))
        rec.progress = PREPARED
        policies = [{"name": p["name"], "arguments": p["arguments"], "source": p.get("source", "Custom")}
                    for p in rec.policies]
        result = evaluate(data, policies, online_arguments=rec.online_policy.get("arguments"),
                          start=rec.start, end=rec.end, keep_models=True, progress=self._runner.progress(rec),
                          cancel=rec.cancel.is_set)
        with self._lock:
            for p in result.policies:
                if p.model is not None and rec.id in self._records:
                    self._models[(rec.id, p.name)] = p.model
                p.model = None
        rec.result = result

    # ---------------------------------------------------------------- rendering
    def _render(self, rec: _Record, api_version: str, interval_minutes: int | None = None,
                start: float | None = None, end: float | None = None, window: str = "Expanding") -> dict[str, Any]:
        if api_version == API_2022:
            out = self._details(rec)
            out["optimalPolicy"] = rec.result.optimal_policy if rec.result else None
            out["description"] = rec.message or _describe(rec)
            if rec.result is not None:
                s = rec.start if start is None else start
                e = rec.end if end is None else end
                out["content"] = {
                    "startTime": _iso(s), "endTime": _iso(e),
                    "intervalInMinutes": interval_minutes or int(rec.result.bucket_seconds // 60),
                    "value": rec.result.policy_results_2022(interval_minutes, s, e, window),
                }
            return out
        if api_version != API_V1:
            raise PersonalizerError("BadRequest", f"unknown api version '{api_version}'")
        res = rec.result
        return {
            "id": rec.id, "name": rec.name, "startTime": _iso(rec.start), "endTime": _iso(rec.end), "jobId": rec.id,
            "status": _STATUS_V1[rec.status], "policyResults": res.policy_results() if res else [],
            "featureImportance": [], "evaluationType": rec.evaluation_type,
            "optimalPolicy": res.optimal_policy if res else None, "creationTime": _iso(rec.created),
            # Extensions (clients ignore unknown fields):
            "progress": round(rec.progress, 4), "message": rec.message or _describe(rec),
            "events": res.events if res else None,
            "deterministicShare": res.deterministic_share if res else None,
        }

    def _details(self, rec: _Record) -> dict[str, Any]:
        return {"id": rec.id, "name": rec.name, "startTime": _iso(rec.start), "endTime": _iso(rec.end),
                "creationTime": _iso(rec.created), "status": _STATUS_2022[rec.status],
                "evaluationType": rec.evaluation_type, "progress": round(rec.progress, 4)}

    # ---------------------------------------------------------------- persistence
    def _save(self, rec: _Record) -> None:
        """Write one evaluation's row (raises the store's error, e.g. 507 on a full disk)."""
        if self._store is not None:
            self._store.save_record("evaluation", rec.id, rec.created, json.dumps(_record_item(rec)))

    def _save_quietly(self, rec: _Record) -> None:
        """Write a status change the caller cannot undo; a failed write is logged (a restart re-runs it)."""
        try:
            self._save(rec)
        except PersonalizerError as exc:
            _evaluations_log.warning("evaluation %s: saving its status failed: %s", ascii(rec.id), exc.message)

    def _set_aside(self, evaluation_id: str, exc: BaseException) -> None:
        if evaluation_id not in self._unreadable:
            self._unreadable.add(evaluation_id)
            _evaluations_log.warning("evaluation %s cannot be loaded or shown and is left out of the listing "
                                     "(delete it by its id): %s", ascii(evaluation_id), ascii(str(exc))[:300])

    def _load(self) -> None:
        if self._store is None:
            return
        self._import_json_file()
        rerun = []
        for rec in stored_jobs(self._store, "evaluation", _parse_record, self._set_aside):
            if rec.result is None and rec.status in ("pending", "running", "notSubmitted"):
                rec.status, rec.progress = "pending", 0.0  # interrupted by a restart: run again
                rerun.append(rec.id)
            self._records[rec.id] = rec
        for evaluation_id in rerun:
            self._submit(evaluation_id)

    def _import_json_file(self) -> None:
        """Move evaluations from the ``evaluations.json`` of earlier versions into the database, once."""
        path = Path(self._engine.home) / "evaluations.json"
        if self._store is None or not path.exists():
            return
        try:
            items = json.loads(path.read_text(encoding="utf-8")).get("evaluations", [])
        except (OSError, ValueError, AttributeError) as exc:  # keep it aside, start without it
            _evaluations_log.warning("%s is unreadable and was not imported: %s", path, exc)
            path.replace(path.with_name(path.name + ".unreadable"))
            return
        known = {evaluation_id for evaluation_id, _ in self._store.records("evaluation")}
        for item in items:
            try:
                if item["id"] not in known:
                    self._store.save_record("evaluation", str(item["id"]), float(item["created"]), json.dumps(item))
            except (KeyError, TypeError, ValueError) as exc:
                _evaluations_log.warning("an evaluation in %s was not imported: %s", path, exc)
        path.replace(path.with_name(path.name + ".migrated"))


def _record_item(rec: _Record) -> dict[str, Any]:
    """An evaluation as stored: JSON-ready, without its threading state."""
    return {
        "id": rec.id, "name": rec.name, "start": rec.start, "end": rec.end, "policies": rec.policies,
        "onlinePolicy": rec.online_policy, "created": rec.created, "evaluationType": rec.evaluation_type,
        "offlineExperimentation": rec.offline_experimentation, "status": rec.status,
        "message": rec.message, "result": rec.result.to_json() if rec.result else None,
        "progress": round(rec.progress, 4),  # a trainer running it for replicas reports how far it is
    }


def _parse_record(evaluation_id: str, text: str) -> _Record:
    """A stored row as an evaluation; raises on anything malformed or stored under another id."""
    item = json.loads(text)
    _check_encodable(item)
    rec = _record_from_item(item)
    if rec.id != evaluation_id:
        raise ValueError(f"the record's id {ascii(rec.id)} differs from its row's")
    return rec


def _record_from_item(item: dict[str, Any]) -> _Record:
    """The inverse of ``_record_item``; raises on anything malformed."""
    rec = _Record(item["id"], item["name"], item["start"], item["end"], item["policies"],
                  item["onlinePolicy"], item["created"], item.get("evaluationType", "Manual"),
                  item.get("offlineExperimentation", False), item["status"], item.get("message", ""))
    if item.get("result"):
        rec.result = EvaluationResult.from_json(item["result"])
        rec.progress = 1.0
        rec.done.set()
    elif rec.status not in ("pending", "running", "notSubmitted"):
        rec.done.set()
    else:
        rec.progress = float(item.get("progress", 0.0))
    return rec


def _check_encodable(item: Any) -> None:
    """Raise unless ``item`` serializes to UTF-8 JSON (a lone surrogate in a string does not)."""
    json.dumps(item, ensure_ascii=False).encode("utf-8")


def _describe(rec: _Record) -> str:
    if rec.status in ("pending", "running") or rec.result is None:
        return ""
    res = rec.result
    notes = [f"{res.events} events"]
    if len(res.slot_ids) > 1:
        notes.append("totals are the first slot (unbiased); later slots' per-slot numbers are conditional on the "
                     "online policy's earlier choices (see 'cascade' for the unbiased, noisier variant)")
    if res.deterministic_share > 0:
        notes.append(f"{res.deterministic_share:.0%} of logged slots had no exploration (probability 1): "
                     "estimates for policies that differ there are biased")
    return "; ".join(notes)
