"""Rank a visitor and answer its slots: the rank & reward page's logic, without Streamlit.

Ranks use ``deferActivation``: an event is activated only when the person
answers its first slot, so visitors that were merely looked at (a selector being
played with) are never learned. Each answer sends one reward for one slot; the
decision is recorded before the backend is called, so a second click on the same
slot sends nothing, and it is rolled back if the backend refuses.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ..contract import PersonalizerError
from ..interface import Personalizer
from ..simulation import Scenario
from .capabilities import TopPicks
from .text import context_label, explain_error, flatten_features

log = logging.getLogger(__name__)

#: What a backend call raises for anything but a bug: PersonalizerError for every refusal and
#: failure the engine or the client reports (storage errors, lost connections and timeouts are
#: converted to it), OSError for a data directory the embedded engine cannot open.
BACKEND_ERRORS: tuple[type[Exception], ...] = (PersonalizerError, OSError)


@dataclass
class SlotChoice:
    """One slot of a ranked event: what was shown, why, and the person's answer."""

    slot_id: str
    slot_features: dict[str, Any]
    action_id: str
    action_features: dict[str, Any]
    baseline_id: str
    probability: float | None
    top_pick: str | None = None        # the model's greedy choice; None when the backend cannot say
    epsilon: float | None = None       # the backend's exploration share when it tells
    decision: float | None = None      # reward sent (1 accept, 0 reject)

    @property
    def tied(self) -> bool:
        """Not the top pick, yet more likely than exploration alone allows: the model scores them equal.

        Under epsilon-greedy an explored action has probability at most epsilon (spread
        over the others); ``greedy`` breaks ties by catalog order, so a tied action that
        was sampled differs from the "top pick" without being exploration.
        """
        return (self.top_pick is not None and self.action_id != self.top_pick and self.probability is not None
                and self.epsilon is not None and self.probability > self.epsilon + 1e-9)

    @property
    def exploration(self) -> bool | None:
        """True when the shown action is not the model's top pick (ties excepted); None when unknown."""
        if self.top_pick is not None:
            return self.action_id != self.top_pick and not self.tied
        if self.probability is not None:
            # Under epsilon-greedy an explored action has probability at most epsilon, the model's
            # pick more (a tie shares it): the same call the embedded engine's greedy makes.
            return self.probability <= (self.epsilon if self.epsilon is not None else 0.5) - 1e-9
        return None


@dataclass
class RankedEvent:
    """A visitor: the context, the event id the backend gave, and one :class:`SlotChoice` per slot."""

    event_id: str
    context: dict[str, str]
    scenario: str
    slots: list[SlotChoice]
    learning_mode: str | None = None
    greedy_known: bool = False          # top picks came from the model (not a probability guess)
    experiment: int | None = None       # the experiment it was ranked in (a new one re-ranks the visitor)
    activated: bool = False
    ranked_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def slot(self, slot_id: str) -> SlotChoice:
        """The slot with this id (KeyError when the event has none)."""
        for s in self.slots:
            if s.slot_id == slot_id:
                return s
        raise KeyError(slot_id)

    @property
    def answered(self) -> int:
        """How many slots have an answer."""
        return sum(s.decision is not None for s in self.slots)

    def history_slots(self) -> list[dict[str, Any]]:
        """The slots as :meth:`History.add_ranked` wants them."""
        return [{"slot": s.slot_id, "action": s.action_id, "baseline": s.baseline_id,
                 "probability": s.probability, "exploration": s.exploration} for s in self.slots]


def learning_settings(backend: Personalizer) -> tuple[str | None, float | None]:
    """The backend's learning mode (``Online``, ``Apprentice``, ``LoggingOnly``) and exploration share, if told."""
    try:
        config = backend.get_service_configuration()
    except PersonalizerError as exc:  # a remote backend may not offer it; the card then just says less
        log.info("could not read the service configuration: %s", exc)
        return None, None
    epsilon = config.get("explorationPercentage")
    return config.get("learningMode"), float(epsilon) if isinstance(epsilon, (int, float)) else None


