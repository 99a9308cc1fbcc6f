"""Scenarios, the simulated visitor loop and the reference backends."""

from __future__ import annotations

import copy
import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest

from personalizer.simulation import (
    BaselineBackend,
    OracleBackend,
    RandomBackend,
    Scenario,
    accept_rate,
    greedy_agreement,
    list_scenarios,
    load_scenario,
    oracle,
    simulate,
    window_accept_rates,
)

SHIPPED = ["seed", "seed-drift", "seed-joint"]
HERO, SIDEBAR = "BigHeroPosition", "SmallSidebar"
POLO, RACKET, MONITOR, XBOX = "Red-Polo-Shirt-432", "Tennis-Racket-133", "31-Inch-Monitor-771", "XBox-Series X-117"
MORNING_PHONE = {"time": "morning", "device": "mobile"}


def seed_dict() -> dict:
    return load_scenario("seed").to_dict()


def tiny_dict(**changes) -> dict:
    """A 3-action, 2-slot scenario small enough to reason about by hand."""
    data = {
        "name": "tiny",
        "description": "hand-checkable",
        "context": {"time": ["day", "night"]},
        "actions": [{"id": "a", "features": [{"kind": "x"}]}, {"id": "b"}, {"id": "c"}],
        "slots": [
            {"id": "top", "excludedActions": ["c"], "baselineAction": "a"},
            {"id": "side", "baselineAction": "c"},
        ],
        "preferences": {
            "type": "joint",
            "table": {
                "day": {"a": 0.9, "b": 0.2, "c": {"top": 0.0, "side": 0.5}},
                "night": {"a": 0.1, "b": {"top": 0.8, "side": 0.7}, "c": 0.3},
            },
        },
    }
    data.update(changes)
    return data


def expected_value(scenario: Scenario, picks_for, progress: float = 0.0) -> float:
    """Mean hidden accept probability over all (context, slot) of a page-picking rule."""
    values = [
        scenario.accept_probability(context, slot_id, action_id, progress)
        for context in scenario.contexts
        for slot_id, action_id in picks_for(context).items()
    ]
    return sum(values) / len(values)


def random_value(scenario: Scenario, context) -> float:
    """Expected accept probability of uniform in-order filling, summed over slots, for one context."""
    total = 0.0
    slot_ids = scenario.slot_ids

    def walk(position: int, used: frozenset, weight: float) -> None:
        nonlocal total
        if position == len(slot_ids):
            return
        slot = scenario.slots[position]
        allowed = [a for a in scenario.action_ids if a not in used and a not in slot.get("excludedActions", [])]
        for action in allowed:
            share = weight / len(allowed)
            total += share * scenario.accept_probability(context, slot_ids[position], action)
            walk(position + 1, used | {action}, share)

    walk(0, frozenset(), 1.0)
    return total


# ---------------------------------------------------------------- loading


def test_shipped_scenarios_are_listed_and_load() -> None:
    assert set(SHIPPED) <= set(list_scenarios())
    for name in SHIPPED:
        scenario = load_scenario(name)
        assert scenario.name == name
        assert len(scenario.description) > 40  # a product owner reads it
        assert len(scenario.contexts) == 12


def test_seed_catalog_is_the_quickstarts() -> None:
    scenario = load_scenario("seed")
    assert scenario.context_options == {
        "time": ["morning", "afternoon", "evening", "night"],
        "device": ["mobile", "tablet", "desktop"],
    }
    assert scenario.actions == [
        {"id": POLO, "features": [{"onSale": "true", "price": 20, "category": "Clothing"}]},
        {"id": RACKET, "features": [{"onSale": "false", "price": 70, "category": "Sports"}]},
        {"id": MONITOR, "features": [{"onSale": "true", "price": 200, "category": "Electronics"}]},
        {"id": XBOX, "features": [{"onSale": "false", "price": 499, "category": "Electronics"}]},
    ]
    assert scenario.slots == [
        {"id": HERO, "features": [{"size": "large", "position": "left"}],
         "excludedActions": [MONITOR], "baselineAction": POLO},
        {"id": SIDEBAR, "features": [{"size": "small", "position": "right"}],
         "excludedActions": [RACKET], "baselineAction": XBOX},
    ]
    for name in ("seed-joint", "seed-drift"):
        other = load_scenario(name)
        assert (other.actions, other.slots, other.context_options) == (
            scenario.actions, scenario.slots, scenario.context_options)


