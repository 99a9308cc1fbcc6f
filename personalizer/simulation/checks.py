"""Scenario checks: every problem of a user-written scenario, collected so one upload reports them all.

The catalog check applies the rank contract's own cross-field rules
(:func:`~personalizer.contract.rank_rule_violations`), so a scenario's catalog ranks
exactly when a rank request with it does; the rest checks the simulator's own fields
(context values, rewards, relevance).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from ..contract import MAX_ACTIONS, rank_rule_violations

if TYPE_CHECKING:
    from .scenario import Scenario


class Problems:
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


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def is_feature_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, dict) for item in value)


def quoted(ids: Iterable[str]) -> str:
    return ", ".join(repr(i) for i in ids)


def check_catalog(scenario: Scenario, problems: Problems) -> None:
    """Name, description, context values, and the catalog by the rank contract's rules."""
    if not isinstance(scenario.name, str) or not scenario.name.strip():
        problems.add("'name' must be a non-empty string")
    if not isinstance(scenario.description, str):
        problems.add("'description' must be a string")
    options = scenario.context_options
    if not isinstance(options, dict) or not options:
        problems.add("'context' must be an object of feature name -> list of values, e.g. "
                     '{"time": ["morning", "night"]}')
    else:
        for feature, values in options.items():
            if not isinstance(values, list) or not values or not (
                all(isinstance(v, str) and v for v in values) or all(is_number(v) for v in values)
            ):
                problems.add(f"context {feature!r} must be a non-empty list of non-empty strings "
                             "(or of numbers)")
            elif len(set(values)) != len(values):
                problems.add(f"context {feature!r} lists a value twice")
            elif any("|" in str(v) for v in values):
                problems.add(f"context {feature!r} values may not contain '|' (it joins table keys)")
    if not isinstance(scenario.actions, list) or not scenario.actions:
        problems.add(f"'actions' must be a list of 1 to {MAX_ACTIONS} actions")
        return
    ids: list[str] = []
    for i, action in enumerate(scenario.actions):
        if not isinstance(action, dict) or not isinstance(action.get("id"), str) or not action["id"]:
            problems.add(f"action #{i + 1} needs a non-empty string 'id'")
            continue
        if not is_feature_list(action.get("features", [])):
            problems.add(f"action {action['id']!r}: 'features' must be a list of objects")
        ids.append(action["id"])
    if not isinstance(scenario.slots, list):
        problems.add("'slots' must be a list of slots")
        return
    slots: list[tuple[str, list[str], Any]] = []
    for position, slot in enumerate(scenario.slots):
        if not isinstance(slot, dict) or not isinstance(slot.get("id"), str) or not slot["id"]:
            problems.add(f"slot #{position + 1} needs a non-empty string 'id'")
            continue
        sid = slot["id"]
        if not is_feature_list(slot.get("features", [])):
            problems.add(f"slot {sid!r}: 'features' must be a list of objects")
        excluded = slot.get("excludedActions", [])
        if not isinstance(excluded, list) or not all(isinstance(a, str) for a in excluded):
            problems.add(f"slot {sid!r}: 'excludedActions' must be a list of action ids")
            excluded = []
        slots.append((sid, excluded, slot.get("baselineAction")))
    # The rank contract's own cross-field rules: a scenario's catalog ranks exactly when a request does.
    for problem in rank_rule_violations(ids, slots):
        problems.add(problem)


def check_relevance(scenario: Scenario, problems: Problems) -> None:
    """The optional ``relevance`` block: its shape, and that it names known context features."""
    relevance = scenario.relevance
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
        unknown = [n for n in group.get("context", []) if n not in scenario.context_options]
        if isinstance(scenario.context_options, dict) and unknown:
            problems.add(f"relevance names unknown context feature(s) {quoted(unknown)}")


def check_rewards(scenario: Scenario, problems: Problems) -> None:
    """The optional ``rewards`` block: type, noise, delay and missing share within range."""
    rewards = scenario.rewards
    if rewards is None:
        return
    if not isinstance(rewards, dict):
        problems.add("'rewards' must be an object like {\"type\": \"graded\", \"noise\": 0.2}")
        return
    unknown = set(rewards) - {"type", "noise", "delay", "missing"}
    if unknown:
        problems.add(f"rewards has unknown field(s) {quoted(sorted(unknown))}")
    if rewards.get("type", "binary") not in ("binary", "graded"):
        problems.add(f"rewards.type must be \"binary\" or \"graded\", got {rewards.get('type')!r}")
    noise = rewards.get("noise", 0.0)
    if not is_number(noise) or not 0.0 <= noise <= 1.0:
        problems.add(f"rewards.noise must be a number in [0, 1], got {noise!r}")
    elif noise and rewards.get("type", "binary") != "graded":
        problems.add("rewards.noise applies to graded rewards only (binary rewards are coin flips)")
    delay = rewards.get("delay", 0)
    if not isinstance(delay, int) or isinstance(delay, bool) or not 0 <= delay <= 100_000:
        problems.add(f"rewards.delay must be a whole number of events in [0, 100000], got {delay!r}")
    missing = rewards.get("missing", 0.0)
    if not is_number(missing) or not 0.0 <= missing < 1.0:
        problems.add(f"rewards.missing must be a share in [0, 1), got {missing!r}")
