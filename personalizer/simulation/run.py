"""The simulation loop: visitors from a scenario's contexts, ranked by a backend, rewarded by the hidden truth.

:func:`simulate` plays visitors against any backend that offers the rank,
reward and activate part of :class:`~personalizer.interface.Personalizer`, so the
same run works on the embedded engine, a remote client or the reference backends
of :mod:`.reference`. The accept-rate helpers below it summarize a run's records.
"""

from __future__ import annotations

import collections
import math
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from .scenario import Scenario

Record = dict[str, Any]
#: Per slot of one context in one phase: {actionId: expected reward}, the oracle's and the baseline's.
_SlotTruth = tuple[dict[str, float], float, float]


class Backend(Protocol):
    """What a simulation drives: the rank/reward/activate part of ``interface.Personalizer``
    (the engine and the HTTP client), which the reference backends implement too."""

    def rank(self, request: dict) -> dict: ...

    def reward(self, event_id: str, reward: dict) -> object: ...

    def activate(self, event_id: str) -> object: ...


@runtime_checkable
class FollowsProgress(Protocol):
    """A backend that is told how far the run is (the oracle follows drift)."""

    progress: float


def simulate(
    backend: Backend,
    scenario: Scenario,
    n: int,
    seed: int = 0,
    *,
    on_progress: Callable[[int, int], None] | None = None,
    progress_every: int = 100,
    event_prefix: str | None = None,
) -> list[Record]:
    """Play ``n`` visitors against ``backend``; one record per (event, slot).

    Each visitor comes from a uniformly drawn context, the backend ranks, and
    each slot is accepted (reward 1) with the hidden probability of the shown
    action, else rejected (reward 0); all slots go in one reward call. Record
    fields: index, eventId, context, contextKey, slotId, actionId,
    baselineActionId, probability (None if the backend gave none), accepted,
    expected (hidden accept probability of the shown action), oracle_expected,
    baseline_expected, phase (0, or 1 after drift).

    The same seed gives the same visitors (contexts) and coin flips. Event ids
    are ``f"{event_prefix}{index}"``; the default prefix ``sim-{seed}-{random}-``
    is fresh per run, because a durable engine answers a repeated eventId from
    its log. Pass a fixed prefix (on a fresh engine) for a run that repeats
    exactly: the engine seeds its exploration with the eventId.
    If the backend has a ``progress`` attribute it is set to the run's progress
    in [0, 1] before each rank, so reference backends can follow drift.

    The scenario's ``rewards`` settings apply: graded rewards (``accepted`` then
    holds the reward value), rewards sent ``delay`` events late (the rest are
    sent at the end of the run), and a ``missing`` share of events never rewarded.
    """
    if n < 0:
        raise ValueError("n must be >= 0")
    draws = _Draws.of(scenario, n, seed)
    prefix = f"sim-{seed}-{uuid.uuid4().hex[:8]}-" if event_prefix is None else event_prefix
    visitors = _Visitors.of(scenario)
    late = _LateRewards(backend)
    delay = int(scenario.reward_settings["delay"])
    told = backend if isinstance(backend, FollowsProgress) else None
    switch = n if scenario.drift_at is None else math.ceil(scenario.drift_at * n)
    records: list[Record] = []
    every = max(1, int(progress_every))
    play, never, waiting = visitors.play, draws.never, late.waiting
    for i in range(n):
        if told is not None:
            told.progress = i / n
        event_id, rewards = play(backend, i, 1 if i >= switch else 0, draws, f"{prefix}{i}", records)
        if not never[i]:
            waiting.append((i + delay, event_id, rewards))
        if waiting and waiting[0][0] <= i:
            late.send_due(i)
        if on_progress is not None and ((i + 1) % every == 0 or i + 1 == n):
            on_progress(i + 1, n)
    late.send_all()  # the visitors come back after the run
    if on_progress is not None and n == 0:
        on_progress(0, 0)
    return records


@dataclass
class _Draws:
    """A run's random draws, all made up front: the same seed gives the same visitors and coin flips."""

    contexts: list[int]          # the context number of each visitor
    coins: list[list[float]]     # per visitor and slot, in [0, 1): accept below the expected reward
    never: list[bool]            # the visitors whose reward never arrives
    graded: bool                 # graded rewards: the expected reward plus noise, not a coin flip
    noise: float

    @classmethod
    def of(cls, scenario: Scenario, n: int, seed: int) -> _Draws:
        rng = np.random.default_rng(seed)
        contexts = rng.integers(0, len(scenario.contexts), size=n).tolist()
        coins = rng.random((n, len(scenario.slot_ids))).tolist()
        settings = scenario.reward_settings
        # A second stream, so scenarios without these settings replay exactly as before.
        extra = np.random.default_rng([seed, 1])
        never = (extra.random(n) < float(settings["missing"])).tolist()
        return cls(contexts, coins, never, settings["type"] == "graded", float(settings["noise"]))