def test_load_by_path_and_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(tiny_dict()))
    scenario = load_scenario(path)
    assert scenario.name == "tiny"
    again = Scenario.from_dict(scenario.to_dict())
    assert again.oracle_choice({"time": "night"}) == scenario.oracle_choice({"time": "night"})


def test_load_unknown_name_and_bad_json(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown scenario 'nope'.*seed"):
        load_scenario("nope")
    with pytest.raises(ValueError, match="no scenario file"):
        load_scenario(tmp_path / "missing.json")
    path = tmp_path / "broken.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_scenario(path)


def test_rank_request_is_the_seed_shape_and_a_fresh_copy() -> None:
    scenario = load_scenario("seed")
    request = scenario.rank_request(MORNING_PHONE, event_id="e-1", defer=True)
    assert request["contextFeatures"] == [{"time": "morning"}, {"device": "mobile"}]
    assert request["eventId"] == "e-1" and request["deferActivation"] is True
    assert [a["id"] for a in request["actions"]] == [POLO, RACKET, MONITOR, XBOX]
    request["actions"][0]["features"][0]["price"] = 1
    assert scenario.actions[0]["features"][0]["price"] == 20
    assert "eventId" not in scenario.rank_request(MORNING_PHONE)
    with pytest.raises(ValueError, match="not a context"):
        scenario.rank_request({"time": "noon", "device": "mobile"})


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.pop("slots"), "missing required field 'slots'"),
        (lambda d: d.update(colour="red"), "unknown field"),
        (lambda d: d["preferences"]["table"]["day"].update(zzz=0.5), "unknown action 'zzz'"),
        (lambda d: d["preferences"]["table"]["day"].update(a=1.5), r"must be a number in \[0, 1\], got 1.5"),
        (lambda d: d["preferences"]["table"]["night"].update(b={"top": 0.8, "middle": 0.1}), "unknown slot 'middle'"),
        (lambda d: d["preferences"]["table"].pop("night"), "missing 1 context row.*'night'"),
        (lambda d: d["preferences"]["table"].update(noon={}), "row 'noon', which is not a context"),
        (lambda d: d["preferences"]["table"]["day"].pop("b"), "no probability for 'b' in 'top', 'side'"),
        (lambda d: d["preferences"].update(type="magic"), "type must be \"additive\" or \"joint\""),
        (lambda d: d["slots"][0].update(baselineAction="c"), "baselineAction 'c' is in its own excludedActions"),
        (lambda d: d["slots"][1].update(baselineAction="zz"), "baselineAction 'zz' is not one of the actions"),
        (lambda d: d["slots"][1].update(baselineAction="a"), "is already the baseline of slot 'top'"),
        (lambda d: d["slots"][0].update(excludedActions=["q"]), "excluded action 'q' is not one of the actions"),
        (lambda d: d["slots"][1].update(excludedActions=["a", "c"], baselineAction="b"),
         r"only 1 allowed action\(s\), and 1 earlier slot"),
        (lambda d: d["actions"].append({"id": "a"}), "action id 'a' appears more than once"),
        (lambda d: d["context"].update(time=[]), "non-empty list"),
        (lambda d: d.update(drift={"at": 1.5, "preferences": d["preferences"]}), "drift.at must be a fraction"),
        (lambda d: d.update(drift={"at": 0.5}), "drift has no 'preferences'"),
    ],
)
def test_validation_names_the_problem(change, message) -> None:
    data = tiny_dict()
    change(data)
    with pytest.raises(ValueError, match=message):
        Scenario.from_dict(data)


