"""Scenarios for the dashboard: the built-in ones, uploaded JSON, and compatible preference profiles."""

from __future__ import annotations

import json
from functools import lru_cache

from ..contract import MultiSlotRankRequest, PersonalizerError, parse
from ..simulation import Scenario, list_scenarios, load_scenario

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


def scenario_from_upload(data: bytes, filename: str = "scenario.json") -> Scenario:
    """Parse and validate an uploaded scenario file; ValueError with a clear message when it is wrong.

    Checks, in order: size, UTF-8, JSON syntax (with line and column), the scenario
    schema (every problem named), and that its catalog is a valid Personalizer
    multi-slot rank request.
    """
    if len(data) > MAX_UPLOAD_BYTES:
        raise ValueError(f"{filename} is {len(data):,} bytes; a scenario file may be at most {MAX_UPLOAD_BYTES:,}")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{filename} is not UTF-8 text (byte {exc.start}); save it as UTF-8 JSON") from None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{filename} is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}") from None
    scenario = Scenario.from_dict(raw)
    try:
        request = parse(MultiSlotRankRequest, scenario.rank_request(scenario.contexts[0]), "InvalidScenario")
    except PersonalizerError as exc:
        raise ValueError(
            f"Scenario {scenario.name!r}: its catalog is not a valid rank request: {exc.message}") from None
    del request
    return scenario


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
