"""Scenarios for the dashboard: the built-in ones, uploaded JSON, and compatible preference profiles."""

from __future__ import annotations

import json
from functools import lru_cache

from ..contract import MultiSlotRankRequest, PersonalizerError, parse
from ..simulation import Scenario, list_scenarios, load_scenario
from .labels import Labels, labels_from
from .labels import problems as label_problems

DEFAULT_SCENARIO = "seed"
#: Uploaded scenario files larger than this are refused (a catalog has at most 50 actions).
MAX_UPLOAD_BYTES = 1_000_000


def builtin_names() -> list[str]:
    """Built-in scenario names, the default (the seed quickstart's catalog) first."""
    names = list_scenarios()
    return sorted(names, key=lambda n: (n != DEFAULT_SCENARIO, n))


@lru_cache(maxsize=32)
def builtin(name: str) -> Scenario:
    """A built-in scenario (parsed once per process; scenarios are read-only)."""
    return load_scenario(name)


def upload_with_labels(data: bytes, filename: str = "scenario.json") -> tuple[Scenario, Labels]:
    """Parse and validate an uploaded scenario file and its display names; ValueError listing every problem.

    Size, UTF-8 and JSON syntax (with line and column) stop the check at once;
    after that every problem is collected: the ``display`` block, the scenario
    schema, and whether its catalog is a valid Personalizer multi-slot rank request.
    """
    if len(data) > MAX_UPLOAD_BYTES:
        raise ValueError(f"{filename} is {len(data):,} bytes; a scenario file may be at most "
                         f"{MAX_UPLOAD_BYTES:,} bytes (1 MB)")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{filename} is not UTF-8 text (byte {exc.start}); save it as UTF-8 JSON") from None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{filename} is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}") from None
    found: list[str] = []
    display = raw.pop("display", None) if isinstance(raw, dict) else None
    if display is not None:
        found += label_problems(display)
    scenario: Scenario | None = None
    try:
        scenario = Scenario.from_dict(raw)
    except ValueError as exc:
        lines = str(exc).splitlines()
        found += [line.removeprefix("- ") for line in lines[1:]] if len(lines) > 1 else [
            str(exc).split(": ", 1)[-1]]
    if scenario is not None:
        try:
            parse(MultiSlotRankRequest, scenario.rank_request(scenario.contexts[0]), "InvalidScenario")
        except PersonalizerError as exc:
            found.append(f"its catalog is not a valid rank request: {exc.message}")
    if found:
        name = raw.get("name") if isinstance(raw, dict) and isinstance(raw.get("name"), str) else filename
        if len(found) == 1:
            raise ValueError(f"Scenario {name!r}: {found[0]}")
        raise ValueError(f"Scenario {name!r} has {len(found)} problems:\n" + "\n".join(f"- {f}" for f in found))
    assert scenario is not None
    return scenario, labels_from(display if display is not None else None)


def scenario_from_upload(data: bytes, filename: str = "scenario.json") -> Scenario:
    """Parse and validate an uploaded scenario file (its display names dropped); ValueError when it is wrong."""
    return upload_with_labels(data, filename)[0]


def same_catalog(a: Scenario, b: Scenario) -> bool:
    """True when two scenarios rank the same request shape: same context options, actions and slots."""
    return a.context_options == b.context_options and a.actions == b.actions and a.slots == b.slots


def preference_profiles(scenario: Scenario) -> dict[str, Scenario]:
    """Hidden-preference profiles the simulator can use with ``scenario``'s catalog.

    The scenario's own preferences come first, then every built-in scenario with the
    same catalog (the seed shop has additive, joint and drifting tastes).
    """
    profiles = {scenario.name: scenario}
    for name in builtin_names():
        if name == scenario.name:
            continue
        try:
            other = builtin(name)
        except ValueError:
            continue
        if same_catalog(scenario, other):
            profiles[name] = other
    return profiles