def test_validation_of_additive_preferences() -> None:
    data = seed_dict()
    data["preferences"]["effects"]["time"]["brunch"] = {POLO: 0.1}
    data["preferences"]["effects"]["device"]["mobile"][POLO] = 2
    data["preferences"]["effects"]["device"]["tablet"][RACKET] = {"Footer": 0.1}
    data["preferences"]["effects"]["weather"] = {}
    data["preferences"]["base"]["Pizza"] = 0.3
    with pytest.raises(ValueError) as info:
        Scenario.from_dict(data)
    text = str(info.value)
    assert "has 5 problems" in text  # all at once, one per line
    assert "unknown value 'brunch'" in text
    assert "delta must be a number in [-1, 1], got 2" in text
    assert "unknown slot 'Footer'" in text
    assert "unknown context feature 'weather'" in text
    assert "unknown action 'Pizza'" in text


def test_additive_probability_is_clipped_sum() -> None:
    data = seed_dict()
    prefs = data["preferences"]
    prefs["base"][POLO] = {HERO: 0.2, SIDEBAR: 0.1}
    prefs["effects"]["time"]["morning"] = {POLO: 0.3, XBOX: -0.5}
    prefs["effects"]["device"]["mobile"] = {POLO: {HERO: 0.1, SIDEBAR: -0.05}}
    scenario = Scenario.from_dict(data)
    assert scenario.accept_probability(MORNING_PHONE, HERO, POLO) == pytest.approx(0.2 + 0.3 + 0.1)
    assert scenario.accept_probability(MORNING_PHONE, SIDEBAR, POLO) == pytest.approx(0.1 + 0.3 - 0.05)
    assert scenario.accept_probability(MORNING_PHONE, HERO, XBOX) == 0.0  # clipped
    prefs["effects"]["time"]["morning"][POLO] = 0.9
    assert Scenario.from_dict(data).accept_probability(MORNING_PHONE, HERO, POLO) == 1.0


def test_joint_default_fills_unlisted_actions() -> None:
    data = tiny_dict()
    data["preferences"]["default"] = 0.05
    data["preferences"]["table"]["day"].pop("b")
    scenario = Scenario.from_dict(data)
    assert scenario.accept_probability({"time": "day"}, "side", "b") == 0.05


# ---------------------------------------------------------------- hidden truth


def test_oracle_respects_exclusions_and_uniqueness() -> None:
    tiny = Scenario.from_dict(tiny_dict())
    # day: 'a' is best everywhere but may fill one slot; 'c' never goes on top.
    assert tiny.oracle_choice({"time": "day"}) == {"top": "a", "side": "c"}
    # night: 'b' is best in both slots; the sum is best with b on top, c on the side.
    assert tiny.oracle_choice({"time": "night"}) == {"top": "b", "side": "c"}
    for name in SHIPPED:
        scenario = load_scenario(name)
        for context, progress in itertools.product(scenario.contexts, (0.0, 0.99)):
            page = scenario.oracle_choice(context, progress)
            assert list(page) == scenario.slot_ids
            assert len(set(page.values())) == len(page)
            for slot in scenario.slots:
                assert page[slot["id"]] not in slot["excludedActions"]


