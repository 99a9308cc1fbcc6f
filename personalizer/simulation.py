"""Simulated visitors with hidden preferences, to watch a backend learn.

A :class:`Scenario` is a catalog (actions and slots in the Personalizer
multi-slot shapes), the context a visitor brings (time of day, device, ...) and
the hidden truth: the probability that a visitor in a context accepts an action
shown in a slot. :func:`simulate` plays visitors against any backend that
offers the one interface (``rank`` / ``reward`` / ``activate``), so the same
run works on the embedded engine, a remote client or the reference backends
here (:class:`RandomBackend`, :class:`BaselineBackend`, :class:`OracleBackend`).

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

import collections
import copy
import itertools
import json
import math
import random
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from .contract import DEFAULT_EXPLORATION, MAX_ACTIONS, rank_rule_violations

__all__ = [
    "Backend",
    "BaselineBackend",
    "OracleBackend",
    "RandomBackend",
    "Scenario",
    "accept_rate",
    "greedy_agreement",
    "list_scenarios",
    "load_scenario",
    "simulate",
    "window_accept_rates",
]

Context = Mapping[str, str]
Record = dict[str, Any]

SCENARIO_DIR = Path(__file__).with_name("scenarios")
_BRUTE_FORCE_LIMIT = 120  # assignments; above this the oracle solves it as a matching (as exact, faster)


class Backend(Protocol):
    """What a simulation drives: the rank/reward/activate part of ``interface.Personalizer``
    (the engine and the HTTP client), which the reference backends below implement too."""

    def rank(self, request: dict) -> dict: ...

    def reward(self, event_id: str, reward: dict) -> None: ...

    def activate(self, event_id: str) -> None: ...


@runtime_checkable
class FollowsProgress(Protocol):
    """A backend that is told how far the run is (the oracle follows drift)."""

    progress: float


# --------------------------------------------------------------------------- scenarios


class _Problems:
    """Collects every problem of a scenario so one upload reports them all."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.items: list[str] = []

    def add(self, message: str) -> None:
        if message not in self.items:  # a bad shared value is checked once per slot
            self.items.append(message)

    def raise_if_any(self) -> None:
        if self.items:
            if len(self.items) == 1:
                raise ValueError(f"Scenario {self.name!r}: {self.items[0]}")
            lines = "\n".join(f"- {item}" for item in self.items)
            raise ValueError(f"Scenario {self.name!r} has {len(self.items)} problems:\n{lines}")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_feature_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, dict) for item in value)