@dataclass
class _Visitors:
    """Everything per context a run reuses: the rank request, the key, and the truth per phase and slot."""

    scenario: Scenario
    requests: list[dict[str, Any]]
    keys: list[str]
    baselines: list[str]
    truth: list[list[list[_SlotTruth]]]   # phase, context, slot

    @classmethod
    def of(cls, scenario: Scenario) -> _Visitors:
        baselines = [s["baselineAction"] for s in scenario.slots]
        requests = [
            {"contextFeatures": scenario.context_features(ctx), "actions": scenario.actions, "slots": scenario.slots}
            for ctx in scenario.contexts
        ]
        keys = ["|".join(map(str, ctx.values())) for ctx in scenario.contexts]
        baseline_index = [scenario.action_ids.index(b) for b in baselines]
        truth = []
        for phase in range(scenario.phase_count):
            per_context = []
            for c in range(len(scenario.contexts)):
                probs, oracle = scenario.rewards_at(phase, c), scenario.oracle_at(phase, c)
                per_context.append([
                    (dict(zip(scenario.action_ids, probs[s].tolist(), strict=True)), float(probs[s, oracle[s]]),
                     float(probs[s, baseline_index[s]]))
                    for s in range(len(scenario.slot_ids))
                ])
            truth.append(per_context)
        return cls(scenario, requests, keys, baselines, truth)

    def play(self, backend: Backend, i: int, phase: int, draws: _Draws, event_id: str,
             records: list[Record]) -> tuple[str, list[dict[str, Any]]]:
        """Rank visitor ``i``, append one record per slot; returns its eventId and the rewards it will send."""
        c = draws.contexts[i]
        response = backend.rank({**self.requests[c], "eventId": event_id})
        event_id = response.get("eventId", event_id)
        chosen = {slot["id"]: slot for slot in response["slots"]}
        rewards = []
        row = self.truth[phase][c]
        flips, graded, noise = draws.coins[i], draws.graded, draws.noise
        append = records.append
        for s, slot_id in enumerate(self.scenario.slot_ids):
            slot = chosen.get(slot_id)
            if slot is None:
                raise ValueError(f"backend response for event {event_id!r} has no slot {slot_id!r}")
            action_id = slot["rewardActionId"]
            by_action, oracle_p, baseline_p = row[s]
            p = by_action.get(action_id)
            if p is None:
                raise ValueError(f"backend ranked unknown action {action_id!r} in slot {slot_id!r}")
            # Graded: mean p plus symmetric noise that never needs clipping; binary: a coin flip.
            accepted = p + min(noise, 1.0 - abs(p)) * (2.0 * flips[s] - 1.0) if graded else int(flips[s] < p)
            rewards.append({"slotId": slot_id, "value": float(accepted)})
            append({
                "index": i,
                "eventId": event_id,
                "context": self.scenario.contexts[c],
                "contextKey": self.keys[c],
                "slotId": slot_id,
                "actionId": action_id,
                "baselineActionId": self.baselines[s],
                "probability": slot.get("probability"),
                "accepted": accepted,
                "expected": p,
                "oracle_expected": oracle_p,
                "baseline_expected": baseline_p,
                "phase": phase,
            })
        return event_id, rewards


class _LateRewards:
    """Rewards waiting for their visitor's turn (``delay`` events after the rank), sent in order."""

    def __init__(self, backend: Backend) -> None:
        self._backend = backend
        #: (due visitor index, eventId, rewards), in the order they fall due.
        self.waiting: collections.deque[tuple[int, str, list[dict[str, Any]]]] = collections.deque()

    def send_due(self, now: int) -> None:
        """Send every reward due by visitor ``now``."""
        while self.waiting and self.waiting[0][0] <= now:
            _, event_id, rewards = self.waiting.popleft()
            self._backend.reward(event_id, {"reward": rewards})

    def send_all(self) -> None:
        """Send the rest (the visitors come back after the run)."""
        for _, event_id, rewards in self.waiting:
            self._backend.reward(event_id, {"reward": rewards})
        self.waiting.clear()


def accept_rate(records: Sequence[Record], start: int = 0, stop: int | None = None) -> float:
    """Mean reward over all slots of events ``start <= index < stop`` (nan if none)."""
    values = [r["accepted"] for r in records if r["index"] >= start and (stop is None or r["index"] < stop)]
    return sum(values) / len(values) if values else math.nan


def window_accept_rates(records: Sequence[Record], window: int = 500) -> list[float]:
    """Accept rate of each consecutive block of ``window`` events (last one may be short)."""
    sums: dict[int, list[int]] = {}
    for r in records:
        total = sums.setdefault(r["index"] // window, [0, 0])
        total[0] += r["accepted"]
        total[1] += 1
    return [sums[k][0] / sums[k][1] for k in sorted(sums)]


def greedy_agreement(
    greedy: Callable[[dict], Mapping[str, str]], scenario: Scenario, progress: float = 1.0
) -> float:
    """Share of (context, slot) pairs where ``greedy(request)`` picks the oracle's action.

    ``greedy`` is e.g. the engine's ``greedy`` (exploration off, logs nothing);
    ``progress`` picks the preference profile (1.0: end of run, after drift).
    """
    hits = total = 0
    for context in scenario.contexts:
        picks = greedy(scenario.rank_request(context))
        for slot_id, action_id in scenario.oracle_choice(context, progress).items():
            hits += picks.get(slot_id) == action_id
            total += 1
    return hits / total