def test_matching_oracle_agrees_with_brute_force(monkeypatch) -> None:
    rng = np.random.default_rng(7)
    actions = [{"id": f"a{i}"} for i in range(8)]
    slots = [{"id": f"s{j}", "excludedActions": [f"a{j}"], "baselineAction": f"a{j + 1}"} for j in range(5)]
    table = {
        value: {a["id"]: {s["id"]: round(float(rng.uniform(0.05, 0.9)), 3) for s in slots} for a in actions}
        for value in ("x", "y", "z")
    }
    data = {"name": "big", "context": {"f": ["x", "y", "z"]}, "actions": actions, "slots": slots,
            "preferences": {"type": "joint", "table": table}}
    monkeypatch.setattr(oracle, "BRUTE_FORCE_LIMIT", 10**9)
    brute = Scenario.from_dict(data)
    monkeypatch.setattr(oracle, "BRUTE_FORCE_LIMIT", 0)
    matched = Scenario.from_dict(data)
    for context in brute.contexts:
        a, b = brute.oracle_choice(context), matched.oracle_choice(context)
        value_a, value_b = (sum(brute.accept_probability(context, s, x) for s, x in page.items()) for page in (a, b))
        assert value_a == pytest.approx(value_b)
        assert len(set(b.values())) == len(b)
        assert all(b[s["id"]] not in s["excludedActions"] for s in slots)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_truth_is_learnable(name: str) -> None:
    """Realistic probabilities, a clear winner per slot, and in-order greedy == oracle."""
    scenario = load_scenario(name)
    for context, progress in itertools.product(scenario.contexts, (0.0, 0.99)):
        page = scenario.oracle_choice(context, progress)
        used: set[str] = set()
        for slot in scenario.slots:
            allowed = [a for a in scenario.action_ids if a not in used and a not in slot["excludedActions"]]
            probs = sorted(
                ((scenario.accept_probability(context, slot["id"], a, progress), a) for a in allowed), reverse=True
            )
            assert probs[0][1] == page[slot["id"]]
            assert probs[0][0] - probs[1][0] >= 0.2 - 1e-9, (context, slot["id"])
            assert all(0.05 - 1e-9 <= p <= 0.9 + 1e-9 for p, _ in probs)
            used.add(page[slot["id"]])


def test_seed_winner_depends_on_context() -> None:
    scenario = load_scenario("seed")
    for slot_id in scenario.slot_ids:
        assert len({scenario.oracle_choice(c)[slot_id] for c in scenario.contexts}) >= 2


def test_seed_joint_is_not_additive() -> None:
    """An XOR pattern in the banner: a beats b at (t1,d1),(t2,d2) and loses at (t1,d2),(t2,d1).

    No additive time + device effect can produce that (summing the four inequalities
    gives x > 0 and x < 0), so the learner needs time x device interactions.
    """
    scenario = load_scenario("seed-joint")
    times, devices = scenario.context_options["time"], scenario.context_options["device"]

    def p(t: str, d: str, a: str) -> float:
        return scenario.accept_probability({"time": t, "device": d}, HERO, a)

    found = [
        (t1, t2, d1, d2, a, b)
        for t1, t2 in itertools.combinations(times, 2)
        for d1, d2 in itertools.combinations(devices, 2)
        for a, b in itertools.permutations([POLO, RACKET, XBOX], 2)
        if p(t1, d1, a) > p(t1, d1, b) and p(t2, d2, a) > p(t2, d2, b)
        and p(t1, d2, a) < p(t1, d2, b) and p(t2, d1, a) < p(t2, d1, b)
    ]
    assert found


def test_drift_changes_preferences_at_its_point() -> None:
    scenario = load_scenario("seed-drift")
    assert scenario.drift_at == 0.5
    assert scenario.phase(0.49) == 0 and scenario.phase(0.5) == 1
    changed = [c for c in scenario.contexts if scenario.oracle_choice(c, 0.0) != scenario.oracle_choice(c, 0.9)]
    assert len(changed) >= len(scenario.contexts) // 2
    assert scenario.accept_probability(MORNING_PHONE, HERO, POLO, 0.0) != scenario.accept_probability(
        MORNING_PHONE, HERO, POLO, 0.9
    )
    plain = load_scenario("seed")
    assert plain.oracle_choice(MORNING_PHONE, 0.9) == plain.oracle_choice(MORNING_PHONE, 0.0)


# ---------------------------------------------------------------- simulate


