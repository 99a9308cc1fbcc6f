"""A scenario: a catalog, the contexts visitors come from, and their hidden preferences.

A :class:`Scenario` is a catalog (actions and slots in the Personalizer
multi-slot shapes), the context a visitor brings (time of day, device, ...) and
the hidden truth: the probability that a visitor in a context accepts an action
shown in a slot. Its checks live in :mod:`.checks`, the compilation of its
preference profiles in :mod:`.preferences`, the oracle's page in :mod:`.oracle`.

Scenario JSON (see ``personalizer/scenarios/*.json``)::

    {"name": "...", "description": "...",
     "context": {"time": ["morning", ...], "device": ["mobile", ...]},
     "actions": [{"id": ..., "features": [{...}]}, ...],
     "slots": [{"id": ..., "features": [{...}], "excludedActions": [...],
                "baselineAction": ...}, ...],
     "preferences": PREFERENCES,
     "drift": {"at": 0.5, "preferences": PREFERENCES}}      # optional

where PREFERENCES is either additive::

    {"type": "additive",
     "base": {actionId: P},                                  # P: number or {slotId: number}
     "effects": {feature: {value: {actionId: D}}}}           # optional; D: number or {slotId: number}

(accept probability = clip(base + the effects of the visitor's context values,
0, 1): what a linear model with context x action (x slot) features can learn) or
joint, one row per combination of context values joined by ``|`` in the order
of ``context``::

    {"type": "joint", "default": 0.1,                        # default is optional
     "table": {"morning|mobile": {actionId: P}, ...}}

or a sum of feature terms (what :mod:`personalizer.scenario_generator` writes)::

    {"type": "features", "base": 0.2,
     "terms": [{"context": ["device"], "slot": "size", "action": "category",
                "weights": {"mobile|large|Sports": 0.3, ...}}, ...]}

where a term's key joins, in this order, the values of its categorical context
features, the slot's feature ``slot`` and the action's feature ``action`` (``"id"``
means the slot's or action's id; action and slot features are read by their
dotted JSON path, ``details.color``); a numeric context feature in ``context``
multiplies the weight instead of keying it. Expected reward = clip(base + sum of
the matching weights, low, 1).

Optional fields: ``"rewards": {"type": "binary" | "graded", "noise": 0.3,
"delay": 20, "missing": 0.1}`` (binary: reward 1 with the table's probability,
else 0; graded: the table holds expected rewards in [-1, 1] and the reward is
that value plus uniform noise of half-width ``min(noise, 1 - |value|)``, so its
mean stays exact; ``delay``: rewards arrive that many events after their rank;
``missing``: the share of events whose reward never arrives), and
``"relevance": {"matter": {"context": [...], "action": [...], "slot": [...]},
"noise": {...}}``: which features the hidden preferences use and which are pure
noise (feature names as dotted JSON paths). Context values may be strings or
numbers; a context feature named ``group.name`` is sent nested,
``{"group": {"name": value}}``.
"""

from __future__ import annotations

import copy
import itertools
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .checks import Problems, check_catalog, check_relevance, check_rewards, is_number, quoted
from .oracle import best_page
from .preferences import compile_profile

Context = Mapping[str, str]

#: The scenarios shipped with the package (``personalizer/scenarios/*.json``).
SCENARIO_DIR = Path(__file__).parent.parent / "scenarios"


