"""The embedded engine: Personalizer's multi-slot Rank / Reward / Activate loop on Vowpal Wabbit.

``LocalPersonalizer`` validates a rank request, asks a conditional contextual
bandit (VW ``--ccb_explore_adf``) which action fills each slot, logs the event,
joins the rewards that arrive for it and learns once the event is complete:
every slot rewarded (``earliest`` aggregation) or its reward wait time over
(missing slots then take ``defaultReward``). Deferred events are learned only
once activated.

The SQLite event log (``store.EventLog``) is the truth; the VW model is a cache
of it, checkpointed and rebuilt on start by replaying what was learned after the
newest checkpoint. Closing an event commits to the log first and only then
teaches the model, so a failed write (a full disk) changes nothing and can be
retried. Memory holds only what closing a pending event needs (its example is
rebuilt from the logged request). One lock guards the workspace and the log: VW
is not thread-safe, and Streamlit sessions or server threads share one engine.

Why one module of this size: ``LocalPersonalizer`` is one state machine under one lock
(workspace, pending events, log, settings and policy history change together, and every
public method is one critical section); splitting it across mixin modules would spread
that invariant over files. What is not the loop lives elsewhere: encoding and the
workspace in ``personalizer.vw``, the log in ``store``, history shapes in ``policy_history``.
"""

from __future__ import annotations

import contextlib
import hashlib
import heapq
import json
import logging
import os
import random
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from . import logexport
from .contract import (
    DEFAULT_EXPLORATION,
    MIN_PROBABILITY,
    MultiSlotRankRequest,
    MultiSlotRewardRequest,
    PersonalizerError,
    PolicyContract,
    RankRequest,
    RewardRequest,
    ServiceConfiguration,
    parse,
)
from .eventstore import EventStore, is_postgres_url, open_store
from .policy_history import ChangeNote, change_to_dict, same_arguments
from .protocol import iso_utc, new_event_id
from .store import StoredEvent, storage_error
from .vw import budget, encoding, trial
from .vw import explain as vw_explain
from .vw import workspace as vw_workspace
from .vw.arguments import effective_arguments, parse_arguments
from .vw.encoding import CatalogCache, encode_request
from .vw.workspace import Workspace


def policy_arguments(learner: str, exploration: float = DEFAULT_EXPLORATION) -> str:
    """Multi-slot VW arguments: conditional contextual bandits exploring ``exploration`` (the
    explorationPercentage, VW's ``--epsilon``) with ``learner`` (cost estimator, interactions...)."""
    return f"--ccb_explore_adf --epsilon {exploration:g} {learner}"


#: The retired Azure service's learner: fixed learning rate, mtr, all namespace pairs.
RETIRED_LEARNER = "--power_t 0 -l 0.001 --cb_type mtr -q ::"
#: The retired Azure service's default multi-slot learning settings (for comparison).
RETIRED_POLICY_ARGUMENTS = policy_arguments(RETIRED_LEARNER)
#: This project's default, chosen by ``bench/learning.py --suite`` over 40 generated scenarios and
#: the shipped ones (see README): SquareCB explores adaptively (more where the model is unsure),
#: --epsilon (the explorationPercentage) is then a floor, never less exploration than epsilon-greedy;
#: VW's adaptive updates at its default learning rate; context x action and slot x action
#: interactions (@ context, _ action, ~ slot namespaces). No cubic term: it learned joint tastes
#: better but ranked a 50 x 10 request ~5x slower (17 vs 3.5 ms); add --cubic @@_ for small contexts.
DEFAULT_LEARNER = "--cb_type mtr --squarecb -q @_ -q ~_"
DEFAULT_POLICY_ARGUMENTS = policy_arguments(DEFAULT_LEARNER)
DEFAULT_POLICY_NAME = "Personalizer Studio default"
SINGLE_SLOT_ID = "__single__"
#: Seconds between two rounds of log retention (``logRetentionDays``), each deleting one bounded batch.
RETENTION_INTERVAL = 60.0

Clock = Callable[[], float]
log = logging.getLogger(__name__)


# ---------------------------------------------------------------- events in memory

class _Pending:
    """An event waiting for its rewards: only what joining and closing it needs.

    No request, response or VW example: a busy site holds 100,000s of these, and the
    example is rebuilt from the logged request when the event closes (the retry check
    of a rank reads the log too). ``slot_ids`` is shared between events of one catalog.
    """

    __slots__ = ("event_id", "deadline", "mode", "deferred", "activated", "slot_ids", "rewards")

    def __init__(self, event_id: str, deadline: float, mode: str, deferred: bool, activated: bool,
                 slot_ids: tuple[str, ...]) -> None:
        self.event_id = event_id
        self.deadline = deadline
        self.mode = mode
        self.deferred = deferred
        self.activated = activated
        self.slot_ids = slot_ids
        self.rewards: dict[str, float] | None = None  # joined so far; None until the first reward


#: What learning one event needs: head lines, slot bodies, allowed indices, chosen indices, probabilities.
_Example = tuple[list[str], list[str], list[list[int]], list[int], list[float]]
#: Examples of the most recent ranks kept ready (rewards usually follow a rank within seconds);
#: older events rebuild theirs from the log. Bounds the memory of this shortcut, by count and by
#: the size of the example text (a caller's feature values can be a megabyte each).
_RECENT_EXAMPLES = 1024
_RECENT_BYTES = 16 * 1024 * 1024


class _RecentExamples:
    """The newest ranks' examples, oldest evicted first, within ``_RECENT_EXAMPLES`` and ``_RECENT_BYTES``."""

    def __init__(self) -> None:
        self._items: dict[str, tuple[_Example, int]] = {}
        self._bytes = 0

    def put(self, event_id: str, example: _Example) -> None:
        size = sum(map(len, example[0])) + sum(map(len, example[1]))
        if size > _RECENT_BYTES // 16:
            return  # a huge example is rebuilt from the log when its event closes
        while self._items and (len(self._items) >= _RECENT_EXAMPLES or self._bytes + size > _RECENT_BYTES):
            self._bytes -= self._items.pop(next(iter(self._items)))[1]
        self._items[event_id] = (example, size)
        self._bytes += size

    def pop(self, event_id: str) -> _Example | None:
        item = self._items.pop(event_id, None)
        if item is None:
            return None
        self._bytes -= item[1]
        return item[0]

    def clear(self) -> None:
        """Forget every kept example (closing events then rebuild theirs from the log)."""
        self._items.clear()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, event_id: object) -> bool:
        return event_id in self._items

    @property
    def bytes(self) -> int:
        """The size of the kept example text."""
        return self._bytes
_SLOT_ID_SETS = 256


class _TimedLock:
    """``with`` a lock acquired within ``timeout`` seconds (None: no limit), else a 503.

    A plain class, not a generator context manager: it is entered on every rank and reward.
    """

    __slots__ = ("_lock", "_timeout")

    def __init__(self, lock: threading.RLock, timeout: float | None) -> None:
        self._lock = lock
        self._timeout = timeout

    def __enter__(self) -> None:
        timeout = self._timeout
        if not self._lock.acquire(timeout=-1 if timeout is None else timeout):
            raise PersonalizerError("ServiceUnavailable",
                                    f"the engine is busy (waited {timeout:g} s for it); retry later", 503)

    def __exit__(self, *_: object) -> None:
        self._lock.release()