def test_records_have_every_field() -> None:
    scenario = load_scenario("seed")
    records = simulate(OracleBackend(scenario, 0.2, seed=1), scenario, 50, seed=3, event_prefix="sim-3-")
    assert len(records) == 50 * 2
    first = records[0]
    assert set(first) == {
        "index", "eventId", "context", "contextKey", "slotId", "actionId", "baselineActionId", "probability",
        "accepted", "expected", "oracle_expected", "baseline_expected", "phase",
    }
    assert first["eventId"] == "sim-3-0" and first["index"] == 0
    assert [r["slotId"] for r in records[:2]] == [HERO, SIDEBAR]
    for r in records:
        context = r["context"]
        assert r["contextKey"] == f"{context['time']}|{context['device']}"
        assert r["accepted"] in (0, 1)
        assert r["expected"] == scenario.accept_probability(context, r["slotId"], r["actionId"])
        best = scenario.oracle_choice(context)[r["slotId"]]
        assert r["oracle_expected"] == scenario.accept_probability(context, r["slotId"], best)
        assert r["baseline_expected"] == scenario.accept_probability(context, r["slotId"], r["baselineActionId"])
        assert 0 < r["probability"] <= 1
    pages = {}
    for r in records:
        pages.setdefault(r["eventId"], []).append(r["actionId"])
    assert all(len(set(p)) == len(p) for p in pages.values())


def test_simulate_is_deterministic_for_a_seed() -> None:
    scenario = load_scenario("seed-joint")
    one = simulate(RandomBackend(seed=5), scenario, 200, seed=11, event_prefix="a-")
    two = simulate(RandomBackend(seed=5), scenario, 200, seed=11, event_prefix="a-")
    other = simulate(RandomBackend(seed=5), scenario, 200, seed=12, event_prefix="a-")
    assert one == two
    assert [r["context"] for r in one] != [r["context"] for r in other]
    # Without a prefix each run gets fresh event ids (a durable engine replays known ids)...
    three = simulate(RandomBackend(seed=5), scenario, 200, seed=11)
    four = simulate(RandomBackend(seed=5), scenario, 200, seed=11)
    assert three[0]["eventId"].startswith("sim-11-") and three[0]["eventId"] != four[0]["eventId"]
    # ...and the same visitors, choices and rewards.
    strip = lambda records: [{k: v for k, v in r.items() if k != "eventId"} for r in records]  # noqa: E731
    assert strip(three) == strip(four) == strip(one)


def test_reference_backends_rank_in_the_expected_order() -> None:
    scenario = load_scenario("seed")
    n = 3000
    rates = {
        name: accept_rate(simulate(backend, scenario, n, seed=2))
        for name, backend in {
            "random": RandomBackend(seed=1),
            "baseline": BaselineBackend(),
            "oracle20": OracleBackend(scenario, 0.2, seed=1),
            "oracle": OracleBackend(scenario, 0.0, seed=1),
        }.items()
    }
    assert rates["random"] < rates["oracle20"] < rates["oracle"]
    assert rates["baseline"] < rates["oracle20"]
    # Close to the exact expectations (3000 events x 2 slots: standard error ~0.006).
    exact_random = sum(random_value(scenario, c) for c in scenario.contexts) / (len(scenario.contexts) * 2)
    exact_oracle = expected_value(scenario, scenario.oracle_choice)
    exact_baseline = expected_value(scenario, lambda c: {s["id"]: s["baselineAction"] for s in scenario.slots})
    assert rates["random"] == pytest.approx(exact_random, abs=0.03)
    assert rates["oracle"] == pytest.approx(exact_oracle, abs=0.03)
    assert rates["baseline"] == pytest.approx(exact_baseline, abs=0.03)


def test_oracle_follows_drift_and_reports_probabilities() -> None:
    scenario = load_scenario("seed-drift")
    records = simulate(OracleBackend(scenario, 0.0), scenario, 400, seed=4)
    assert {r["phase"] for r in records[:400]} == {0} and {r["phase"] for r in records[400:]} == {1}
    assert all(r["actionId"] == scenario.oracle_choice(r["context"], r["phase"] * 0.99)[r["slotId"]]
               for r in records)
    assert all(r["expected"] == r["oracle_expected"] and r["probability"] == 1.0 for r in records)
    explorer = simulate(OracleBackend(scenario, 0.5, seed=1), scenario, 200, seed=4)
    probabilities = {round(r["probability"], 4) for r in explorer}
    assert probabilities <= {round(0.5 + 0.5 / 3, 4), round(0.5 / 3, 4), 0.75, 0.25}