def _known(ids: Iterable[str]) -> str:
    return ", ".join(repr(i) for i in ids)


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
        problems = _Problems(self.name or "<unnamed>")
        self._check_catalog(problems)
        self._check_rewards(problems)
        self._check_relevance(problems)
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
                if not _is_number(at) or not 0.0 < at < 1.0:
                    problems.add(f"drift.at must be a fraction of the run strictly between 0 and 1, got {at!r}")
                if "preferences" not in self.drift:
                    problems.add("drift has no 'preferences' (the profile that takes over)")
                else:
                    profiles.append(("drift.preferences", self.drift["preferences"]))
        tables = [self._compile(where, prefs, problems) for where, prefs in profiles]
        problems.raise_if_any()
        self._probs = np.stack(tables)
        self._oracle = [
            [self._solve(phase_probs[c]) for c in range(len(self.contexts))] for phase_probs in self._probs
        ]

    # ---------------------------------------------------------------- validation

    def _check_catalog(self, problems: _Problems) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            problems.add("'name' must be a non-empty string")
        if not isinstance(self.description, str):
            problems.add("'description' must be a string")
        options = self.context_options
        if not isinstance(options, dict) or not options:
            problems.add("'context' must be an object of feature name -> list of values, e.g. "
                         '{"time": ["morning", "night"]}')
        else:
            for feature, values in options.items():
                if not isinstance(values, list) or not values or not (
                    all(isinstance(v, str) and v for v in values) or all(_is_number(v) for v in values)
                ):
                    problems.add(f"context {feature!r} must be a non-empty list of non-empty strings "
                                 "(or of numbers)")
                elif len(set(values)) != len(values):
                    problems.add(f"context {feature!r} lists a value twice")
                elif any("|" in str(v) for v in values):
                    problems.add(f"context {feature!r} values may not contain '|' (it joins table keys)")
        if not isinstance(self.actions, list) or not self.actions:
            problems.add(f"'actions' must be a list of 1 to {MAX_ACTIONS} actions")
            return
        ids: list[str] = []
        for i, action in enumerate(self.actions):
            if not isinstance(action, dict) or not isinstance(action.get("id"), str) or not action["id"]:
                problems.add(f"action #{i + 1} needs a non-empty string 'id'")
                continue
            if not _is_feature_list(action.get("features", [])):
                problems.add(f"action {action['id']!r}: 'features' must be a list of objects")
            ids.append(action["id"])
        if not isinstance(self.slots, list):
            problems.add("'slots' must be a list of slots")
            return
        slots: list[tuple[str, list[str], Any]] = []
        for position, slot in enumerate(self.slots):
            if not isinstance(slot, dict) or not isinstance(slot.get("id"), str) or not slot["id"]:
                problems.add(f"slot #{position + 1} needs a non-empty string 'id'")
                continue
            sid = slot["id"]
            if not _is_feature_list(slot.get("features", [])):
                problems.add(f"slot {sid!r}: 'features' must be a list of objects")
            excluded = slot.get("excludedActions", [])
            if not isinstance(excluded, list) or not all(isinstance(a, str) for a in excluded):
                problems.add(f"slot {sid!r}: 'excludedActions' must be a list of action ids")
                excluded = []
            slots.append((sid, excluded, slot.get("baselineAction")))
        # The rank contract's own cross-field rules: a scenario's catalog ranks exactly when a request does.
        for problem in rank_rule_violations(ids, slots):
            problems.add(problem)

    def _check_relevance(self, problems: _Problems) -> None:
        relevance = self.relevance
        if relevance is None:
            return
        shape = '{"matter": {"context": [...], "action": [...], "slot": [...]}, "noise": {...}}'
        if not isinstance(relevance, dict) or set(relevance) - {"matter", "noise"} or not all(
            isinstance(group, dict) and not set(group) - {"context", "action", "slot"}
            and all(isinstance(names, list) and all(isinstance(n, str) for n in names) for names in group.values())
            for group in relevance.values()
        ):
            problems.add(f"'relevance' must look like {shape}")
            return
        for group in relevance.values():
            unknown = [n for n in group.get("context", []) if n not in self.context_options]
            if isinstance(self.context_options, dict) and unknown:
                problems.add(f"relevance names unknown context feature(s) {_known(unknown)}")

    def _check_rewards(self, problems: _Problems) -> None:
        rewards = self.rewards
        if rewards is None:
            return
        if not isinstance(rewards, dict):
            problems.add("'rewards' must be an object like {\"type\": \"graded\", \"noise\": 0.2}")
            return
        unknown = set(rewards) - {"type", "noise", "delay", "missing"}
        if unknown:
            problems.add(f"rewards has unknown field(s) {_known(sorted(unknown))}")
        if rewards.get("type", "binary") not in ("binary", "graded"):
            problems.add(f"rewards.type must be \"binary\" or \"graded\", got {rewards.get('type')!r}")
        noise = rewards.get("noise", 0.0)
        if not _is_number(noise) or not 0.0 <= noise <= 1.0:
            problems.add(f"rewards.noise must be a number in [0, 1], got {noise!r}")
        elif noise and rewards.get("type", "binary") != "graded":
            problems.add("rewards.noise applies to graded rewards only (binary rewards are coin flips)")
        delay = rewards.get("delay", 0)
        if not isinstance(delay, int) or isinstance(delay, bool) or not 0 <= delay <= 100_000:
            problems.add(f"rewards.delay must be a whole number of events in [0, 100000], got {delay!r}")
        missing = rewards.get("missing", 0.0)
        if not _is_number(missing) or not 0.0 <= missing < 1.0:
            problems.add(f"rewards.missing must be a share in [0, 1), got {missing!r}")

    @property
    def reward_settings(self) -> dict[str, Any]:
        """The reward model with every default filled in: type, noise, delay, missing."""
        return {"type": "binary", "noise": 0.0, "delay": 0, "missing": 0.0, **(self.rewards or {})}

    def _action_slot_values(
        self, where: str, values: dict, what: str, low: float, problems: _Problems
    ) -> Iterator[tuple[int, int, float]]:
        """(slot index, action index, number) of {actionId: x | {slotId: x}}, each x in [low, 1].

        Unknown actions or slots and numbers out of range are reported, not yielded.
        """
        action_index = {a: i for i, a in enumerate(self.action_ids)}
        slot_index = {s: i for i, s in enumerate(self.slot_ids)}
        for action, value in values.items():
            if action not in action_index:
                problems.add(f"{where} names unknown action {action!r} (known: {_known(self.action_ids)})")
                continue
            per_slot = value if isinstance(value, dict) else dict.fromkeys(self.slot_ids, value)
            for slot, x in per_slot.items():
                if slot not in slot_index:
                    problems.add(f"{where}.{action} names unknown slot {slot!r} (known: {_known(self.slot_ids)})")
                elif not _is_number(x) or not low <= x <= 1.0:
                    problems.add(f"{where}.{action}: {what} must be a number in [{low:g}, 1], got {x!r}")
                else:
                    yield slot_index[slot], action_index[action], x

    def _probability_row(
        self, where: str, values: Any, problems: _Problems, default: float | None
    ) -> np.ndarray:
        """Parse {actionId: P | {slotId: P}} into a (slot, action) array."""
        row = np.full((len(self.slot_ids), len(self.action_ids)), np.nan)
        if not isinstance(values, dict):
            problems.add(f"{where} must be an object of actionId -> probability")
            return row
        for s, a, p in self._action_slot_values(where, values, "probability", self._low, problems):
            row[s, a] = p
        missing = np.isnan(row)
        if missing.any():
            if default is None:
                gaps = [
                    f"{action!r} in {_known(self.slot_ids[s] for s in np.nonzero(missing[:, a])[0])}"
                    for a, action in enumerate(self.action_ids)
                    if missing[:, a].any()
                ]
                problems.add(f"{where} gives no probability for {'; '.join(gaps)} (or set a 'default')")
            else:
                row[missing] = default
        return row

    def _compile(self, where: str, prefs: Any, problems: _Problems) -> np.ndarray:
        """Turn one preference profile into a (context, slot, action) probability array."""
        shape = (len(self.contexts), len(self.slot_ids), len(self.action_ids))
        table = np.zeros(shape)
        if not isinstance(prefs, dict):
            problems.add(f"{where} must be an object with \"type\": \"additive\" or \"joint\"")
            return table
        kind = prefs.get("type")
        default = prefs.get("default")
        if default is not None and (not _is_number(default) or not self._low <= default <= 1.0):
            problems.add(f"{where}.default must be a number in [{self._low:g}, 1], got {default!r}")
            default = None
        if kind == "additive":
            unknown = set(prefs) - {"type", "base", "effects", "default"}
            if unknown:
                problems.add(f"{where} has unknown field(s) {_known(sorted(unknown))}")
            if "base" not in prefs:
                problems.add(f"{where} (additive) needs 'base': actionId -> probability")
                return table
            base = self._probability_row(f"{where}.base", prefs["base"], problems, default)
            table[:] = base
            effects = prefs.get("effects", {})
            if not isinstance(effects, dict):
                problems.add(f"{where}.effects must be an object feature -> value -> actionId -> delta")
                effects = {}
            names = list(self.context_options)
            for feature, by_value in effects.items():
                if feature not in self.context_options:
                    problems.add(f"{where}.effects names unknown context feature {feature!r} "
                                 f"(known: {_known(names)})")
                    continue
                if not isinstance(by_value, dict):
                    problems.add(f"{where}.effects.{feature} must be an object value -> actionId -> delta")
                    continue
                for value, deltas in by_value.items():
                    if value not in self.context_options[feature]:
                        problems.add(f"{where}.effects.{feature} names unknown value {value!r} "
                                     f"(known: {_known(self.context_options[feature])})")
                        continue
                    if not isinstance(deltas, dict):
                        problems.add(f"{where}.effects.{feature}.{value} must be an object actionId -> delta")
                        continue
                    rows = [c for c, ctx in enumerate(self.contexts) if ctx[feature] == value]
                    here = f"{where}.effects.{feature}.{value}"
                    for s, a, d in self._action_slot_values(here, deltas, "delta", -1.0, problems):
                        table[rows, s, a] += d
            return np.clip(table, self._low, 1.0)
        if kind == "features":
            return self._compile_features(where, prefs, problems)
        if kind == "joint":
            unknown = set(prefs) - {"type", "table", "default"}
            if unknown:
                problems.add(f"{where} has unknown field(s) {_known(sorted(unknown))}")
            rows = prefs.get("table")
            if not isinstance(rows, dict):
                example = "|".join(str(values[0]) for values in self.context_options.values())
                problems.add(f"{where} (joint) needs 'table': {{{example!r}: {{actionId: probability}}, ...}}")
                return table
            keys = {"|".join(map(str, ctx.values())): i for i, ctx in enumerate(self.contexts)}
            order = "|".join(self.context_options)
            for key, values in rows.items():
                if key not in keys:
                    problems.add(f"{where}.table has row {key!r}, which is not a context; rows are "
                                 f"values joined as {order!r}, e.g. {next(iter(keys))!r}")
                    continue
                table[keys[key]] = self._probability_row(f"{where}.table[{key!r}]", values, problems, default)
            missing = [k for k in keys if k not in rows]
            if missing:
                shown = ", ".join(repr(k) for k in missing[:5]) + (" ..." if len(missing) > 5 else "")
                problems.add(f"{where}.table is missing {len(missing)} context row(s): {shown}")
            return table
        problems.add(f"{where}.type must be \"additive\" or \"joint\" (or \"features\"), got {kind!r}")
        return table

    def _compile_features(self, where: str, prefs: dict, problems: _Problems) -> np.ndarray:
        """A ``features`` profile: clip(base + the weights of every term's key, low, 1)."""
        shape = (len(self.contexts), len(self.slot_ids), len(self.action_ids))
        table = np.zeros(shape)
        unknown = set(prefs) - {"type", "base", "terms"}
        if unknown:
            problems.add(f"{where} has unknown field(s) {_known(sorted(unknown))}")
        base = prefs.get("base", 0.0)
        if not _is_number(base):
            problems.add(f"{where}.base must be a number, got {base!r}")
            base = 0.0
        table[:] = base
        terms = prefs.get("terms", [])
        if not isinstance(terms, list):
            problems.add(f"{where}.terms must be a list of terms")
            terms = []
        action_values = [_flat_features(a.get("features", []), a["id"]) for a in self.actions]
        slot_values = [_flat_features(s.get("features", []), s["id"]) for s in self.slots]
        for t, term in enumerate(terms):
            here = f"{where}.terms[{t}]"
            if not isinstance(term, dict) or set(term) - {"context", "slot", "action", "weights"}:
                problems.add(f"{here} must be an object with 'context', 'slot', 'action' and 'weights'")
                continue
            names = term.get("context", [])
            weights = term.get("weights")
            if not isinstance(names, list) or any(n not in self.context_options for n in names):
                problems.add(f"{here}.context must list context features (known: {_known(self.context_options)})")
                continue
            if not isinstance(weights, dict) or not all(_is_number(w) for w in weights.values()):
                problems.add(f"{here}.weights must be an object key -> number")
                continue
            numeric = [n for n in names if all(_is_number(v) for v in self.context_options[n])]
            keyed = [n for n in names if n not in numeric]
            context_keys = ["|".join(str(ctx[n]) for n in keyed) for ctx in self.contexts]
            scale = np.array([math.prod(float(ctx[n]) for n in numeric) for ctx in self.contexts])
            sides: list[tuple[str, list[dict[str, str]], int]] = []
            for role, values, axis in (("slot", slot_values, 1), ("action", action_values, 2)):
                name = term.get(role)
                if name is None:
                    continue
                if not isinstance(name, str) or all(name not in v for v in values):
                    problems.add(f"{here}.{role}: no {role} has a feature {name!r}")
                    continue
                sides.append((name, values, axis))
            # weight[c, s, a] = weights[key(c, s, a)]; keys built once per distinct part.
            slot_keys = [""] * len(self.slots)
            action_keys = [""] * len(self.actions)
            for name, values, axis in sides:
                keys = [v.get(name, "") for v in values]
                if axis == 1:
                    slot_keys = keys
                else:
                    action_keys = keys
            has_slot = any(axis == 1 for _, _, axis in sides)
            has_action = any(axis == 2 for _, _, axis in sides)
            known: set[str] = set()
            cube = np.zeros(shape)
            for c_key in sorted(set(context_keys)):
                rows = [c for c, k in enumerate(context_keys) if k == c_key]
                for s, s_key in enumerate(slot_keys):
                    for a, a_key in enumerate(action_keys):
                        key = "|".join(x for x, used in ((c_key, bool(keyed)), (s_key, has_slot),
                                                         (a_key, has_action)) if used)
                        known.add(key)
                        cube[rows, s, a] = weights.get(key, 0.0)
            stray = sorted(set(weights) - known)
            if stray:
                problems.add(f"{here}.weights has key(s) no context, slot and action make: "
                             f"{_known(stray[:5])}{' ...' if len(stray) > 5 else ''}")
            table += cube * scale[:, None, None]
        return np.clip(table, self._low, 1.0)

    # ---------------------------------------------------------------- construction

    @classmethod
    def from_dict(cls, data: Any) -> Scenario:
        """Validate user-written scenario JSON; raise ValueError naming every problem."""
        if not isinstance(data, dict):
            raise ValueError("A scenario must be a JSON object")
        name = data.get("name") if isinstance(data.get("name"), str) else "<unnamed>"
        problems = _Problems(name)
        required = ("name", "context", "actions", "slots", "preferences")
        for key in required:
            if key not in data:
                problems.add(f"missing required field {key!r}")
        unknown = set(data) - {*required, "description", "drift", "rewards", "relevance"}
        if unknown:
            problems.add(f"unknown field(s) {_known(sorted(unknown))}")
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
        for key in ("drift", "rewards", "relevance"):
            if getattr(self, key) is not None:
                data[key] = getattr(self, key)
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

    def _solve(self, probs: np.ndarray) -> list[int]:
        """Best assignment for one context: brute force when small, else a matching."""
        n_slots, n_actions = probs.shape
        if math.perm(n_actions, n_slots) <= _BRUTE_FORCE_LIMIT:
            best: tuple[int, ...] = ()
            best_value = -math.inf
            for combo in itertools.permutations(range(n_actions), n_slots):
                if all(a in self._allowed[s] for s, a in enumerate(combo)):
                    value = sum(probs[s, a] for s, a in enumerate(combo))
                    if value > best_value + 1e-12:
                        best, best_value = combo, value
            return list(best)
        return _max_assignment(probs, self._allowed)


