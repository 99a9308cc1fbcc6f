"""Automatic optimization: on a schedule, evaluate other learning settings offline and apply a clearly better one.

When the service configuration's ``isAutoOptimizationEnabled`` is true, an
optimization is due at ``autoOptimizationStartDate`` and every
``autoOptimizationFrequency`` after it (default ``P7D``; without a start date, at
once and then every period after the last run; a period missed while the server was
down runs once, not once per missed period). Each run:

1. takes the current model's own events (ranked since its creation: the last policy
   change, reset or import), at most the last ``LOOKBACK_DAYS``;
2. skips unless the learning mode is Online with some exploration (estimates of other
   policies need it) and the log has at least ``MIN_EVENTS`` learned events in all;
3. evaluates the preset candidate policies (``evaluation.PRESET_POLICIES``) offline,
   each at the live exploration percentage (exploration stays the owner's setting, as in
   Personalizer: a candidate that merely explores less would always look better on past
   data) and leaving out any that equals the live policy;
4. applies the candidate with the highest lower confidence bound, with the model its
   replay trained, only when that evaluation had at least ``MIN_EVENTS`` first-slot
   events and the bound (first slot, the unbiased headline, Cressie-Read 95 %) exceeds
   the online policy's estimate (its realized average reward on the same events) by
   ``MARGIN``. Otherwise the live policy stays.

Every run is an evaluation of type ``Auto`` in the evaluations list; a policy it applies
is recorded in the policy history with ``who: auto`` and the estimated lift. The
decision of the last run is kept in the engine's settings (``auto_optimization_state``).
``AutoOptimizer.run_due_optimization`` is what the background thread calls; tests call
it with an injected clock.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from typing import Any

from .contract import DEFAULT_EXPLORATION, MultiSlotRankRequest, PersonalizerError, parse_duration
from .evaluation import PRESET_POLICIES, Evaluations, recent_events
from .interface import LocalEngine
from .policy_history import same_arguments
from .protocol import iso_utc
from .vw import budget
from .vw.arguments import effective_arguments

__all__ = ["DEFAULT_FREQUENCY", "LOOKBACK_DAYS", "MARGIN", "MIN_EVENTS", "AutoOptimizer", "next_due"]

log = logging.getLogger(__name__)

#: Fewest first-slot events an automatic evaluation must rest on before it may change the policy.
MIN_EVENTS = 1000
#: How far (absolute average reward) a candidate's lower confidence bound must clear the online estimate.
MARGIN = 0.02
#: autoOptimizationFrequency when the configuration leaves it empty.
DEFAULT_FREQUENCY = "P7D"
#: The longest stretch of the log an automatic evaluation reads.
LOOKBACK_DAYS = 30
#: How often the background thread checks whether a run is due (seconds).
POLL_SECONDS = 30.0
#: How many of the newest logged requests a candidate must rank within the engine's compute budget.
BUDGET_SAMPLE = 200
#: Longest wait for one automatic evaluation to finish (seconds).
EVALUATION_TIMEOUT = 3600.0


def _timestamp(text: str | None) -> float | None:
    if not text:
        return None
    value = datetime.fromisoformat(text.strip())
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.timestamp()

#: Optimization runs carry times to the second.
_iso = partial(iso_utc, timespec="seconds")


def next_due(configuration: dict[str, Any], last_run: float | None) -> float | None:
    """When the next automatic optimization is due (epoch seconds), or None when it is disabled.

    Runs are due at ``autoOptimizationStartDate + k * autoOptimizationFrequency``; the next
    one is the first such time after the last run. Without a start date the first run is
    due at once (``-inf``) and each next one a period after the last.
    """
    if not configuration.get("isAutoOptimizationEnabled"):
        return None
    period = parse_duration(configuration.get("autoOptimizationFrequency") or DEFAULT_FREQUENCY).total_seconds()
    start = _timestamp(configuration.get("autoOptimizationStartDate"))
    if start is None:
        return -math.inf if last_run is None else last_run + period
    if last_run is None or last_run < start:
        return start
    return start + (math.floor((last_run - start) / period) + 1) * period


class AutoOptimizer:
    """Runs automatic optimization for one engine, through its ``Evaluations`` manager.

    ``clock`` returns epoch seconds (default ``time.time``; pass the engine's clock in
    tests). ``min_events`` and ``margin`` are the two thresholds above.
    ``start()`` runs ``run_due_optimization`` on a daemon thread every ``poll_seconds``;
    ``close()`` stops it.
    """

    def __init__(self, engine: LocalEngine, evaluations: Evaluations, *, clock: Callable[[], float] | None = None,
                 min_events: int = MIN_EVENTS, margin: float = MARGIN,
                 candidates: dict[str, str] | None = None, poll_seconds: float = POLL_SECONDS,
                 evaluation_timeout: float = EVALUATION_TIMEOUT) -> None:
        self._engine = engine
        self._evaluations = evaluations
        self._clock = clock or time.time
        self.min_events = min_events
        self.margin = margin
        self.candidates = dict(PRESET_POLICIES if candidates is None else candidates)
        self._poll = poll_seconds
        self._timeout = evaluation_timeout
        self._run_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---------------------------------------------------------------- schedule
    def next_due(self) -> float | None:
        """When the next run is due (epoch seconds; -inf: now), or None when auto-optimization is off."""
        last = self._engine.auto_optimization_state().get("lastRun") or {}
        return next_due(self._engine.get_service_configuration(), last.get("timestamp"))

    def status(self) -> dict[str, Any]:
        """Whether it is enabled, the thresholds, when the next run is due and what the last one did."""
        due = self.next_due()
        state = self._engine.auto_optimization_state()
        return {"enabled": due is not None, "minEvents": self.min_events, "margin": self.margin,
                "nextRun": None if due is None else _iso(max(due, self._clock())),
                "lastRun": state.get("lastRun")}

    def run_due_optimization(self) -> dict[str, Any] | None:
        """Run an optimization if one is due now; returns its record, or None when none was due."""
        with self._run_lock:
            due = self.next_due()
            now = self._clock()
            if due is None or now < due:
                return None
            return self._optimize(now)

    def optimize(self) -> dict[str, Any]:
        """Run an optimization now, whatever the schedule; returns its record."""
        with self._run_lock:
            return self._optimize(self._clock())

    # ---------------------------------------------------------------- one run
    def _optimize(self, now: float) -> dict[str, Any]:
        try:
            run = self._evaluate_and_decide(now)
        except PersonalizerError as exc:
            run = {"decision": "failed", "reason": f"{exc.code}: {exc.message}"}
        except Exception as exc:  # a background job records its failure; the next period tries again
            log.exception("automatic optimization failed")
            run = {"decision": "failed", "reason": f"{type(exc).__name__}: {exc}"}
        run = {"time": _iso(now), "timestamp": now, **run}
        self._engine.save_auto_optimization_state({"lastRun": run})
        log.info("automatic optimization: %s (%s)", run["decision"], run.get("reason", ""))
        return run

    def _evaluate_and_decide(self, now: float) -> dict[str, Any]:
        live = self._engine.get_policy()
        config = self._engine.get_service_configuration()
        mode = config.get("learningMode", "Online")
        if mode != "Online":  # Apprentice and LoggingOnly serve the baseline: no exploration to evaluate from
            return {"decision": "skipped", "reason": f"learning mode is {mode}; automatic optimization needs Online"}
        exploration = float(config.get("explorationPercentage", DEFAULT_EXPLORATION))
        if exploration <= 0:
            return {"decision": "skipped", "reason": "explorationPercentage is 0: nothing to evaluate other "
                                                     "policies from"}
        candidates = self._candidate_policies(live["arguments"], exploration)
        if not candidates:
            return {"decision": "kept", "reason": "every candidate equals the live policy"}
        learned = int(self._engine.stats().get("learned", 0))
        if learned < self.min_events:
            return {"decision": "skipped", "reason": f"{learned} learned events; at least {self.min_events} needed"}
        created = _timestamp(self._engine.model_properties().get("creationTime")) or 0.0
        start = max(created, now - LOOKBACK_DAYS * 86400.0)
        evaluation = self._evaluations.create(
            None, f"Automatic optimization {_iso(now)}", start, now + 1.0, candidates, evaluation_type="Auto")
        evaluation_id = evaluation["id"]
        info = self._evaluations.wait(evaluation_id, self._timeout)
        result = self._evaluations.result(evaluation_id)
        record: dict[str, Any] = {"evaluationId": evaluation_id}
        if result is None:
            return {**record, "decision": "failed",
                    "reason": info.get("message") or f"the evaluation did not finish (status {info.get('status')})"}
        online = result.policy("Online").headline
        record["events"] = result.events
        record["online"] = {"value": _number(online.snips)}
        scored = [(p.headline.interval[0], p) for p in result.policies if p.source == "Custom"]
        scored = [(lo, p) for lo, p in scored if math.isfinite(lo)]
        if not scored:
            return {**record, "decision": "kept", "reason": "no candidate has a finite estimate"}
        lower, best = max(scored, key=lambda item: item[0])
        record["best"] = {"name": best.name, "arguments": best.arguments, "value": _number(best.headline.snips),
                          "interval": [_number(v) for v in best.headline.interval]}
        bar = online.snips + self.margin
        if result.events < self.min_events:
            return {**record, "decision": "kept",
                    "reason": f"{result.events} events in the evaluation; at least {self.min_events} needed"}
        if not lower > bar:
            return {**record, "decision": "kept",
                    "reason": f"best lower bound {lower:.4f} does not exceed the online estimate "
                              f"{online.snips:.4f} + margin {self.margin}"}
        current = self._engine.get_policy()
        if not same_arguments(current["arguments"], live["arguments"]):
            return {**record, "decision": "kept", "reason": "the policy changed while the evaluation ran"}
        if best.arguments is None or same_arguments(best.arguments, current["arguments"]):
            return {**record, "decision": "kept", "reason": "the best candidate is the live policy"}
        self._evaluations.apply(evaluation_id, best.name, who="auto")
        changes = self._engine.policy_history(limit=1)
        record["changeId"] = changes[0]["id"] if changes else None
        return {**record, "decision": "applied",
                "reason": f"lower bound {lower:.4f} exceeds the online estimate {online.snips:.4f} + margin "
                          f"{self.margin}"}

    def _candidate_policies(self, live_arguments: str, exploration: float) -> list[dict[str, str]]:
        """The candidates at the live exploration, without duplicates or the live policy itself."""
        chosen: list[dict[str, str]] = []
        for name, arguments in self.candidates.items():
            args = effective_arguments(arguments, exploration)
            if same_arguments(args, live_arguments) or any(same_arguments(args, c["arguments"]) for c in chosen):
                continue
            if not self._fits_budget(args):
                log.info("automatic optimization: %s left out, today's requests would exceed the rank budget", name)
                continue
            chosen.append({"name": name, "arguments": args})
        return chosen

    def _fits_budget(self, arguments: str) -> bool:
        """Whether the newest logged requests stay within the engine's compute budget under ``arguments``.

        A candidate with richer interactions (``--cubic``) may learn better yet make today's
        large requests too expensive to rank: applied automatically, it would turn them
        into 400s. Such a candidate is never evaluated for automatic application.
        """
        limit = self._engine.max_rank_features
        if limit is None:
            return True
        for event in recent_events(self._engine, BUDGET_SAMPLE, lambda _: True):
            request = MultiSlotRankRequest.model_validate(event.request)
            if budget.rank_features(request, arguments) > limit:
                return False
        return True

    # ---------------------------------------------------------------- background thread
    def start(self) -> None:
        """Check the schedule every ``poll_seconds`` on a daemon thread until ``close``."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="personalizer-auto-optimization", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self._poll):
            try:
                self.run_due_optimization()
            except Exception:  # e.g. the log is closed under us at shutdown; try again next time
                log.exception("automatic optimization check failed")

    def close(self) -> None:
        """Stop the background thread (a running optimization finishes its evaluation first)."""
        self._stop.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout=60)
        self._thread = None


def _number(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None