def test_simulate_reports_progress_and_sends_rewards() -> None:
    scenario = load_scenario("seed")
    calls: list[tuple[int, int]] = []
    backend = BaselineBackend()
    simulate(backend, scenario, 250, seed=0, on_progress=lambda done, total: calls.append((done, total)),
             progress_every=100, event_prefix="run-b-")
    assert calls == [(100, 250), (200, 250), (250, 250)]
    assert backend.rewards == 250


def test_simulate_uses_only_the_one_interface() -> None:
    """A backend with just rank/reward/activate works; rewards carry every slot."""
    scenario = load_scenario("seed")
    seen: list[tuple[str, dict]] = []
    inner = BaselineBackend()

    class Minimal:
        def rank(self, request: dict) -> dict:
            assert "eventId" in request and request["contextFeatures"]
            return {"eventId": request["eventId"],
                    "slots": [{"id": s["id"], "rewardActionId": s["rewardActionId"]}
                              for s in inner.rank(copy.deepcopy(request))["slots"]]}

        def reward(self, event_id: str, reward: dict) -> None:
            seen.append((event_id, reward))

        def activate(self, event_id: str) -> None:  # pragma: no cover - not deferred
            raise AssertionError

    records = simulate(Minimal(), scenario, 20, seed=1, event_prefix="x-")
    assert [e for e, _ in seen] == [f"x-{i}" for i in range(20)]
    assert all([r["slotId"] for r in reward["reward"]] == [HERO, SIDEBAR] for _, reward in seen)
    assert all(r["probability"] is None for r in records)


def test_simulate_rejects_a_bad_response() -> None:
    scenario = load_scenario("seed")

    class Liar(BaselineBackend):
        def rank(self, request: dict) -> dict:
            response = super().rank(request)
            response["slots"][0]["rewardActionId"] = "Pizza"
            return response

    with pytest.raises(ValueError, match="unknown action 'Pizza'"):
        simulate(Liar(), scenario, 3)


def test_rate_helpers() -> None:
    records = [{"index": i, "accepted": i % 2} for i in range(10) for _ in range(2)]
    assert accept_rate(records) == 0.5
    assert accept_rate(records, 0, 1) == 0.0
    assert math.isnan(accept_rate(records, 50))
    assert window_accept_rates(records, 4) == [0.5, 0.5, 0.5]


def test_greedy_agreement_of_the_oracle_is_total() -> None:
    scenario = load_scenario("seed-drift")
    assert greedy_agreement(lambda r: scenario.oracle_choice(_context(r), 0.99), scenario) == 1.0
    assert greedy_agreement(lambda r: scenario.oracle_choice(_context(r), 0.0), scenario) < 1.0


def _context(request: dict) -> dict:
    return {k: v for item in request["contextFeatures"] for k, v in item.items()}


# ---------------------------------------------------------------- the engine learns


def test_engine_greedy_policy_beats_random(tmp_path: Path) -> None:
    engine_module = pytest.importorskip("personalizer.engine")
    scenario = load_scenario("seed")
    engine = engine_module.LocalPersonalizer(tmp_path)
    simulate(engine, scenario, 1500, seed=0, event_prefix="learn-")

    def greedy_page(context) -> dict:
        return engine.greedy(scenario.rank_request(context))

    learned = expected_value(scenario, greedy_page)
    chance = sum(random_value(scenario, c) for c in scenario.contexts) / (len(scenario.contexts) * 2)
    best = expected_value(scenario, scenario.oracle_choice)
    assert learned >= chance + 0.6 * (best - chance)
    assert greedy_agreement(engine.greedy, scenario) >= 0.75
