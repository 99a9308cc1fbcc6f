"""Reference backends: what a learner is measured against (random, no personalization, the oracle).

They answer rank requests in the Personalizer shape and only count rewards and
activations, so :func:`.run.simulate` drives them like any backend.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable

from ..contract import DEFAULT_EXPLORATION
from .scenario import Scenario


def _fill_slots(request: dict, pick: Callable[[int, dict, list[str]], tuple[str, float]]) -> list[dict]:
    """Fill slots in order; each gets an allowed action not used by an earlier slot."""
    used: set[str] = set()
    filled = []
    action_ids = [a["id"] for a in request["actions"]]
    for position, slot in enumerate(request["slots"]):
        excluded = set(slot.get("excludedActions") or ())
        allowed = [a for a in action_ids if a not in used and a not in excluded]
        action_id, probability = pick(position, slot, allowed)
        used.add(action_id)
        filled.append({"id": slot["id"], "rewardActionId": action_id, "probability": probability})
    return filled


class _ReferenceBackend:
    """Shared plumbing: event ids, and reward/activate that only count calls."""

    def __init__(self) -> None:
        self.rewards = 0
        self.activations = 0

    def _respond(self, request: dict, slots: list[dict]) -> dict:
        return {"eventId": request.get("eventId") or uuid.uuid4().hex, "slots": slots}

    def reward(self, event_id: str, reward: dict) -> None:
        """Reference backends do not learn; the call is only counted."""
        self.rewards += 1

    def activate(self, event_id: str) -> None:
        """Reference backends do not defer; the call is only counted."""
        self.activations += 1


class RandomBackend(_ReferenceBackend):
    """Uniformly random allowed action per slot: the floor any learner must beat."""

    def __init__(self, seed: int | None = None) -> None:
        super().__init__()
        self._rng = random.Random(seed)

    def rank(self, request: dict) -> dict:
        """Pick uniformly among each slot's allowed, still unused actions."""
        def pick(_position: int, _slot: dict, allowed: list[str]) -> tuple[str, float]:
            return self._rng.choice(allowed), 1.0 / len(allowed)

        return self._respond(request, _fill_slots(request, pick))


class BaselineBackend(_ReferenceBackend):
    """Always each slot's baselineAction: the page without personalization."""

    def rank(self, request: dict) -> dict:
        """Show every slot's baselineAction."""
        def pick(_position: int, slot: dict, allowed: list[str]) -> tuple[str, float]:
            baseline = slot["baselineAction"]
            return (baseline, 1.0) if baseline in allowed else (allowed[0], 1.0)

        return self._respond(request, _fill_slots(request, pick))


class OracleBackend(_ReferenceBackend):
    """Knows the hidden truth; shows the oracle's page, exploring uniformly with ``epsilon``.

    With the same epsilon as a learner it is the ceiling that learner can reach.
    ``simulate`` keeps ``progress`` current so the oracle follows drift.
    """

    def __init__(self, scenario: Scenario, epsilon: float = DEFAULT_EXPLORATION, seed: int | None = None) -> None:
        super().__init__()
        if not 0.0 <= epsilon <= 1.0:
            raise ValueError("epsilon must be in [0, 1]")
        self.scenario = scenario
        self.epsilon = epsilon
        self.progress = 0.0
        self._rng = random.Random(seed)

    def rank(self, request: dict) -> dict:
        """The oracle's action per slot with probability 1-epsilon, else a uniform allowed one."""
        scenario = self.scenario
        context: dict[str, str] = {}
        for item in request["contextFeatures"]:
            context.update(item)
        phase = scenario.phase(self.progress)
        c = scenario.context_index(context)
        best = scenario.oracle_choice(context, self.progress)
        probs = scenario.rewards_at(phase, c)
        slot_index = {s: i for i, s in enumerate(scenario.slot_ids)}
        action_index = {a: i for i, a in enumerate(scenario.action_ids)}

        def pick(_position: int, slot: dict, allowed: list[str]) -> tuple[str, float]:
            target = best.get(slot["id"])
            if target not in allowed:  # taken by an earlier slot's exploration
                row = probs[slot_index[slot["id"]]]
                target = max(allowed, key=lambda a: row[action_index[a]])
            share = self.epsilon / len(allowed)
            action = self._rng.choice(allowed) if self._rng.random() < self.epsilon else target
            return action, share + (1.0 - self.epsilon if action == target else 0.0)

        return self._respond(request, _fill_slots(request, pick))
