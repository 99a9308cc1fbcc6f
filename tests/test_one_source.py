"""Rules written once: the rank contract, the exploration default and the presets built from it."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
from seed_data import seed_request

from personalizer import simulation
from personalizer.contract import (
    DEFAULT_EXPLORATION,
    MAX_ACTIONS,
    MultiSlotRankRequest,
    PersonalizerError,
    ServiceConfiguration,
    parse,
    rank_rule_violations,
)
from personalizer.engine import DEFAULT_POLICY_ARGUMENTS
from personalizer.evaluation import PRESET_POLICIES
from personalizer.settings import load_settings
from personalizer.store import default_home
from personalizer.vw.arguments import option_value


def _epsilon(arguments: str) -> float:
    return float(option_value(arguments.split(), "--epsilon"))


def test_presets_stay_distinct_and_follow_the_default_exploration() -> None:
    """A changed default exploration must not make presets identical (they were once string-replaced)."""
    assert len(set(PRESET_POLICIES.values())) == len(PRESET_POLICIES)
    assert PRESET_POLICIES["Project default"] == DEFAULT_POLICY_ARGUMENTS
    assert _epsilon(DEFAULT_POLICY_ARGUMENTS) == DEFAULT_EXPLORATION
    assert ServiceConfiguration().exploration_percentage == DEFAULT_EXPLORATION
    assert _epsilon(PRESET_POLICIES["Less exploration"]) < DEFAULT_EXPLORATION
    assert _epsilon(PRESET_POLICIES["More exploration"]) > DEFAULT_EXPLORATION


def _scenario(slots: list[dict]) -> dict:
    return {
        "name": "catalog", "description": "", "context": {"time": ["day", "night"]},
        "actions": [{"id": a, "features": [{"kind": a}]} for a in "abc"],
        "slots": slots,
        "preferences": {"type": "joint", "table": {t: {"a": 0.5, "b": 0.4, "c": 0.3} for t in ("day", "night")}},
    }


def test_simulator_accepts_exactly_what_a_rank_request_accepts() -> None:
    """The scenario check is the contract's: no stricter copy (it refused this fillable catalog)."""
    slots = [{"id": "top", "excludedActions": ["c"], "baselineAction": "a"},
             {"id": "side", "excludedActions": ["a", "b"], "baselineAction": "c"}]
    scenario = simulation.Scenario.from_dict(_scenario(slots))
    parse(MultiSlotRankRequest, scenario.rank_request(scenario.contexts[0]), "InvalidRankRequest")
    crowded = copy.deepcopy(slots)
    crowded[1].update(excludedActions=["a", "c"], baselineAction="b")
    expected = next(rank_rule_violations("abc", [(s["id"], s["excludedActions"], s["baselineAction"])
                                                 for s in crowded]))
    with pytest.raises(ValueError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        simulation.Scenario.from_dict(_scenario(crowded))
    with pytest.raises(PersonalizerError) as info:
        parse(MultiSlotRankRequest, {**seed_request(), "actions": _scenario(crowded)["actions"],
                                     "slots": crowded}, "InvalidRankRequest")
    assert (info.value.code, info.value.message) == ("InvalidRankRequest", expected)


def test_the_action_limit_is_the_named_constant() -> None:
    request = seed_request()
    template = request["actions"][0]
    request["actions"] = [{**template, "id": f"a{i}"} for i in range(MAX_ACTIONS)]
    request["slots"] = [{**request["slots"][0], "baselineAction": "a0", "excludedActions": []}]
    parse(MultiSlotRankRequest, request, "InvalidRankRequest")
    request["actions"].append({**template, "id": "one-too-many"})
    with pytest.raises(PersonalizerError, match=f"between 1 and {MAX_ACTIONS} actions"):
        parse(MultiSlotRankRequest, request, "InvalidRankRequest")


def test_every_personalizer_variable_is_read_by_the_one_settings_object(monkeypatch: pytest.MonkeyPatch,
                                                                        tmp_path: Path) -> None:
    monkeypatch.setenv("PERSONALIZER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("PERSONALIZER_SYNC", "full")
    monkeypatch.setenv("PERSONALIZER_KEY", "first-secret")
    monkeypatch.setenv("PERSONALIZER_KEY_2", "")  # empty: not a key
    settings = load_settings()
    assert settings.home == tmp_path / "home" == default_home()
    assert settings.full_sync and settings.keys() == ["first-secret"]
    assert "first-secret" not in repr(settings) and "first-secret" not in str(settings)
    monkeypatch.delenv("PERSONALIZER_HOME")
    assert load_settings().home == Path(".personalizer")


def test_replay_builds_slot_bodies_through_the_encoding_not_by_slicing_them() -> None:
    """Each event's slot bodies from the shared template equal ``encode_request``'s, for any event id."""
    from personalizer.evaluation.logged import _template
    from personalizer.vw.encoding import encode_request

    canonical = parse(MultiSlotRankRequest, seed_request(), "InvalidRankRequest").model_dump(
        by_alias=True, exclude={"event_id"})
    template, _ = _template(canonical, "first", {})
    for event_id in ("second", "with space|bar:colon'quote", "e#1"):
        assert template.bodies(event_id) == encode_request(canonical, event_id)[1]
