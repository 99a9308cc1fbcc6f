"""Hidden preferences: a scenario's profiles (additive, joint, features) compiled into reward tables.

Each profile becomes a (context, slot, action) array of expected rewards; every
problem found on the way is reported to the scenario's :class:`.checks.Problems`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from .checks import Problems, is_number, quoted

if TYPE_CHECKING:
    from .scenario import Scenario


def compile_profile(scenario: Scenario, where: str, prefs: Any, problems: Problems) -> np.ndarray:
    """Turn one preference profile into a (context, slot, action) probability array."""
    shape = (len(scenario.contexts), len(scenario.slot_ids), len(scenario.action_ids))
    table = np.zeros(shape)
    if not isinstance(prefs, dict):
        problems.add(f"{where} must be an object with \"type\": \"additive\" or \"joint\"")
        return table
    kind = prefs.get("type")
    default = prefs.get("default")
    if default is not None and (not is_number(default) or not scenario.lowest_reward <= default <= 1.0):
        problems.add(f"{where}.default must be a number in [{scenario.lowest_reward:g}, 1], got {default!r}")
        default = None
    if kind == "additive":
        unknown = set(prefs) - {"type", "base", "effects", "default"}
        if unknown:
            problems.add(f"{where} has unknown field(s) {quoted(sorted(unknown))}")
        if "base" not in prefs:
            problems.add(f"{where} (additive) needs 'base': actionId -> probability")
            return table
        base = probability_row(scenario, f"{where}.base", prefs["base"], problems, default)
        table[:] = base
        effects = prefs.get("effects", {})
        if not isinstance(effects, dict):
            problems.add(f"{where}.effects must be an object feature -> value -> actionId -> delta")
            effects = {}
        names = list(scenario.context_options)
        for feature, by_value in effects.items():
            if feature not in scenario.context_options:
                problems.add(f"{where}.effects names unknown context feature {feature!r} "
                             f"(known: {quoted(names)})")
                continue
            if not isinstance(by_value, dict):
                problems.add(f"{where}.effects.{feature} must be an object value -> actionId -> delta")
                continue
            for value, deltas in by_value.items():
                if value not in scenario.context_options[feature]:
                    problems.add(f"{where}.effects.{feature} names unknown value {value!r} "
                                 f"(known: {quoted(scenario.context_options[feature])})")
                    continue
                if not isinstance(deltas, dict):
                    problems.add(f"{where}.effects.{feature}.{value} must be an object actionId -> delta")
                    continue
                rows = [c for c, ctx in enumerate(scenario.contexts) if ctx[feature] == value]
                here = f"{where}.effects.{feature}.{value}"
                for s, a, d in action_slot_values(scenario, here, deltas, "delta", -1.0, problems):
                    table[rows, s, a] += d
        return np.clip(table, scenario.lowest_reward, 1.0)
    if kind == "features":
        return compile_features(scenario, where, prefs, problems)
    if kind == "joint":
        unknown = set(prefs) - {"type", "table", "default"}
        if unknown:
            problems.add(f"{where} has unknown field(s) {quoted(sorted(unknown))}")
        rows = prefs.get("table")
        if not isinstance(rows, dict):
            example = "|".join(str(values[0]) for values in scenario.context_options.values())
            problems.add(f"{where} (joint) needs 'table': {{{example!r}: {{actionId: probability}}, ...}}")
            return table
        keys = {"|".join(map(str, ctx.values())): i for i, ctx in enumerate(scenario.contexts)}
        order = "|".join(scenario.context_options)
        for key, values in rows.items():
            if key not in keys:
                problems.add(f"{where}.table has row {key!r}, which is not a context; rows are "
                             f"values joined as {order!r}, e.g. {next(iter(keys))!r}")
                continue
            table[keys[key]] = probability_row(scenario, f"{where}.table[{key!r}]", values, problems, default)
        missing = [k for k in keys if k not in rows]
        if missing:
            shown = ", ".join(repr(k) for k in missing[:5]) + (" ..." if len(missing) > 5 else "")
            problems.add(f"{where}.table is missing {len(missing)} context row(s): {shown}")
        return table
    problems.add(f"{where}.type must be \"additive\" or \"joint\" (or \"features\"), got {kind!r}")
    return table


def compile_features(scenario: Scenario, where: str, prefs: dict, problems: Problems) -> np.ndarray:
    """A ``features`` profile: clip(base + the weights of every term's key, low, 1)."""
    shape = (len(scenario.contexts), len(scenario.slot_ids), len(scenario.action_ids))
    table = np.zeros(shape)
    unknown = set(prefs) - {"type", "base", "terms"}
    if unknown:
        problems.add(f"{where} has unknown field(s) {quoted(sorted(unknown))}")
    base = prefs.get("base", 0.0)
    if not is_number(base):
        problems.add(f"{where}.base must be a number, got {base!r}")
        base = 0.0
    table[:] = base
    terms = prefs.get("terms", [])
    if not isinstance(terms, list):
        problems.add(f"{where}.terms must be a list of terms")
        terms = []
    action_values = [flat_features(a.get("features", []), a["id"]) for a in scenario.actions]
    slot_values = [flat_features(s.get("features", []), s["id"]) for s in scenario.slots]
    for t, term in enumerate(terms):
        here = f"{where}.terms[{t}]"
        if not isinstance(term, dict) or set(term) - {"context", "slot", "action", "weights"}:
            problems.add(f"{here} must be an object with 'context', 'slot', 'action' and 'weights'")
            continue
        names = term.get("context", [])
        weights = term.get("weights")
        if not isinstance(names, list) or any(n not in scenario.context_options for n in names):
            problems.add(f"{here}.context must list context features (known: {quoted(scenario.context_options)})")
            continue
        if not isinstance(weights, dict) or not all(is_number(w) for w in weights.values()):
            problems.add(f"{here}.weights must be an object key -> number")
            continue
        numeric = [n for n in names if all(is_number(v) for v in scenario.context_options[n])]
        keyed = [n for n in names if n not in numeric]
        context_keys = ["|".join(str(ctx[n]) for n in keyed) for ctx in scenario.contexts]
        scale = np.array([math.prod(float(ctx[n]) for n in numeric) for ctx in scenario.contexts])
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
        slot_keys = [""] * len(scenario.slots)
        action_keys = [""] * len(scenario.actions)
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
                         f"{quoted(stray[:5])}{' ...' if len(stray) > 5 else ''}")
        table += cube * scale[:, None, None]
    return np.clip(table, scenario.lowest_reward, 1.0)