def rank_visitor(backend: Personalizer, scenario: Scenario, context: dict[str, str],
                 greedy: TopPicks | None = None) -> RankedEvent:
    """Rank a new visitor in ``context`` (deferred activation) and say, per slot, if it explored.

    Exploration is read from ``greedy`` (the model's top pick with exploration off,
    :func:`.capabilities.top_picks`) when the backend offers one; otherwise guessed
    from the probability.
    """
    request = scenario.rank_request(context, defer=True)
    response = backend.rank(request)
    mode, epsilon = learning_settings(backend)
    top: dict[str, str] = {}
    if greedy is not None and mode in (None, "Online"):
        try:
            top = dict(greedy(scenario.rank_request(context)))
        except PersonalizerError as exc:  # exploration is a nicety; never fail a rank for it
            log.info("greedy lookup failed: %s", exc)
    by_id = {s.get("id"): s for s in response.get("slots", [])}
    actions = {a["id"]: a for a in scenario.actions}
    slots: list[SlotChoice] = []
    for slot in scenario.slots:
        answer = by_id.get(slot["id"])
        if answer is None or answer.get("rewardActionId") not in actions:
            raise PersonalizerError("InvalidRankResponse",
                                    f"the backend's answer has no valid action for slot '{slot['id']}'", 502)
        action = actions[answer["rewardActionId"]]
        probability = answer.get("probability")
        slots.append(SlotChoice(
            slot_id=slot["id"], slot_features=flatten_features(slot.get("features")),
            action_id=action["id"], action_features=flatten_features(action.get("features")),
            baseline_id=slot["baselineAction"],
            probability=float(probability) if isinstance(probability, (int, float)) else None,
            top_pick=top.get(slot["id"]), epsilon=epsilon,
        ))
    event_id = response.get("eventId")
    if not event_id:
        raise PersonalizerError("InvalidRankResponse", "the backend's answer has no eventId", 502)
    return RankedEvent(event_id=event_id, context=dict(context), scenario=scenario.name, slots=slots,
                       learning_mode=mode, greedy_known=bool(top))


def answer(backend: Personalizer, event: RankedEvent, slot_id: str, value: float) -> bool:
    """Send the person's answer for one slot: activate the event on its first answer, then reward.

    Returns False (and sends nothing) when the slot was already answered. On a
    backend error the decision is rolled back and the error raised, so the person
    can try again.
    """
    slot = event.slot(slot_id)
    if slot.decision is not None:
        return False
    slot.decision = float(value)  # claimed before any call: a second click finds it taken
    try:
        if not event.activated:
            backend.activate(event.event_id)
            event.activated = True
        backend.reward(event.event_id, {"reward": [{"slotId": slot_id, "value": float(value)}]})
    except BaseException:
        slot.decision = None
        raise
    return True


def exploration_label(slot: SlotChoice, event: RankedEvent, name: Callable[[str], str] = str) -> str:
    """Plain-text line for a card: the probability of the choice and whether it explored.

    ``name`` turns an action id into its display name.
    """
    if event.learning_mode in ("Apprentice", "LoggingOnly"):
        return f"Baseline served: learning mode is {event.learning_mode}"
    p = "probability not reported" if slot.probability is None else f"probability {slot.probability:.0%}"
    if slot.top_pick is not None:
        if slot.tied:
            return f"Tied with the model's top pick {name(slot.top_pick)} ({p})"
        if slot.exploration:
            return f"Exploring ({p}); the model's top pick is {name(slot.top_pick)}"
        return f"The model's top pick ({p})"
    if slot.probability is None:
        return "Probability not reported by the backend"
    if slot.exploration:
        return f"Exploring ({p})"
    return f"The model's top pick ({p})"


def error_text(exc: BaseException) -> str:
    """A backend error as one readable line: what it means, then the code and message; never a traceback."""
    if isinstance(exc, PersonalizerError):
        meaning = explain_error(exc.code)
        detail = f"{exc.code} (HTTP {exc.status}): {exc.message}"
        return f"{meaning} ({detail})" if meaning else detail
    message = str(exc).strip() or type(exc).__name__
    return f"{type(exc).__name__}: {message}"


def contexts_equal(event: RankedEvent | None, scenario: Scenario | None, context: dict[str, str]) -> bool:
    """True when ``event`` was ranked for this scenario and context (no new rank needed)."""
    return (event is not None and scenario is not None and event.scenario == scenario.name
            and event.context == context)


__all__ = [
    "BACKEND_ERRORS", "RankedEvent", "SlotChoice", "answer", "context_label", "contexts_equal", "error_text",
    "exploration_label", "learning_settings", "rank_visitor",
]