def _nest(target: dict[str, Any], dotted: str, value: Any) -> None:
    """Put ``value`` at the dotted path inside ``target`` (creating the objects on the way)."""
    *path, last = dotted.split(".")
    for key in path:
        target = target.setdefault(key, {})
    target[last] = value


def _flat_features(objects: Any, item_id: str) -> dict[str, str]:
    """An action's or slot's features as dotted path -> value text, plus ``id``."""
    out: dict[str, str] = {}

    def walk(obj: dict, prefix: str) -> None:
        for key, value in obj.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            elif value is not None:
                out[prefix + key] = str(value)

    for obj in objects if isinstance(objects, list) else []:
        if isinstance(obj, dict):
            walk(obj, "")
    out["id"] = item_id
    return out


def _max_assignment(probs: np.ndarray, allowed: Sequence[Sequence[int]]) -> list[int]:
    """Hungarian algorithm (rows = slots <= columns = actions), maximizing summed probability."""
    n, m = probs.shape
    forbidden = 1e6
    cost = np.full((n, m), forbidden)
    for s, actions in enumerate(allowed):
        cost[s, list(actions)] = -probs[s, list(actions)]
    u = [0.0] * (n + 1)
    v = [0.0] * (m + 1)
    match = [0] * (m + 1)  # column -> row (1-based), 0 = free
    way = [0] * (m + 1)
    for i in range(1, n + 1):
        match[0] = i
        j0 = 0
        minv = [math.inf] * (m + 1)
        used = [False] * (m + 1)
        while True:
            used[j0] = True
            i0, delta, j1 = match[j0], math.inf, 0
            for j in range(1, m + 1):
                if not used[j]:
                    cur = cost[i0 - 1, j - 1] - u[i0] - v[j]
                    if cur < minv[j]:
                        minv[j], way[j] = cur, j0
                    if minv[j] < delta:
                        delta, j1 = minv[j], j
            for j in range(m + 1):
                if used[j]:
                    u[match[j]] += delta
                    v[j] -= delta
                else:
                    minv[j] -= delta
            j0 = j1
            if match[j0] == 0:
                break
        while j0:
            j1 = way[j0]
            match[j0] = match[j1]
            j0 = j1
    result = [0] * n
    for j in range(1, m + 1):
        if match[j]:
            result[match[j] - 1] = j - 1
    return result


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