def probability_row(
    scenario: Scenario, where: str, values: Any, problems: Problems, default: float | None
) -> np.ndarray:
    """Parse {actionId: P | {slotId: P}} into a (slot, action) array."""
    row = np.full((len(scenario.slot_ids), len(scenario.action_ids)), np.nan)
    if not isinstance(values, dict):
        problems.add(f"{where} must be an object of actionId -> probability")
        return row
    for s, a, p in action_slot_values(scenario, where, values, "probability", scenario.lowest_reward, problems):
        row[s, a] = p
    missing = np.isnan(row)
    if missing.any():
        if default is None:
            gaps = [
                f"{action!r} in {quoted(scenario.slot_ids[s] for s in np.nonzero(missing[:, a])[0])}"
                for a, action in enumerate(scenario.action_ids)
                if missing[:, a].any()
            ]
            problems.add(f"{where} gives no probability for {'; '.join(gaps)} (or set a 'default')")
        else:
            row[missing] = default
    return row


def action_slot_values(
    scenario: Scenario, where: str, values: dict, what: str, low: float, problems: Problems
) -> Iterator[tuple[int, int, float]]:
    """(slot index, action index, number) of {actionId: x | {slotId: x}}, each x in [low, 1].

    Unknown actions or slots and numbers out of range are reported, not yielded.
    """
    action_index = {a: i for i, a in enumerate(scenario.action_ids)}
    slot_index = {s: i for i, s in enumerate(scenario.slot_ids)}
    for action, value in values.items():
        if action not in action_index:
            problems.add(f"{where} names unknown action {action!r} (known: {quoted(scenario.action_ids)})")
            continue
        per_slot = value if isinstance(value, dict) else dict.fromkeys(scenario.slot_ids, value)
        for slot, x in per_slot.items():
            if slot not in slot_index:
                problems.add(f"{where}.{action} names unknown slot {slot!r} (known: {quoted(scenario.slot_ids)})")
            elif not is_number(x) or not low <= x <= 1.0:
                problems.add(f"{where}.{action}: {what} must be a number in [{low:g}, 1], got {x!r}")
            else:
                yield slot_index[slot], action_index[action], x


def flat_features(objects: Any, item_id: str) -> dict[str, str]:
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