@dataclass(eq=False)
class Scenario:
    """A catalog, the contexts visitors come from, and their hidden accept probabilities.

    Build one with :meth:`from_dict` (validates user-written JSON) or
    :func:`load_scenario`. Everything a simulation needs per event is
    precomputed here, so a run costs little more than the backend's own calls.
    """

    name: str
    description: str
    context_options: dict[str, list[str]]
    actions: list[dict]
    slots: list[dict]
    preferences: dict
    drift: dict | None = None
    rewards: dict | None = None
    relevance: dict | None = None

    # Precomputed views (filled by __post_init__).
    action_ids: list[str] = field(init=False, repr=False)
    slot_ids: list[str] = field(init=False, repr=False)
    contexts: list[dict[str, str]] = field(init=False, repr=False)
    _probs: np.ndarray = field(init=False, repr=False)  # (phase, context, slot, action)
    _oracle: list[list[list[int]]] = field(init=False, repr=False)  # phase, context -> slots
    _allowed: list[list[int]] = field(init=False, repr=False)  # slot -> allowed action indices
    _context_index: dict[tuple[str, ...], int] = field(init=False, repr=False)
    _low: float = field(init=False, repr=False)  # lowest expected reward: 0 (binary) or -1 (graded)

    def __post_init__(self) -> None:
        problems = Problems(self.name or "<unnamed>")
        check_catalog(self, problems)
        check_rewards(self, problems)
        check_relevance(self, problems)
        problems.raise_if_any()
        self._low = -1.0 if self.reward_settings["type"] == "graded" else 0.0
        self.action_ids = [a["id"] for a in self.actions]
        self.slot_ids = [s["id"] for s in self.slots]
        names = list(self.context_options)
        combos = list(itertools.product(*(self.context_options[n] for n in names)))
        self.contexts = [dict(zip(names, combo, strict=True)) for combo in combos]
        self._context_index = {tuple(combo): i for i, combo in enumerate(combos)}
        action_index = {a: i for i, a in enumerate(self.action_ids)}
        self._allowed = [
            [action_index[a] for a in self.action_ids if a not in set(s.get("excludedActions", []))]
            for s in self.slots
        ]
        profiles = [("preferences", self.preferences)]
        if self.drift is not None:
            if not isinstance(self.drift, dict):
                problems.add("'drift' must be an object like {\"at\": 0.5, \"preferences\": {...}}")
            else:
                at = self.drift.get("at")
                if not is_number(at) or not 0.0 < at < 1.0:
                    problems.add(f"drift.at must be a fraction of the run strictly between 0 and 1, got {at!r}")
                if "preferences" not in self.drift:
                    problems.add("drift has no 'preferences' (the profile that takes over)")
                else:
                    profiles.append(("drift.preferences", self.drift["preferences"]))
        tables = [compile_profile(self, where, prefs, problems) for where, prefs in profiles]
        problems.raise_if_any()
        self._probs = np.stack(tables)
        self._oracle = [
            [best_page(phase_probs[c], self._allowed) for c in range(len(self.contexts))]
            for phase_probs in self._probs
        ]

    @property
    def reward_settings(self) -> dict[str, Any]:
        """The reward model with every default filled in: type, noise, delay, missing."""
        return {"type": "binary", "noise": 0.0, "delay": 0, "missing": 0.0, **(self.rewards or {})}

    @property
    def lowest_reward(self) -> float:
        """The lowest expected reward a profile may hold: 0 (binary rewards) or -1 (graded)."""
        return self._low

    @property
    def phase_count(self) -> int:
        """1, or 2 for a scenario that drifts."""
        return len(self._probs)

    def rewards_at(self, phase: int, context: int) -> np.ndarray:
        """The (slot, action) expected rewards of context number ``context`` in ``phase`` (a view: do not write)."""
        return self._probs[phase, context]

    def oracle_at(self, phase: int, context: int) -> list[int]:
        """The oracle's action index per slot for context number ``context`` in ``phase``."""
        return self._oracle[phase][context]

    # ---------------------------------------------------------------- construction

    @classmethod
    def from_dict(cls, data: Any) -> Scenario:
        """Validate user-written scenario JSON; raise ValueError naming every problem."""
        if not isinstance(data, dict):
            raise ValueError("A scenario must be a JSON object")
        name = data.get("name") if isinstance(data.get("name"), str) else "<unnamed>"
        problems = Problems(name)
        required = ("name", "context", "actions", "slots", "preferences")
        for key in required:
            if key not in data:
                problems.add(f"missing required field {key!r}")
        unknown = set(data) - {*required, "description", "drift", "rewards", "relevance"}
        if unknown:
            problems.add(f"unknown field(s) {quoted(sorted(unknown))}")
        problems.raise_if_any()
        return cls(
            name=data["name"],
            description=data.get("description", ""),
            context_options=data["context"],
            actions=data["actions"],
            slots=data["slots"],
            preferences=data["preferences"],
            drift=data.get("drift"),
            rewards=data.get("rewards"),
            relevance=data.get("relevance"),
        )

    def to_dict(self) -> dict:
        """The scenario as JSON-ready data (round-trips through :meth:`from_dict`)."""
        data = {
            "name": self.name,
            "description": self.description,
            "context": self.context_options,
            "actions": self.actions,
            "slots": self.slots,
            "preferences": self.preferences,
        }
        optional = {"drift": self.drift, "rewards": self.rewards, "relevance": self.relevance}
        data.update({key: value for key, value in optional.items() if value is not None})
        return copy.deepcopy(data)

    # ---------------------------------------------------------------- queries

    @property
    def drift_at(self) -> float | None:
        """Fraction of a run after which the drift profile holds (None: no drift)."""
        return None if self.drift is None else float(self.drift["at"])

    def phase(self, progress: float) -> int:
        """0 before the drift point (or without drift), 1 after it."""
        at = self.drift_at
        return 1 if at is not None and progress >= at else 0

    def context_index(self, context: Context) -> int:
        """Position of a context in :attr:`contexts`; ValueError for an unknown one."""
        try:
            return self._context_index[tuple(context[n] for n in self.context_options)]
        except KeyError:
            raise ValueError(
                f"{dict(context)!r} is not a context of scenario {self.name!r}; "
                f"options: {self.context_options!r}"
            ) from None

    def context_features(self, context: Context) -> list[dict[str, Any]]:
        """contextFeatures for a rank request: one single-key object per feature, like the seed.

        Features named ``group.name`` share one nested object ``{"group": {"name": value}}``.
        """
        self.context_index(context)
        out: list[dict[str, Any]] = []
        groups: dict[str, dict[str, Any]] = {}
        for n in self.context_options:
            group, dot, rest = n.partition(".")
            if not dot:
                out.append({n: context[n]})
            elif group in groups:
                _nest(groups[group], rest, context[n])
            else:
                groups[group] = {}
                _nest(groups[group], rest, context[n])
                out.append({group: groups[group]})
        return out

    def rank_request(self, context: Context, event_id: str | None = None, defer: bool = False) -> dict:
        """A multi-slot rank request for a visitor in ``context`` (a fresh copy)."""
        request: dict[str, Any] = {
            "contextFeatures": self.context_features(context),
            "actions": copy.deepcopy(self.actions),
            "slots": copy.deepcopy(self.slots),
            "deferActivation": defer,
        }
        if event_id is not None:
            request["eventId"] = event_id
        return request

    def accept_probability(self, context: Context, slot_id: str, action_id: str, progress: float = 0.0) -> float:
        """Hidden probability that a visitor in ``context`` accepts ``action_id`` shown in ``slot_id``."""
        try:
            s = self.slot_ids.index(slot_id)
            a = self.action_ids.index(action_id)
        except ValueError:
            raise ValueError(f"unknown slot {slot_id!r} or action {action_id!r} in scenario {self.name!r}") from None
        return float(self._probs[self.phase(progress), self.context_index(context), s, a])

    def oracle_choice(self, context: Context, progress: float = 0.0) -> dict[str, str]:
        """The best feasible page: slotId -> actionId maximizing the summed accept probability.

        Feasible means each slot gets an allowed action and no action fills two slots.
        """
        chosen = self._oracle[self.phase(progress)][self.context_index(context)]
        return {self.slot_ids[s]: self.action_ids[a] for s, a in enumerate(chosen)}

    def expected_rewards(self, progress: float = 0.0) -> np.ndarray:
        """The hidden expected reward of every (context, slot, action), contexts as in :attr:`contexts`."""
        return self._probs[self.phase(progress)].copy()

    def page_value(self, context: Context, page: Mapping[str, str], progress: float = 0.0) -> float:
        """Expected reward of one page (slotId -> actionId), summed over its slots."""
        probs = self._probs[self.phase(progress), self.context_index(context)]
        return float(sum(probs[self.slot_ids.index(s), self.action_ids.index(a)] for s, a in page.items()))

    def policy_value(self, pick: Callable[[dict], Mapping[str, str]], progress: float = 1.0) -> float:
        """Mean page value of ``pick(rank request)`` over all contexts (visitors come uniformly from them)."""
        return float(np.mean([self.page_value(c, pick(self.rank_request(c)), progress) for c in self.contexts]))

    def oracle_value(self, progress: float = 1.0) -> float:
        """Mean page value of the oracle's pages: the most any policy can get."""
        return float(np.mean([self.page_value(c, self.oracle_choice(c, progress), progress) for c in self.contexts]))

    def random_value(self, progress: float = 1.0, draws: int = 400, seed: int = 0) -> float:
        """Mean page value of uniform in-order filling (Monte Carlo, ``draws`` pages per context)."""
        rng = np.random.default_rng(seed)
        probs = self._probs[self.phase(progress)]
        n_actions = len(self.action_ids)
        allowed = np.zeros((len(self.slot_ids), n_actions), dtype=bool)
        for s, actions in enumerate(self._allowed):
            allowed[s, actions] = True
        total = 0.0
        for c in range(len(self.contexts)):
            keys = rng.random((draws, n_actions))
            used = np.zeros((draws, n_actions), dtype=bool)
            for s in range(len(self.slot_ids)):
                open_ = allowed[s] & ~used
                picks = np.where(open_, keys, -1.0).argmax(axis=1)  # uniform among open actions
                used[np.arange(draws), picks] = True
                total += float(probs[c, s, picks].mean())
        return total / len(self.contexts)


def _nest(target: dict[str, Any], dotted: str, value: Any) -> None:
    """Put ``value`` at the dotted path inside ``target`` (creating the objects on the way)."""
    *path, last = dotted.split(".")
    for key in path:
        target = target.setdefault(key, {})
    target[last] = value


def list_scenarios() -> list[str]:
    """Names of the scenarios shipped with the package."""
    return sorted(p.stem for p in SCENARIO_DIR.glob("*.json"))


def load_scenario(name_or_path: str | Path) -> Scenario:
    """A shipped scenario by name (``"seed"``) or a scenario JSON file by path."""
    path = Path(name_or_path)
    if path.suffix == ".json" or path.is_file():
        if not path.is_file():
            raise ValueError(f"no scenario file {str(path)!r}")
        text = path.read_text(encoding="utf-8")
    else:
        resource = SCENARIO_DIR / f"{name_or_path}.json"
        if not resource.is_file():
            raise ValueError(f"unknown scenario {str(name_or_path)!r}; shipped: {', '.join(list_scenarios())}")
        text = resource.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"scenario {str(name_or_path)!r} is not valid JSON: {exc}") from None
    return Scenario.from_dict(data)