# ---------------------------------------------------------------- the engine

class LocalPersonalizer:
    """In-process Personalizer: ``rank``, ``reward``, ``activate`` with a durable log.

    ``home`` is the data directory (default ``$PERSONALIZER_STORE``, ``$PERSONALIZER_HOME`` or
    ``.personalizer``), or a ``postgresql://`` URL for a log in PostgreSQL (``eventstore.open_store``).
    ``policy_arguments`` and ``configuration`` seed a new data directory; a directory
    that already has settings keeps its own. ``clock`` returns epoch seconds (tests
    inject one to control reward wait times).
    """

    def __init__(
        self,
        home: str | os.PathLike[str] | None = None,
        *,
        policy_arguments: str | None = None,
        configuration: dict[str, Any] | None = None,
        clock: Clock | None = None,
        checkpoint_every: int = 1000,
    ) -> None:
        self._clock: Clock = clock or time.time
        self._lock = threading.RLock()
        self._log: EventStore = open_store(home)
        self.home = self._log.home
        self._checkpoint_every = checkpoint_every
        self._pending: dict[str, _Pending] = {}
        self._deadlines: list[tuple[float, str]] = []
        self._catalogs = CatalogCache()
        self._recent = _RecentExamples()
        self._slot_id_sets: dict[tuple[str, ...], tuple[str, ...]] = {}
        self._counts: dict[str, int] | None = None  # events by status and rewards; None: read the log
        #: Seconds a public call waits for the engine lock before a 503 (None: as long as it takes).
        self.lock_timeout: float | None = None
        #: Largest estimated feature count of a rank request (budget.py); None: no limit.
        self.max_rank_features: int | None = budget.DEFAULT_MAX_RANK_FEATURES
        # Built by the first rank that asks for explanations (with the workspace and settings it explains).
        self._explainer: tuple[Workspace, tuple[str, float], vw_explain.Explainer] | None = None
        try:
            with self._lock:
                self._load_settings(policy_arguments, configuration)
                self._restore()
        except BaseException as exc:
            self._log.close()  # release the data directory for the next attempt
            if isinstance(exc, sqlite3.DatabaseError):  # e.g. a page of the file is corrupt
                raise storage_error(exc, self._log.path) from None
            raise

    def _locked(self) -> _TimedLock:
        """The engine lock, waited for at most ``lock_timeout`` seconds (503 ServiceUnavailable beyond).

        A server must answer "busy, retry" rather than queue callers behind a long call without bound.
        """
        return _TimedLock(self._lock, self.lock_timeout)

    # ------------------------------------------------------------ settings
    def _load_settings(self, policy_arguments: str | None, configuration: dict[str, Any] | None) -> None:
        stored_cfg = self._log.get_setting("service")
        stored_policy = self._log.get_setting("policy")
        if stored_cfg is None:
            cfg = parse(ServiceConfiguration, configuration or {}, "InvalidServiceConfiguration")
            cfg.last_configuration_edit_date = iso_utc(self._clock())
            self._log.set_setting("service", cfg.model_dump(by_alias=True))
        else:
            cfg = ServiceConfiguration.model_validate(stored_cfg)
        self._config = cfg
        self._wait = cfg.reward_wait_seconds
        self._policy_set_aside = False
        if stored_policy is None:
            policy = PolicyContract(name=DEFAULT_POLICY_NAME if policy_arguments is None else "custom",
                                    arguments=policy_arguments or DEFAULT_POLICY_ARGUMENTS)
            parse_arguments(policy.arguments)  # the caller's own mistake: raise, store nothing
            self._log.set_setting("policy", policy.model_dump(by_alias=True))
            stored_policy = policy.model_dump(by_alias=True)
        self._policy = self._usable_policy(stored_policy)

    def _usable_policy(self, stored: Any) -> PolicyContract:
        """The stored policy if it parses and passes its trial; else the default, the stored one set aside.

        A stored policy that crashes VW would crash every start (a crash loop on a data
        directory nobody can fix through the API), so it is kept for the operator under
        the ``policy_set_aside`` setting, logged once, and the default policy runs.
        A policy that passed its trial is remembered (``policy_trial``) so restarts skip it.
        """
        try:
            policy = PolicyContract.model_validate(stored)
            args = effective_arguments(policy.arguments, self._config.exploration_percentage)
            if policy.arguments != DEFAULT_POLICY_ARGUMENTS and \
                    self._log.get_setting("policy_trial") != policy.arguments:
                trial.trial_policy(args, self._trial_examples())
                self._log.set_setting("policy_trial", policy.arguments)
            return policy
        except (PersonalizerError, ValueError) as exc:
            why = exc.message if isinstance(exc, PersonalizerError) else _first_line(exc)
        log.warning("stored policy in %s set aside, the default policy runs instead: %s", self.home, why)
        default = PolicyContract(name=DEFAULT_POLICY_NAME, arguments=DEFAULT_POLICY_ARGUMENTS)
        with self._log.transaction():
            self._log.set_setting("policy_set_aside", {"policy": stored, "reason": why, "when": iso_utc(self._clock())})
            self._log.set_setting("policy", default.model_dump(by_alias=True))
        self._policy_set_aside = True
        return default

    def _trial_examples(self) -> list[trial.TrialExample] | None:
        """Examples shaped like live traffic for a trial: the latest catalogs ranked, else the latest learned."""
        recent = self._catalogs.recent()
        if not recent:
            newest = self._log.max_learn_seq()
            recent = [(ev.request, ev.event_id) for ev in self._log.learned_after(max(0, newest - 3))]
        return trial.examples_from_requests(recent) if recent else None

    @property
    def arguments(self) -> str:
        """The VW arguments the model runs with (policy with the configured exploration)."""
        return effective_arguments(self._policy.arguments, self._config.exploration_percentage)

    # ------------------------------------------------------------ VW workspace
    def _workspace(self, model: bytes | None = None, arguments: str | None = None) -> Workspace:
        """A workspace with the current (or given) arguments: fresh, or from model bytes (header checked)."""
        args = arguments or self.arguments
        return vw_workspace.build(args) if model is None else vw_workspace.load(model, args)

    def _model_bytes(self) -> bytes:
        return vw_workspace.save(self._vw)

    def _checkpoint(self, reason: str) -> None:
        now = self._clock()
        self._log.add_checkpoint(self._learn_seq, now, reason, self.arguments, self._model_bytes())
        self._since_checkpoint = 0
        if reason != "periodic":  # a new model lineage: nothing learned into it yet
            self._created = now
            self._modified = None

    def _restore(self) -> None:
        """Load the model (checkpoint + replay), then reload pending events."""
        replayed, fresh = self._load_model()
        self._since_checkpoint = replayed
        if fresh:
            self._checkpoint("created")
        elif self._policy_set_aside:
            self._checkpoint("policy")  # the default policy's lineage starts here
        self._reload_pending()
        self.replayed_on_start = replayed

    def _load_model(self) -> tuple[int, bool]:
        """Build the model from the newest loadable checkpoint of its lineage and replay the log after it.

        Returns (events replayed, whether the log had no checkpoint at all). When the newest
        checkpoint does not load, the lineage's origin (the reset, policy change or import
        that created the model, never pruned) is tried, then a fresh model replays from the
        origin on: events learned before a reset are never replayed into its model.
        """
        cp = self._log.latest_checkpoint()
        self._learn_seq = self._log.max_learn_seq()
        if cp is None:
            self._vw = self._workspace()
            start = 0
            self._created = self._clock()
        else:
            origin = self._log.first_checkpoint_since_reset()
            self._created = origin.created if origin else cp.created
            # A set-aside policy's checkpoints carry its refused options in their headers: rebuild instead.
            refused = self._policy_set_aside
            candidates = [] if refused else [cp] if origin is None or origin.id == cp.id else [cp, origin]
            for candidate in candidates:
                try:
                    vw_workspace.read_header(candidate.model)
                    self._vw = self._workspace(candidate.model)
                    start = candidate.learn_seq
                    break
                except (PersonalizerError, OSError) as exc:  # e.g. a checkpoint written by another VW version
                    refused = refused or (isinstance(exc, PersonalizerError) and exc.code == "InvalidModelImportFormat")
                    log.warning("checkpoint %d (%s) in %s does not load: %s", candidate.id, candidate.reason,
                                self.home, _first_line(exc))
            else:
                if origin is not None and origin.reason == "import" and not refused:
                    raise PersonalizerError(
                        "ModelDownloadFailed", f"the saved model in {self.home} cannot be loaded "
                        "and an imported model cannot be rebuilt from the log; import it again", 500)
                # The log is the truth: rebuild the model from the start of its lineage.
                log.warning("rebuilding the model in %s from the event log", self.home)
                self._vw = self._workspace()
                start = origin.learn_seq if origin is not None else 0
        self._modified: float | None = None
        return self._replay_after(start), cp is None

    def _replay_after(self, start: int) -> int:
        """Learn every event the log says was learned after ``start``, in learning order; returns how many.

        Restart replays with it; a scaled-out trainer (``scaled.TrainerEngine``) follows the log with it.
        """
        replayed = 0
        for ev in self._log.learned_after(start):
            head, bodies, allowed, index = encode_request(ev.request, ev.event_id)
            chosen = [index[s["rewardActionId"]] for s in ev.response["slots"]]
            probs = [s["probability"] for s in ev.response["slots"]]
            self._learn_example(ev.event_id, head, bodies, allowed, chosen, probs, ev.labels or [], ev.mode)
            self._modified = ev.closed
            replayed += 1
        return replayed

    def _reload_pending(self) -> None:
        """Pending events from the log: the small ``_Pending`` entries, rewards joined again."""
        for event_id, created, mode, deferred, activated, slot_ids in self._log.pending_summaries():
            start = activated if activated is not None else created
            p = _Pending(event_id, start + self._wait, sys.intern(mode), deferred, activated is not None,
                         self._shared_slot_ids(slot_ids))
            self._pending[event_id] = p
            heapq.heappush(self._deadlines, (p.deadline, event_id))
        for event_id, slot_id, value in self._log.pending_rewards():
            p = self._pending.get(event_id)
            if p is not None:
                p.rewards = self._merged_rewards(p, [(slot_id, value)])
        complete = [p for p in self._pending.values() if self._complete(p)]
        for p in complete:  # a crash came between its last reward and its closing
            self._close(p, p.rewards, self._clock())

    def _shared_slot_ids(self, slot_ids: Sequence[str]) -> tuple[str, ...]:
        """One tuple object for every pending event with these slot ids (a catalog's slots repeat)."""
        key = tuple(slot_ids)
        shared = self._slot_id_sets.get(key)
        if shared is None:
            if len(self._slot_id_sets) >= _SLOT_ID_SETS:
                self._slot_id_sets.pop(next(iter(self._slot_id_sets)))
            shared = self._slot_id_sets[key] = tuple(sys.intern(x) for x in key)
        return shared

    # ------------------------------------------------------------ rank
    def rank(self, request: dict[str, Any], *, explain: bool = False) -> dict[str, Any]:
        """Multi-slot rank: ``MultiSlotRankRequest`` dict -> ``MultiSlotRankResponse`` dict.

        Each slot's ``probability`` (the chance its action was chosen) rides along as a
        documented extension. The same eventId with the same body answers the same and
        logs nothing new; with a different body it is a 409 error. ``explain``: each slot
        also carries an ``explanation`` (see ``explain_rank``); never computed otherwise.
        """
        req = parse(MultiSlotRankRequest, request, "InvalidRankRequest")  # shapes and cross-field rules
        return self._rank(req, explain=explain)

    def _rank(self, req: MultiSlotRankRequest, extra: Callable[[Any], dict[str, Any]] | None = None,
              *, explain: bool = False) -> dict[str, Any]:
        budget.check_rank(req, self._policy.arguments, self.max_rank_features)  # before any VW work
        # The validated request as the log stores it; live ranking encodes the very same
        # structure replay will read back, so both build identical VW examples.
        canonical_json = req.model_dump_json(by_alias=True, exclude={"event_id"})
        canonical = json.loads(canonical_json)
        request_hash = hashlib.sha256(canonical_json.encode()).hexdigest()
        given = req.event_id
        with self._locked():
            now = self._clock()
            self._process_due(now)
            if given is not None:
                previous = self._previous_answer(given, request_hash)
                if previous is not None:
                    if explain:
                        self._attach_explanations(canonical, given, previous)
                    return previous
            event_id = given or new_event_id()
            head, bodies, allowed, index = self._catalogs.encode(canonical, event_id, canonical_json)
            mode = self._config.learning_mode
            last_scores = None
            if mode == "Online":
                lines = head + [encoding.slot_line(b, a) for b, a in zip(bodies, allowed, strict=True)]
                if explain:  # the same prediction, keeping VW's scores of the last slot for the explanation
                    prediction, last_scores = vw_explain.predict_with_last_scores(self._vw, lines, allowed)
                else:
                    prediction = vw_workspace.predict(self._vw, lines)
                chosen = [slot[0][0] for slot in prediction]
                probs = [float(slot[0][1]) for slot in prediction]
            else:  # Apprentice and LoggingOnly serve the application's own baseline.
                prediction = None
                chosen = [index[s["baselineAction"]] for s in canonical["slots"]]
                probs = [1.0] * len(chosen)
            action_ids = [a["id"] for a in canonical["actions"]]
            slot_ids = [s["id"] for s in canonical["slots"]]
            response: dict[str, Any] = {
                "eventId": event_id,
                "slots": [{"id": sid, "rewardActionId": action_ids[c], "probability": p}
                          for sid, c, p in zip(slot_ids, chosen, probs, strict=True)],
            }
            if extra is not None:
                response.update(extra(prediction))
            self._log.add_event(event_id, now, request_hash, canonical_json, response, mode,
                                req.defer_activation)  # one statement: commits on its own
            p = _Pending(event_id, now + self._wait, mode, req.defer_activation, False,
                         self._shared_slot_ids(slot_ids))
            self._pending[event_id] = p
            heapq.heappush(self._deadlines, (p.deadline, event_id))
            if mode != "LoggingOnly":
                self._recent.put(event_id, (head, bodies, allowed, chosen, probs))
            answer = _copy(response)
            if explain:  # after logging: the log never holds explanations
                self._attach_explanations(canonical, event_id, answer, (head, bodies, allowed, index), last_scores)
            return answer

    def _previous_answer(self, event_id: str, request_hash: str) -> dict[str, Any] | None:
        stored = self._log.event_answer(event_id)
        if stored is None:
            return None
        stored_hash, response = stored
        if stored_hash != request_hash:
            raise PersonalizerError(
                "InvalidRankRequest",
                f"eventId '{event_id}' was already ranked with a different request; use a new eventId", 409)
        return _copy(response)

    def rank_single(self, request: dict[str, Any]) -> dict[str, Any]:
        """Single-slot rank (v1.0): every action with its probability (excluded ones 0) and the chosen one."""
        req = parse(RankRequest, request, "InvalidRankRequest")
        ids = [a.id for a in req.actions]
        unknown = [x for x in req.excluded_actions if x not in ids]
        if unknown:
            raise PersonalizerError("InvalidRankRequest", f"excluded action '{unknown[0]}' is not one of the actions")
        baseline = next((x for x in ids if x not in req.excluded_actions), None)
        if baseline is None:
            raise PersonalizerError("InvalidRankRequest", "excludedActions leave no action to choose")
        multi = parse(MultiSlotRankRequest, {
            "contextFeatures": req.context_features, "actions": [a.model_dump() for a in req.actions],
            "slots": [{"id": SINGLE_SLOT_ID, "features": [], "excludedActions": req.excluded_actions,
                       "baselineAction": baseline}],
            "eventId": req.event_id, "deferActivation": req.defer_activation,
        }, "InvalidRankRequest")

        def ranking(prediction: Any) -> dict[str, Any]:
            probs = dict.fromkeys(ids, 0.0)
            if prediction is None:
                probs[baseline] = 1.0
            else:
                for idx, p in prediction[0]:
                    probs[ids[idx]] = float(p)
            return {"ranking": [{"id": i, "probability": probs[i]} for i in ids]}

        answer = self._rank(multi, ranking)
        chosen = answer["slots"][0]["rewardActionId"]
        return {"ranking": answer.get("ranking", []), "eventId": answer["eventId"], "rewardActionId": chosen}

    # ------------------------------------------------------------ reward
    def reward(self, event_id: str, reward: dict[str, Any]) -> dict[str, Any]:
        """Record per-slot rewards (``{"reward": [{"slotId", "value"}]}``) for an event.

        Returns a receipt: ``{"eventId", "status"}`` where status is ``pending`` (waiting
        for more rewards or the wait time), ``learned`` (this call completed the event),
        or ``duplicate`` (the event was already learned and these slots already had
        their earliest reward; nothing changes). A reward for an unknown event is a
        404; one that arrives after the event was closed is logged as late and
        answered with a 409, never silently dropped.
        """
        req = parse(MultiSlotRewardRequest, reward, "InvalidRewardRequest")
        values = [(r.slot_id, r.value) for r in req.reward]
        return self._reward(event_id, values)

    def reward_single(self, event_id: str, reward: dict[str, Any]) -> dict[str, Any]:
        """Single-slot reward ``{"value"}`` for an event with one slot."""
        req = parse(RewardRequest, reward, "InvalidRewardRequest")
        with self._locked():
            slot_ids = self._slot_ids(event_id)
            if len(slot_ids) != 1:
                raise PersonalizerError("InvalidRewardRequest",
                                        f"event '{event_id}' has {len(slot_ids)} slots; use the multi-slot reward")
            return self._reward(event_id, [(slot_ids[0], req.value)])

    def _slot_ids(self, event_id: str) -> list[str]:
        p = self._pending.get(event_id)
        if p is not None:
            return list(p.slot_ids)
        stored = self._log.get_event(event_id)
        if stored is None:
            raise _unknown_event(event_id)
        return [s["id"] for s in stored.response["slots"]]

    def _reward(self, event_id: str, values: list[tuple[str, float]]) -> dict[str, Any]:
        with self._locked():
            now = self._clock()
            self._process_due(now)
            p = self._pending.get(event_id)
            stored = None if p is not None else self._log.get_event(event_id)
            if p is None and stored is None:
                raise _unknown_event(event_id)
            slot_ids = p.slot_ids if p is not None else [s["id"] for s in stored.response["slots"]]
            for slot_id, _ in values:
                if slot_id not in slot_ids:
                    raise PersonalizerError("InvalidRewardRequest",
                                            f"slotId '{slot_id}' is not a slot of event '{event_id}'", 400)
            if stored is not None:
                return self._reward_closed(stored, values, now)
            # Commit, then change memory, then learn: a failed commit (a full disk) leaves the
            # pending event and its rewards as they were, so the same call can be retried.
            merged = self._merged_rewards(p, values)
            complete = self._complete(p, merged)
            with self._tx():
                self._log.add_rewards(event_id, values, now)
                closing = self._close_in_log(p, merged, now) if complete else None
            p.rewards = merged
            self._count("rewards", len(values))
            if closing is not None:
                self._after_close(p, closing, now)
                return {"eventId": event_id, "status": "learned"}
            return {"eventId": event_id, "status": "pending"}

    def _reward_closed(self, stored: StoredEvent, values: list[tuple[str, float]], now: float) -> dict[str, Any]:
        event_id = stored.event_id
        had = {slot for slot, _, _ in self._log.rewards_of(event_id)}
        if self._config.reward_aggregation == "earliest" and all(slot in had for slot, _ in values):
            return {"eventId": event_id, "status": "duplicate"}
        with self._tx():
            self._log.add_rewards(event_id, values, now, late=True)
            self._count("rewards", len(values))
        why = {"discarded": "it was never activated",
               "logged": "it was logged (LoggingOnly)"}.get(stored.status, "its reward wait time had passed")
        raise PersonalizerError(
            "InvalidRewardRequest",
            f"event '{event_id}' was closed at {iso_utc(stored.closed)} because {why}; "
            "this late reward was logged but not learned", 409)

    def _merged_rewards(self, p: _Pending, values: Sequence[tuple[str, float]]) -> dict[str, float]:
        """The event's joined rewards with ``values`` added (a new dict: memory changes after the commit)."""
        rewards = dict(p.rewards) if p.rewards else {}
        for slot_id, value in values:
            if self._config.reward_aggregation == "sum":
                rewards[slot_id] = rewards.get(slot_id, 0.0) + value
            else:
                rewards.setdefault(slot_id, value)
        return rewards

    def _complete(self, p: _Pending, rewards: dict[str, float] | None = None, activated: bool | None = None) -> bool:
        """Earliest aggregation learns as soon as every slot has a reward (and the event is active)."""
        rewards = p.rewards if rewards is None else rewards
        active = p.activated if activated is None else activated
        return (self._config.reward_aggregation == "earliest" and rewards is not None
                and len(rewards) == len(p.slot_ids) and (active or not p.deferred))

    # ------------------------------------------------------------ activate
    def activate(self, event_id: str) -> dict[str, Any]:
        """Activate a deferred event so it will be learned; a no-op for active ones."""
        with self._locked():
            now = self._clock()
            self._process_due(now)
            p = self._pending.get(event_id)
            if p is None:
                stored = self._log.get_event(event_id)
                if stored is None:
                    raise PersonalizerError("InvalidEventIdToActivate",
                                            f"no event '{event_id}' was ranked; nothing to activate", 404)
                if stored.status == "discarded":
                    raise PersonalizerError(
                        "InvalidEventIdToActivate",
                        f"event '{event_id}' was discarded at {iso_utc(stored.closed)}: not activated within the "
                        f"reward wait time ({self._config.reward_wait_time})", 409)
                return {"eventId": event_id, "status": stored.status}
            if p.deferred and not p.activated:
                complete = self._complete(p, activated=True)
                with self._tx():  # commit first: a failed write leaves the event unactivated
                    self._log.set_activated(event_id, now)
                    closing = self._close_in_log(p, p.rewards, now) if complete else None
                p.activated = True
                p.deadline = now + self._wait
                heapq.heappush(self._deadlines, (p.deadline, event_id))
                if closing is not None:
                    self._after_close(p, closing, now)
                    return {"eventId": event_id, "status": "learned"}
            return {"eventId": event_id, "status": "pending"}

    # ------------------------------------------------------------ join and learn
    def process_due(self) -> int:
        """Close every event whose reward wait time has passed; returns how many.

        Also enforces ``logRetentionDays`` (``enforce_retention``), in one bounded batch at most once a minute.
        """
        with self._locked():
            closed = self._process_due(self._clock())
        if self._clock() >= getattr(self, "_retention_due", 0.0):
            self._retention_due = self._clock() + RETENTION_INTERVAL
            try:
                self.enforce_retention()
            except PersonalizerError as exc:  # e.g. a full disk: retried next time
                log.warning("log retention failed: %s", exc.message)
        return closed

    def enforce_retention(self, limit: int = 1000) -> int:
        """Delete up to ``limit`` closed events older than ``logRetentionDays`` (-1: keep everything), with their
        rewards; returns how many. Learned events after the newest checkpoint stay until one covers them."""
        with self._locked():
            days = self._config.log_retention_days
            if days < 0:
                return 0
            newest = self._log.latest_checkpoint()
            deleted = self._log.delete_expired(self._clock() - days * 86400.0, newest.learn_seq if newest else 0,
                                               limit)
            if deleted:
                self._counts = None
            return deleted

    def _process_due(self, now: float) -> int:
        closed = 0
        while self._deadlines and self._deadlines[0][0] <= now:
            deadline, event_id = self._deadlines[0]
            p = self._pending.get(event_id)
            if p is None or p.deadline != deadline:
                heapq.heappop(self._deadlines)
                continue  # stale heap entry: learned already, or activation moved its deadline
            # The heap entry goes only once the closing committed: a failed write keeps it due.
            if p.deferred and not p.activated:
                self._log.close_event(event_id, "discarded", now, None, None)  # one statement: its own commit
                heapq.heappop(self._deadlines)
                del self._pending[event_id]
                self._recent.pop(event_id)
                self._count("discarded")
            else:
                self._close(p, p.rewards, now)
                heapq.heappop(self._deadlines)
            closed += 1
        return closed

    def _close(self, p: _Pending, rewards: dict[str, float] | None, now: float) -> None:
        """Close a complete (or timed-out) event: commit its closing, then learn it."""
        with self._tx():
            closing = self._close_in_log(p, rewards, now)
        self._after_close(p, closing, now)

    def _close_in_log(self, p: _Pending, rewards: dict[str, float] | None, now: float
                      ) -> tuple[str, int | None, list[float | None]]:
        """Write an event's closing (inside the caller's transaction); memory is not touched.

        Missing slots take the default reward. Returns (status, learn_seq, labels) for
        ``_after_close`` to apply once the transaction committed.
        """
        rewards = rewards or {}
        labels: list[float | None] = [rewards.get(s, self._config.default_reward) for s in p.slot_ids]
        if p.mode == "LoggingOnly":
            status, learn_seq = "logged", None
        else:
            status, learn_seq = "learned", self._learn_seq + 1
        self._log.close_event(p.event_id, status, now, learn_seq, labels)
        return status, learn_seq, labels

    def _after_close(self, p: _Pending, closing: tuple[str, int | None, list[float | None]], now: float) -> None:
        """After the closing committed: drop the event from memory and teach the model.

        If learning fails now, the log already says the event was learned: the model is
        rebuilt from the log (newest checkpoint + replay), which includes it.
        """
        status, learn_seq, labels = closing
        del self._pending[p.event_id]
        example = self._recent.pop(p.event_id)
        self._count(status)
        if status != "learned" or learn_seq is None:
            return
        self._learn_seq = learn_seq
        self._modified = now
        self._since_checkpoint += 1
        try:
            head, bodies, allowed, chosen, probs = example or self._logged_example(p.event_id)
            self._learn_example(p.event_id, head, bodies, allowed, chosen, probs, labels, p.mode)
        except Exception as exc:
            log.error("learning event %s failed after its closing was committed (%s); rebuilding the model "
                      "from the event log", p.event_id, _first_line(exc), exc_info=True)
            self._rebuild_model()
        if self._since_checkpoint >= self._checkpoint_every:
            try:
                with self._tx():
                    self._checkpoint("periodic")
            except PersonalizerError as exc:  # e.g. a full disk: the log still replays; retried next event
                log.warning("periodic checkpoint failed: %s", exc.message)

    def _logged_example(self, event_id: str) -> _Example:
        """Rebuild an event's VW example from its logged request, exactly as rank built it."""
        source = self._log.event_source(event_id)
        if source is None:
            raise PersonalizerError("InternalServerError", f"event '{event_id}' is missing from the log", 500)
        request_json, _, response = source
        head, bodies, allowed, index = self._catalogs.encode(json.loads(request_json), event_id, request_json)
        chosen = [index[s["rewardActionId"]] for s in response["slots"]]
        probs = [float(s["probability"]) for s in response["slots"]]
        return head, bodies, allowed, chosen, probs

    def _rebuild_model(self) -> None:
        """Rebuild the model from the log after a failed live learn; a 503 if even that fails."""
        try:
            replayed, _ = self._load_model()
        except Exception as exc:
            raise PersonalizerError(
                "ServiceUnavailable", f"the model could not be rebuilt from the log ({_first_line(exc)}); the "
                "rewards are stored: restart the server to rebuild it", 503) from None
        self._since_checkpoint = replayed

    def _learn_example(self, event_id: str, head: list[str], bodies: Sequence[str], allowed: Sequence[Sequence[int]],
                       chosen: Sequence[int], probs: Sequence[float], labels: Sequence[float | None],
                       mode: str) -> None:
        """Learn one closed event (live and in replay alike, so both build the same model)."""
        vw_workspace.learn(self._vw, labeled_example(head, bodies, allowed, chosen, probs, labels, mode))
        if mode == "Apprentice":
            contrast = apprentice_contrast(allowed, chosen, event_id)
            if contrast is not None:
                vw_workspace.learn(self._vw, labeled_example(head, bodies, allowed, contrast,
                                                             [1.0] * len(contrast), [None] * len(contrast)))

    # ------------------------------------------------------------ explanations
    def _attach_explanations(self, canonical: dict[str, Any], event_id: str, answer: dict[str, Any],
                             encoded: encoding.Encoded | None = None,
                             last_scores: vw_explain.SlotScores | None = None) -> None:
        """Add each slot's ``explanation`` to a rank answer (the caller holds the lock)."""
        head, bodies, allowed, index = encoded or encode_request(canonical, event_id)
        chosen = [index[s["rewardActionId"]] for s in answer["slots"]]
        if self._config.learning_mode != "Online" and all(
                s["rewardActionId"] == c["baselineAction"] for s, c in zip(answer["slots"], canonical["slots"],
                                                                           strict=True)):
            why = f"{self._config.learning_mode} mode serves each slot's baselineAction, not the model's choice"
            for slot in answer["slots"]:
                slot["explanation"] = {"available": False, "explored": None, "reason": why}
            return
        cached = self._explainer
        settings = (self._policy.arguments, self._config.exploration_percentage)  # what self.arguments derives from
        if cached is None or cached[0] is not self._vw or cached[1] != settings:
            cached = self._explainer = (self._vw, settings, vw_explain.Explainer(self._vw, self.arguments))
        explanations = vw_explain.explain_page(self._vw, cached[2], head, bodies, allowed, chosen,
                                               [a["id"] for a in canonical["actions"]], last=last_scores)
        for slot, explanation in zip(answer["slots"], explanations, strict=True):
            slot["explanation"] = explanation

    def explain_event(self, event_id: str) -> dict[str, Any]:
        """Why each slot of a logged event got its action, by the model as it is now (it may have learned since).

        Returns ``{"eventId", "slots": [{"id", "rewardActionId", "explanation"}]}``; 404 for an unknown event.
        """
        with self._lock:
            stored = self._log.get_event(event_id)
            if stored is None:
                raise _unknown_event(event_id)
            request, response = stored.request, stored.response
            answer = {"eventId": event_id, "slots": [{"id": s["id"], "rewardActionId": s["rewardActionId"]}
                                                      for s in response["slots"]]}
            self._attach_explanations(request, event_id, answer)
            return answer

    # ------------------------------------------------------------ inspection
    def greedy(self, request: dict[str, Any]) -> dict[str, str]:
        """What the model would choose per slot with exploration off; logs nothing.

        Slots are filled in order, each later slot conditioned on the earlier slots'
        greedy choices (earlier slots are pinned to them in the VW example).
        """
        req = parse(MultiSlotRankRequest, request, "InvalidRankRequest")  # shapes and cross-field rules
        canonical = req.model_dump(by_alias=True, exclude={"event_id"})
        head, bodies, allowed, _ = encode_request(canonical, "greedy")
        ids = [a["id"] for a in canonical["actions"]]
        picks: list[int] = []
        with self._locked():
            for k in range(len(bodies)):
                lines = list(head)
                lines.extend(encoding.slot_line(bodies[j], [picks[j]]) for j in range(k))
                lines.append(encoding.slot_line(bodies[k], allowed[k]))
                dist = vw_workspace.predict(self._vw, lines)[k]
                best = max(dist, key=lambda ap: (ap[1], -ap[0]))[0]
                picks.append(best)
        return {s["id"]: ids[i] for s, i in zip(canonical["slots"], picks, strict=True)}

    @contextlib.contextmanager
    def _tx(self) -> Iterator[None]:
        """One log transaction; if it rolls back, the in-memory counts are re-read from the log."""
        try:
            with self._log.transaction():
                yield
        except BaseException:
            self._counts = None
            raise

    def _count(self, key: str, n: int = 1) -> None:
        if self._counts is not None:
            self._counts[key] = self._counts.get(key, 0) + n

    def stats(self) -> dict[str, Any]:
        """Counts for dashboards: events by status, rewards, pending in memory, settings.

        Kept in memory (read from the log once): dashboards ask on every rerun, and a
        count over a large log would hold the engine's lock while ranks wait.
        """
        with self._locked():
            if self._counts is None:
                self._counts = self._log.counts()
            counts = self._counts
            return {
                "learned": counts.get("learned", 0), "logged": counts.get("logged", 0),
                "discarded": counts.get("discarded", 0), "pending": len(self._pending),
                "rewards": counts.get("rewards", 0), "learningMode": self._config.learning_mode,
                "explorationPercentage": self._config.exploration_percentage,
                "policy": self._policy.name, "arguments": self.arguments, "home": str(self.home),
            }

    def events(self, start: float | None = None, end: float | None = None) -> list[StoredEvent]:
        """Logged events ranked in [start, end), oldest first (for evaluation and export).

        Discarded events (deferred and never activated) are left out: nobody saw them.
        """
        with self._locked():
            return list(self._log.iter_events(start, end))

    def log_events(self, start: str | None = None, end: str | None = None, after: str | None = None,
                   top: int | None = None) -> dict[str, Any]:
        """One page of the event log in the exported shape (``logexport.ExportedEvent``), every status.

        Events ranked in [start, end) (ISO-8601; naive means UTC) after the cursor ``after``, at most
        ``top`` (default 500, at most 5000). Answers ``{"value", "nextLink", "cursor"}``: ``cursor`` is
        where this page ended (pass it as ``after`` for what follows, now or later); ``nextLink``
        (``logs/events?...``, relative) is set only when more events were already there. Bad arguments
        are a 400 that reads nothing.
        """
        page = self.log_page(start, end, after, top)
        return page.to_dict(page.relative_link())

    def log_page(self, start: str | None = None, end: str | None = None, after: str | None = None,
                 top: int | None = None) -> logexport.LogPage:
        """:meth:`log_events` as read, before it becomes dicts (the server encodes it without them)."""
        lo, hi, position, size = logexport.page_arguments(start, end, after, top)
        with self._locked():  # one page at a time: ranks wait for at most one page's read
            records = list(self._log.export_events(lo, hi, position, size + 1, settle=True))
        return logexport.page_of(records, size, after, {"start": start, "end": end})

    def iter_log_events(self, start: str | None = None, end: str | None = None, after: str | None = None,
                        top: int | None = None) -> Iterator[dict[str, Any]]:
        """Every event of :meth:`log_events`, page after page (``top`` events per page)."""
        return logexport.iterate_pages(self.log_events, start, end, after, top)

    def event(self, event_id: str) -> StoredEvent | None:
        """One logged event, whatever its status, or None."""
        with self._locked():
            return self._log.get_event(event_id)

    # ------------------------------------------------------------ job records
    def save_record(self, kind: str, record_id: str, created: float, record_json: str) -> None:
        """Store one background job (``kind``: ``evaluation`` or ``featureImportance``; JSON text) in the
        event log's database: one store, one backup."""
        with self._locked():
            self._log.put_record(kind, record_id, created, record_json)

    def delete_record(self, kind: str, record_id: str) -> bool:
        """Delete one stored job; True when there was one."""
        with self._locked():
            return self._log.delete_record(kind, record_id)

    def records(self, kind: str) -> list[tuple[str, str]]:
        """(id, JSON text) of every stored job of ``kind``, oldest first."""
        with self._locked():
            return self._log.records(kind)

    # ------------------------------------------------------------ configuration
    def get_service_configuration(self) -> dict[str, Any]:
        """The service configuration with Personalizer's field names."""
        with self._locked():
            return self._config.model_dump(by_alias=True)

    def update_service_configuration(self, configuration: dict[str, Any]) -> dict[str, Any]:
        """Replace the configuration (fields not given keep their value); returns the new one."""
        if not isinstance(configuration, dict):
            raise PersonalizerError("InvalidServiceConfiguration", "configuration must be a JSON object")
        with self._locked():
            merged = {**self._config.model_dump(by_alias=True), **configuration}
            cfg = parse(ServiceConfiguration, merged, "InvalidServiceConfiguration")
            cfg.last_configuration_edit_date = iso_utc(self._clock())
            old_args = self.arguments
            previous = self._config
            self._config = cfg
            try:
                if self.arguments != old_args:
                    self._vw = self._workspace(self._model_bytes())
            except Exception:
                self._config = previous
                raise
            self._wait = cfg.reward_wait_seconds
            self._log.set_setting("service", cfg.model_dump(by_alias=True))
            return cfg.model_dump(by_alias=True)

    def get_policy(self) -> dict[str, Any]:
        """The learning policy: name and VW arguments (epsilon as configured)."""
        with self._locked():
            return {"name": self._policy.name, "arguments": self.arguments}

    def update_policy(self, policy: dict[str, Any], *, exploration_percentage: float | None = None,
                      note: ChangeNote | None = None) -> dict[str, Any]:
        """Set new learning settings; the model starts fresh with them (the log is kept).

        The arguments are parsed (typed allow-list), then tried in a child process on
        examples shaped like live traffic before the live engine builds them: a policy
        that crashes, aborts or freezes VW is a 400 and changes nothing.
        ``exploration_percentage`` sets the configured exploration in the same step (an
        evaluation's policy runs with its own ``--epsilon``). The change is recorded in the
        policy history (``note``: who and why; default an API update) in the same transaction.
        """
        self._change_policy(policy, exploration_percentage, note or ChangeNote())
        return self.get_policy()

    def _checked_policy(self, policy: Any, exploration_percentage: float | None) -> PolicyContract:
        """A policy change's checks, before anything changes: the contract, the argument allow-list,
        the exploration, then the child-process trial (outside the lock: ranks go on meanwhile)."""
        contract = parse(PolicyContract, policy, "InvalidPolicyContract")
        parse_arguments(contract.arguments)
        if exploration_percentage is not None:
            parse(ServiceConfiguration, {"explorationPercentage": exploration_percentage},
                  "InvalidServiceConfiguration")
        with self._locked():
            exploration = self._config.exploration_percentage if exploration_percentage is None \
                else exploration_percentage
            args = effective_arguments(contract.arguments, exploration)
            examples = self._trial_examples()
        if contract.arguments != DEFAULT_POLICY_ARGUMENTS:  # the shipped default is known to work
            trial.trial_policy(args, examples)
        return contract

    def _change_policy(self, policy: dict[str, Any], exploration_percentage: float | None, note: ChangeNote) -> int:
        """Install a policy (and exploration) after its trial and record the change; returns the change's id."""
        contract = self._checked_policy(policy, exploration_percentage)
        with self._locked():
            now = self._clock()
            before = self._policy_snapshot()
            previous = (self._vw, self._policy, self._config, self._created, self._modified)
            config = self._config
            if exploration_percentage is not None and exploration_percentage != config.exploration_percentage:
                config = config.model_copy(update={"exploration_percentage": float(exploration_percentage),
                                                   "last_configuration_edit_date": iso_utc(now)})
            vw = self._workspace(arguments=effective_arguments(contract.arguments, config.exploration_percentage))
            self._vw, self._policy, self._config = vw, contract, config
            try:
                with self._tx():
                    if config is not previous[2]:
                        self._log.set_setting("service", config.model_dump(by_alias=True))
                    self._log.set_setting("policy", contract.model_dump(by_alias=True))
                    self._log.set_setting("policy_trial", contract.arguments)
                    self._checkpoint("policy")
                    change_id = self._log.add_policy_change(now, note.who, note.action, note.evaluation_id, before,
                                                            self._policy_snapshot(), note.details)
            except BaseException:  # nothing was written: the live policy stays as it was
                self._vw, self._policy, self._config, self._created, self._modified = previous
                vw.finish()
                raise
            return change_id

    def reset_policy(self, *, note: ChangeNote | None = None) -> dict[str, Any]:
        """Back to the default policy; returns it."""
        return self.update_policy({"name": DEFAULT_POLICY_NAME, "arguments": DEFAULT_POLICY_ARGUMENTS},
                                  note=note or ChangeNote(action="reset"))

    # ------------------------------------------------------------ policy history
    def _policy_snapshot(self) -> dict[str, Any]:
        return {"name": self._policy.name, "arguments": self.arguments,
                "explorationPercentage": self._config.exploration_percentage}

    def policy_history(self, limit: int | None = None) -> list[dict[str, Any]]:
        """Recorded policy changes, newest first (see ``personalizer.policy_history``)."""
        with self._lock:
            return [change_to_dict(c) for c in self._log.policy_changes(limit)]

    def policy_change(self, change_id: str | int) -> dict[str, Any]:
        """One recorded policy change; 404 when there is none with this id."""
        with self._lock:
            return change_to_dict(self._policy_change(change_id))

    def _policy_change(self, change_id: str | int) -> Any:
        text = str(change_id)
        number = int(text) if isinstance(change_id, int) or (text.isascii() and text.isdigit()) else -1
        change = self._log.policy_change(number) if 0 < number < 2**63 else None
        if change is None:
            raise PersonalizerError("ResourceNotFound", f"no policy change '{str(change_id)[:64]}'", 404)
        return change

    def _rollback_target(self, change_id: str | int) -> Any:
        """The recorded change a rollback undoes: 404 if unknown, 409 if its ``before`` is the live policy."""
        with self._lock:
            target = self._policy_change(change_id)
            live = self._policy_snapshot()
        before = target.before
        if same_arguments(before["arguments"], live["arguments"]) and \
                before.get("explorationPercentage") == live["explorationPercentage"]:
            raise PersonalizerError("PolicyAlreadyActive", f"the policy before change {target.id} is already the "
                                    "live policy; nothing to roll back", 409)
        return target

    def rollback_policy(self, change_id: str | int, *, who: str = "api") -> dict[str, Any]:
        """Restore the policy (and exploration) a recorded change replaced; returns the new change.

        Goes through the same parse and trial as any policy change, and is recorded itself.
        409 when that policy is already the live one.
        """
        target = self._rollback_target(change_id)
        before = target.before
        new_id = self._change_policy({"name": before["name"], "arguments": before["arguments"]},
                                     before.get("explorationPercentage"),
                                     ChangeNote(who, "rollback", details={"rollbackOf": str(target.id)}))
        with self._lock:
            return change_to_dict(self._log.policy_change(new_id))

    def auto_optimization_state(self) -> dict[str, Any]:
        """What automatic optimization last did (``personalizer.optimization``); {} before its first run."""
        with self._lock:
            return self._log.get_setting("auto_optimization") or {}

    def save_auto_optimization_state(self, state: dict[str, Any]) -> None:
        """Store automatic optimization's state (JSON) beside the other settings."""
        with self._lock:
            self._log.set_setting("auto_optimization", state)

    # ------------------------------------------------------------ model
    def export_model(self) -> bytes:
        """The current VW model file."""
        with self._locked():
            return self._model_bytes()

    def import_model(self, model: bytes) -> None:
        """Replace the model with a VW CCB model file (e.g. one exported earlier).

        VW re-applies the options stored in a model's header, so they must pass the policy
        allow-list and be CCB; then the model is tried in a child process (load, predict,
        learn, save, reload; truncated bytes refused) before the live engine loads it.
        """
        if not model:
            raise PersonalizerError("InvalidModelImportFormat", "the model file is empty")
        vw_workspace.read_header(model)
        with self._locked():
            args = self.arguments
            examples = self._trial_examples()
        trial.trial_model(model, args, examples)  # outside the lock, as update_policy
        with self._locked():
            vw = self._workspace(model)
            self._vw = vw
            with self._tx():
                self._checkpoint("import")

    def reset_model(self) -> None:
        """Start a fresh model with the current policy (the event log is kept)."""
        with self._locked():
            self._vw = self._workspace()
            with self._tx():
                self._checkpoint("reset")

    def model_properties(self) -> dict[str, Any]:
        """When the model was created (reset, import, policy change) and last learned."""
        with self._locked():
            return {"creationTime": iso_utc(self._created),
                    "lastModifiedTime": iso_utc(self._modified if self._modified is not None else self._created)}

    def log_properties(self) -> dict[str, Any]:
        """The time range the event log covers."""
        with self._locked():
            rng = self._log.date_range()
            return {"dateRange": None if rng is None else {"from": iso_utc(rng[0]), "to": iso_utc(rng[1])}}

    def delete_logs(self) -> int:
        """Delete closed events and their rewards (a checkpoint first keeps the model); returns how many."""
        with self._locked():
            with self._tx():
                self._checkpoint("periodic")
            self._counts = None
            return self._log.delete_closed()

    def health_details(self) -> dict[str, Any]:
        """What ``/health`` reports for the embedded engine (role ``all``): the store kind, the model's age
        (since it last learned, or was created) and the backlog of events whose reward wait has ended but
        are not closed yet. Read without the engine lock: health answers while the engine is busy."""
        now = self._clock()
        changed = self._modified if self._modified is not None else self._created
        pending = list(self._pending.values())  # a snapshot; closing goes on meanwhile
        return {"role": "all", "store": "postgresql" if is_postgres_url(str(self.home)) else "sqlite",
                "modelId": None, "modelAgeSeconds": None if changed is None else round(max(0.0, now - changed), 3),
                "modelError": None, "backlog": sum(1 for p in pending if p.deadline <= now)}

    # ------------------------------------------------------------ lifecycle
    def checkpoint(self) -> None:
        """Save the model now (also done every ``checkpoint_every`` learned events and on close)."""
        with self._locked(), self._tx():
            self._checkpoint("periodic")

    def close(self) -> None:
        """Checkpoint what was learned since the last checkpoint and close the log."""
        with self._lock:
            try:
                if self._since_checkpoint:
                    self.checkpoint()
            except PersonalizerError as exc:  # e.g. a full disk: nothing is lost, the next start replays
                log.warning("checkpoint on close failed: %s", exc.message)
            finally:
                self._vw.finish()
                self._log.close()

    def __enter__(self) -> LocalPersonalizer:
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()


