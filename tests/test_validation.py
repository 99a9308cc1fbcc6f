"""Every rank / reward validation rule: a clear 400 naming the problem, and no state change."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
from seed_data import both_rewards, seed_request

from personalizer.contract import PersonalizerError
from personalizer.engine import LocalPersonalizer


def _mutate(fn: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    req = seed_request()
    fn(req)
    return req


def _set(path: list[Any], value: Any) -> Callable[[dict[str, Any]], None]:
    def apply(req: dict[str, Any]) -> None:
        target = req
        for p in path[:-1]:
            target = target[p]
        target[path[-1]] = value
    return apply


def _many_actions(n: int) -> Callable[[dict[str, Any]], None]:
    def apply(req: dict[str, Any]) -> None:
        req["actions"] = [{"id": f"a{i}", "features": [{"x": i}]} for i in range(n)]
        req["slots"] = [{"id": "s", "baselineAction": "a0"}]
    return apply


BAD_RANKS: list[tuple[str, Callable[[dict[str, Any]], None], str]] = [
    ("no actions", _set(["actions"], []), "actions"),
    ("51 actions", _many_actions(51), "50"),
    ("empty action id", _set(["actions", 0, "id"], ""), "actions[0].id"),
    ("long action id", _set(["actions", 0, "id"], "x" * 257), "256"),
    ("duplicate action id", _set(["actions", 1, "id"], "Red-Polo-Shirt-432"), "Red-Polo-Shirt-432"),
    ("action without features", _set(["actions", 2, "features"], []), "actions[2].features"),
    ("action features not a list", _set(["actions", 2, "features"], {"a": 1}), "actions[2].features"),
    ("no slots", _set(["slots"], []), "slots"),
    ("more slots than actions", lambda r: r["slots"].extend(
        [{"id": f"s{i}", "baselineAction": a["id"]} for i, a in enumerate(r["actions"][1:3])]
        + [{"id": "s9", "baselineAction": "Tennis-Racket-133"}]), "slots"),
    ("empty slot id", _set(["slots", 0, "id"], ""), "slots[0].id"),
    ("duplicate slot id", _set(["slots", 1, "id"], "BigHeroPosition"), "BigHeroPosition"),
    ("missing baseline", lambda r: r["slots"][0].pop("baselineAction"), "slots[0].baselineAction"),
    ("unknown baseline", _set(["slots", 0, "baselineAction"], "Nope-1"), "Nope-1"),
    ("baseline excluded", _set(["slots", 0, "baselineAction"], "31-Inch-Monitor-771"), "31-Inch-Monitor-771"),
    ("baseline shared", _set(["slots", 1, "baselineAction"], "Red-Polo-Shirt-432"), "already the baseline"),
    ("unknown excluded", _set(["slots", 0, "excludedActions"], ["Ghost-0"]), "Ghost-0"),
    ("earlier slot may take the only action", _set(["slots", 1, "excludedActions"],
                          ["Red-Polo-Shirt-432", "Tennis-Racket-133", "31-Inch-Monitor-771"]), "SmallSidebar"),
    ("empty eventId", _set(["eventId"], ""), "eventId"),
    ("long eventId", _set(["eventId"], "e" * 257), "eventId"),
    ("context not a list", _set(["contextFeatures"], {"time": "morning"}), "contextFeatures"),
    ("context item not object", _set(["contextFeatures"], ["morning"]), "contextFeatures[0]"),
    ("non-numeric array", _set(["contextFeatures"], [{"tags": ["a", "b"]}]), "tags"),
    ("NaN feature", _set(["contextFeatures"], [{"score": math.nan}]), "score"),
    ("Infinity feature", _set(["contextFeatures"], [{"score": math.inf}]), "score"),
    ("infinite in array", _set(["contextFeatures"], [{"v": [1.0, -math.inf]}]), "v[1]"),
    ("nested bad value", _set(["contextFeatures"], [{"user": {"tags": [{"a": 1}]}}]), "user.tags"),
    ("slot features bad", _set(["slots", 0, "features"], [{"size": ["big"]}]), "size"),
    ("actions wrong type", _set(["actions"], "all of them"), "actions"),
    ("deferActivation wrong type", _set(["deferActivation"], "maybe"), "deferActivation"),
]


@pytest.mark.parametrize(("mutate", "needle"), [(m, n) for _, m, n in BAD_RANKS], ids=[i for i, _, _ in BAD_RANKS])
def test_bad_rank_is_a_clear_400_and_changes_nothing(engine: LocalPersonalizer, mutate, needle: str) -> None:
    before = engine.stats()
    with pytest.raises(PersonalizerError) as err:
        engine.rank(_mutate(mutate))
    assert err.value.status == 400
    assert err.value.code in {"InvalidRankRequest", "BadRequest"}
    assert needle in err.value.message
    assert engine.stats() == before
    assert engine.events() == []


def test_body_must_be_an_object(engine: LocalPersonalizer) -> None:
    for body in ([], "rank", None, 3):
        with pytest.raises(PersonalizerError) as err:
            engine.rank(body)  # type: ignore[arg-type]
        assert err.value.status == 400
        assert "object" in err.value.message


def test_slot_that_earlier_slots_may_empty_is_refused(engine: LocalPersonalizer) -> None:
    req = {
        "actions": [{"id": "a", "features": [{"x": 1}]}, {"id": "b", "features": [{"x": 2}]}],
        "slots": [{"id": "first", "baselineAction": "a"},
                  {"id": "second", "baselineAction": "b", "excludedActions": ["a"]}],
    }
    with pytest.raises(PersonalizerError) as err:
        engine.rank(req)
    assert "second" in err.value.message and err.value.status == 400
    req["slots"][0]["excludedActions"] = ["b"]  # now the first slot cannot take b: fine
    assert [s["rewardActionId"] for s in engine.rank(req)["slots"]] == ["a", "b"]


def test_feature_names_and_values_may_hold_any_character(engine: LocalPersonalizer) -> None:
    req = seed_request()
    req["contextFeatures"] = [{"we|ird: name\n": "va|ue: with spaces\nand 'quotes'", "_ignored": [["x"]]},
                              {"nested": {"a|b": 1.5, "deep": {"c": "d"}}}, {"nums": [1, 2.5, -3]},
                              {"flag": True, "nothing": None}]
    answer = engine.rank(req)
    assert {s["rewardActionId"] for s in answer["slots"]} <= {a["id"] for a in req["actions"]}


BAD_REWARDS: list[tuple[str, Any, str]] = [
    ("above 1", {"reward": [{"slotId": "BigHeroPosition", "value": 1.5}]}, "1.5"),
    ("below -1", {"reward": [{"slotId": "BigHeroPosition", "value": -2}]}, "-2"),
    ("not a number", {"reward": [{"slotId": "BigHeroPosition", "value": "yes"}]}, "number"),
    ("boolean", {"reward": [{"slotId": "BigHeroPosition", "value": True}]}, "number"),
    ("NaN", {"reward": [{"slotId": "BigHeroPosition", "value": math.nan}]}, "nan"),
    ("unknown slot", {"reward": [{"slotId": "Footer", "value": 1}]}, "Footer"),
    ("empty list", {"reward": []}, "reward"),
    ("missing list", {"rewards": []}, "reward"),
    ("missing value", {"reward": [{"slotId": "BigHeroPosition"}]}, "value"),
    ("partly bad", {"reward": [{"slotId": "BigHeroPosition", "value": 1}, {"slotId": "Nope", "value": 1}]}, "Nope"),
]


@pytest.mark.parametrize(("body", "needle"), [(b, n) for _, b, n in BAD_REWARDS], ids=[i for i, _, _ in BAD_REWARDS])
def test_bad_reward_is_a_clear_400_and_changes_nothing(engine: LocalPersonalizer, body: Any, needle: str) -> None:
    event = engine.rank(seed_request())["eventId"]
    before = engine.stats()
    with pytest.raises(PersonalizerError) as err:
        engine.reward(event, body)
    assert err.value.status == 400
    assert needle in err.value.message
    assert engine.stats() == before
    # The event still learns normally afterwards.
    assert engine.reward(event, both_rewards(1, 0))["status"] == "learned"


def test_reward_for_unknown_event_is_404(engine: LocalPersonalizer) -> None:
    with pytest.raises(PersonalizerError) as err:
        engine.reward("never-ranked", both_rewards(1, 1))
    assert (err.value.status, err.value.code) == (404, "ResourceNotFound")
    with pytest.raises(PersonalizerError) as err:
        engine.activate("never-ranked")
    assert err.value.status == 404
    assert engine.stats()["rewards"] == 0