# --------------------------------------------------------------------------- simulation


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
    rng = np.random.default_rng(seed)
    contexts = rng.integers(0, len(scenario.contexts), size=n).tolist()
    coins = rng.random((n, len(scenario.slot_ids))).tolist()
    settings = scenario.reward_settings
    graded, noise = settings["type"] == "graded", float(settings["noise"])
    delay = int(settings["delay"])
    # A second stream, so scenarios without these settings replay exactly as before.
    extra = np.random.default_rng([seed, 1])
    never = (extra.random(n) < float(settings["missing"])).tolist()
    waiting: collections.deque[tuple[int, str, list[dict]]] = collections.deque()
    prefix = f"sim-{seed}-{uuid.uuid4().hex[:8]}-" if event_prefix is None else event_prefix
    follows_progress = isinstance(backend, FollowsProgress)
    slot_ids = scenario.slot_ids
    baselines = [s["baselineAction"] for s in scenario.slots]
    keys = ["|".join(map(str, ctx.values())) for ctx in scenario.contexts]
    requests = [
        {"contextFeatures": scenario.context_features(ctx), "actions": scenario.actions, "slots": scenario.slots}
        for ctx in scenario.contexts
    ]
    # Per phase, context and slot: {actionId: p}, oracle's p and the baseline's p.
    tables = []
    for phase, probs in enumerate(scenario._probs):
        per_context = []
        for c in range(len(scenario.contexts)):
            oracle = scenario._oracle[phase][c]
            per_context.append([
                (
                    dict(zip(scenario.action_ids, probs[c, s].tolist(), strict=True)),
                    float(probs[c, s, oracle[s]]),
                    float(probs[c, s, scenario.action_ids.index(baselines[s])]),
                )
                for s in range(len(slot_ids))
            ])
        tables.append(per_context)
    switch = n if scenario.drift_at is None else math.ceil(scenario.drift_at * n)
    records: list[Record] = []
    append = records.append
    every = max(1, int(progress_every))
    for i in range(n):
        phase = 1 if i >= switch else 0
        c = contexts[i]
        if follows_progress:
            backend.progress = i / n
        event_id = f"{prefix}{i}"
        response = backend.rank({**requests[c], "eventId": event_id})
        event_id = response.get("eventId", event_id)
        chosen = {slot["id"]: slot for slot in response["slots"]}
        rewards = []
        row = tables[phase][c]
        flips = coins[i]
        for s, slot_id in enumerate(slot_ids):
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
                "context": scenario.contexts[c],
                "contextKey": keys[c],
                "slotId": slot_id,
                "actionId": action_id,
                "baselineActionId": baselines[s],
                "probability": slot.get("probability"),
                "accepted": accepted,
                "expected": p,
                "oracle_expected": oracle_p,
                "baseline_expected": baseline_p,
                "phase": phase,
            })
        if not never[i]:
            waiting.append((i + delay, event_id, rewards))
        while waiting and waiting[0][0] <= i:
            _, due_id, due = waiting.popleft()
            backend.reward(due_id, {"reward": due})
        if on_progress is not None and ((i + 1) % every == 0 or i + 1 == n):
            on_progress(i + 1, n)
    for _, due_id, due in waiting:  # the visitors come back after the run
        backend.reward(due_id, {"reward": due})
    if on_progress is not None and n == 0:
        on_progress(0, 0)
    return records


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


# --------------------------------------------------------------------------- reference backends


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
        probs = scenario._probs[phase, c]
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