def labeled_example(head: list[str], bodies: Sequence[str], allowed: Sequence[Sequence[int]], chosen: Sequence[int],
             probs: Sequence[float], rewards: Sequence[float | None], mode: str = "Online") -> list[str]:
    """A labeled CCB example: each slot carries ``chosen:cost:probability``.

    Online events cost ``-reward``. Apprentice events (the baseline was served) cost
    ``-(1 + reward) / 2``: always better than the 0 that ``apprentice_contrast`` teaches
    for other actions, so the model learns to imitate the baseline, while better
    outcomes still count for more.
    """
    lines = list(head)
    for body, allow, c, p, r in zip(bodies, allowed, chosen, probs, rewards, strict=True):
        reward = r or 0.0
        cost = -(1.0 + reward) / 2.0 if mode == "Apprentice" else -reward
        lines.append(encoding.slot_line(body, allow, f"{c}:{cost!r}:{max(p, MIN_PROBABILITY)!r}"))
    return lines


def apprentice_contrast(allowed: Sequence[Sequence[int]], baselines: Sequence[int], event_id: str
                        ) -> list[int] | None:
    """A page of other allowed actions (one per slot, none repeated) to learn as "not the baseline".

    Imitation needs contrast: learning only the baselines' (good) costs leaves every
    other action at whatever its features extrapolate to, and a raw numeric feature
    such as price extrapolates past the baselines. So each Apprentice event also
    teaches cost 0 for a page of other actions, drawn deterministically from the
    event id so that replay rebuilds the same model. None when no such page exists.
    """
    rng = random.Random(event_id)
    taken: set[int] = set()
    page: list[int] = []
    for allow, baseline in zip(allowed, baselines, strict=True):
        options = [a for a in allow if a != baseline and a not in taken]
        if not options:
            return None
        pick = rng.choice(options)
        taken.add(pick)
        page.append(pick)
    return page


def _copy(response: dict[str, Any]) -> dict[str, Any]:
    """A copy callers may mutate without touching the engine's record."""
    out = dict(response)
    out["slots"] = [dict(s) for s in response["slots"]]
    if "ranking" in response:
        out["ranking"] = [dict(r) for r in response["ranking"]]
    return out


def _unknown_event(event_id: str) -> PersonalizerError:
    return PersonalizerError("ResourceNotFound", f"no event '{event_id}' was ranked", 404)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
