"""The scenario generator: deterministic, exact oracle, valid catalogs, learnable families."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest

from personalizer import engine
from personalizer.scenario_generator import (
    EXAMPLE_SEEDS,
    FAMILIES,
    MAX_CONTEXTS,
    check_rank_contract,
    generate,
    save_examples,
    suite,
)
from personalizer.simulation import Scenario, load_scenario, simulate

SEEDS = range(60)


@pytest.fixture(scope="module")
def scenarios() -> list[Scenario]:
    return [generate(seed) for seed in SEEDS]


def test_same_seed_same_scenario_and_seeds_differ() -> None:
    for seed in (0, 7, 33):
        assert generate(seed).to_dict() == generate(seed).to_dict()
        assert generate(seed, "joint").to_dict() == generate(seed, "joint").to_dict()
    names = {json.dumps(generate(seed).to_dict(), sort_keys=True) for seed in range(12)}
    assert len(names) == 12
    assert [s.name for s in suite(4)] == ["gen-additive-0", "gen-pairwise-1", "gen-joint-2", "gen-sparse-3"]
    with pytest.raises(ValueError, match="unknown family"):
        generate(1, "cubic")


def test_sizes_and_variety_span_the_ranges(scenarios: list[Scenario]) -> None:
    for s in scenarios:
        assert 2 <= len(s.action_ids) <= 50
        assert 1 <= len(s.slot_ids) <= min(6, len(s.action_ids) - 1)
        assert 1 <= len(s.context_options) <= 8
        assert len(s.contexts) <= MAX_CONTEXTS
        assert all(slot["features"] for slot in s.slots)
    assert {s.name.split("-")[1] for s in scenarios} == set(FAMILIES)
    assert min(len(s.action_ids) for s in scenarios) <= 4 and max(len(s.action_ids) for s in scenarios) >= 35
    assert {len(s.slot_ids) for s in scenarios} == set(range(1, 7))
    assert {len(s.context_options) for s in scenarios} >= {1, 8}
    settings = [s.reward_settings for s in scenarios]
    assert {r["type"] for r in settings} == {"binary", "graded"}
    assert any(r["delay"] > 0 for r in settings) and any(r["missing"] > 0 for r in settings)
    assert any(s.drift is not None for s in scenarios)
    assert any(any(slot["excludedActions"] for slot in s.slots) for s in scenarios)
    numeric = nested = 0
    for s in scenarios:
        for name, values in s.context_options.items():
            numeric += all(isinstance(v, float) for v in values)
            nested += "." in name
    assert numeric and nested
    graded = [s for s in scenarios if s.reward_settings["type"] == "graded"]
    assert any(s.expected_rewards().min() < 0 for s in graded)  # rewards in [-1, 1], not only [0, 1]


def test_relevance_records_features_that_matter_and_noise(scenarios: list[Scenario]) -> None:
    for s in scenarios:
        matter, noise = s.relevance["matter"], s.relevance["noise"]
        assert set(matter["context"]) | set(noise["context"]) == set(s.context_options)
        assert not set(matter["context"]) & set(noise["context"])
        assert matter["context"] and matter["action"]
        assert {"price", "details.color", "details.sku"} <= set(noise["action"])
        # Every feature a term uses is recorded as mattering, and none recorded as noise is used.
        profiles = [s.preferences] + ([s.drift["preferences"]] if s.drift else [])
        used = {name for p in profiles for t in p["terms"] for name in t["context"]}
        assert used == set(matter["context"])


def _expected_from_terms(s: Scenario, prefs: dict, context: dict, slot: dict, action: dict) -> float:
    """An independent reading of the ``features`` preference type, for one (context, slot, action)."""
    def flat(objects: list[dict], item_id: str) -> dict[str, str]:
        out = {"id": item_id}
        for obj in objects:
            for key, value in obj.items():
                if isinstance(value, dict):
                    out.update({f"{key}.{k}": str(v) for k, v in value.items()})
                else:
                    out[key] = str(value)
        return out

    a, sl = flat(action["features"], action["id"]), flat(slot["features"], slot["id"])
    total = prefs["base"]
    for term in prefs["terms"]:
        numeric = [n for n in term["context"] if isinstance(context[n], float)]
        parts = [str(context[n]) for n in term["context"] if n not in numeric]
        if "slot" in term:
            parts.append(sl[term["slot"]])
        if "action" in term:
            parts.append(a[term["action"]])
        weight = term["weights"].get("|".join(parts), 0.0)
        total += weight * math.prod(context[n] for n in numeric)
    low = -1.0 if s.reward_settings["type"] == "graded" else 0.0
    return min(1.0, max(low, total))


def test_expected_rewards_follow_the_terms(scenarios: list[Scenario]) -> None:
    for s in scenarios[:24]:
        table = s.expected_rewards(0.0)
        for c in range(0, len(s.contexts), max(1, len(s.contexts) // 5)):
            for k, slot in enumerate(s.slots):
                for a, action in enumerate(s.actions):
                    want = _expected_from_terms(s, s.preferences, s.contexts[c], slot, action)
                    assert table[c, k, a] == pytest.approx(want, abs=1e-12)


def _brute_force_best(s: Scenario, rewards: np.ndarray) -> float:
    best = -math.inf
    for page in itertools.permutations(range(len(s.action_ids)), len(s.slot_ids)):
        if all(s.action_ids[a] not in slot["excludedActions"] for slot, a in zip(s.slots, page, strict=True)):
            best = max(best, sum(rewards[k, a] for k, a in enumerate(page)))
    return best


def test_oracle_is_exact_by_brute_force(scenarios: list[Scenario]) -> None:
    checked = 0
    for s in scenarios:
        if math.perm(len(s.action_ids), len(s.slot_ids)) > 20_000:
            continue
        for progress in (0.0, 1.0):
            table = s.expected_rewards(progress)
            for c in range(0, len(s.contexts), max(1, len(s.contexts) // 6)):
                context = s.contexts[c]
                page = s.oracle_choice(context, progress)
                assert len(set(page.values())) == len(page)
                for slot in s.slots:
                    assert page[slot["id"]] not in slot["excludedActions"]
                assert s.page_value(context, page, progress) == pytest.approx(_brute_force_best(s, table[c]), abs=1e-9)
                checked += 1
    assert checked >= 100
    # The oracle value is the mean of those best pages, and random is far below it.
    s = next(x for x in scenarios if len(x.contexts) <= 50 and math.perm(len(x.action_ids), len(x.slot_ids)) < 500)
    table = s.expected_rewards(1.0)
    assert s.oracle_value() == pytest.approx(np.mean([_brute_force_best(s, table[c]) for c in range(len(s.contexts))]))
    assert s.random_value() < s.oracle_value()


def test_every_catalog_passes_the_engines_validation(tmp_path: Path, scenarios: list[Scenario]) -> None:
    for seed in range(60, 120):
        check_rank_contract(generate(seed))  # raises PersonalizerError otherwise
    with engine.LocalPersonalizer(tmp_path) as learner:
        for s in scenarios:
            answer = learner.rank(s.rank_request(s.contexts[-1]))
            assert [slot["id"] for slot in answer["slots"]] == s.slot_ids


def test_nested_and_numeric_context_reach_the_request() -> None:
    s = generate(280)  # age (numeric), user.tier and geo.country (nested)
    request = s.rank_request(s.contexts[-1])
    merged = {k: v for obj in request["contextFeatures"] for k, v in obj.items()}
    assert isinstance(merged["age"], float)
    assert set(merged["user"]) == {"tier"} and set(merged["geo"]) == {"country"}


def test_saved_examples_are_the_generators_output(tmp_path: Path) -> None:
    written = save_examples(tmp_path)
    assert len(written) == len(EXAMPLE_SEEDS)
    for path in written:
        shipped = load_scenario(path.stem)
        assert shipped.to_dict() == json.loads(path.read_text())
        assert Scenario.from_dict(json.loads(path.read_text())).description == shipped.description


class _Recorder:
    """A backend that always shows the baseline and remembers when each reward arrived."""

    def __init__(self) -> None:
        self.ranks = 0
        self.rewards: list[tuple[int, str, list[float]]] = []

    def rank(self, request: dict) -> dict:
        self.ranks += 1
        return {"eventId": request["eventId"],
                "slots": [{"id": s["id"], "rewardActionId": s["baselineAction"]} for s in request["slots"]]}

    def reward(self, event_id: str, reward: dict) -> None:
        self.rewards.append((self.ranks, event_id, [r["value"] for r in reward["reward"]]))

    def activate(self, event_id: str) -> None:
        pass


def test_graded_late_and_missing_rewards() -> None:
    data = generate(309).to_dict()  # graded
    data["rewards"] = {"type": "graded", "noise": 0.5, "delay": 10, "missing": 0.2}
    s = Scenario.from_dict(data)
    backend = _Recorder()
    records = simulate(backend, s, 2000, seed=5, event_prefix="g-")
    values = np.array([r["accepted"] for r in records])
    expected = np.array([r["expected"] for r in records])
    assert values.min() >= -1 and values.max() <= 1
    assert np.all(np.abs(values - expected) <= 0.5 + 1e-12)
    assert abs(float(np.mean(values - expected))) < 0.02  # noise has mean zero
    sent = {event_id: ranks for ranks, event_id, _ in backend.rewards}
    assert 0.15 < 1 - len(sent) / 2000 < 0.25  # about a fifth never rewarded
    on_time = [ranks - 1 - int(e[2:]) for e, ranks in sent.items() if int(e[2:]) < 1980]
    assert set(on_time) == {10}  # each reward arrives 10 events after its rank


def test_features_preferences_are_validated() -> None:
    data = generate(2).to_dict()
    data["preferences"]["terms"][0]["weights"]["no-such-item"] = 0.5
    with pytest.raises(ValueError, match="no-such-item"):
        Scenario.from_dict(data)
    data = generate(2).to_dict()
    data["rewards"] = {"type": "binary", "noise": 0.2}
    with pytest.raises(ValueError, match="graded rewards only"):
        Scenario.from_dict(data)
    data["rewards"] = {"type": "ordinal"}
    with pytest.raises(ValueError, match="rewards.type"):
        Scenario.from_dict(data)
    data = generate(2).to_dict()
    data["relevance"]["matter"]["context"].append("shoe-size")
    with pytest.raises(ValueError, match="shoe-size"):
        Scenario.from_dict(data)
    data["relevance"] = {"matter": ["device"]}
    with pytest.raises(ValueError, match="'relevance' must look like"):
        Scenario.from_dict(data)


# One small scenario per family and a policy that learns it (chosen by bench/learning.py --suite).
LEARNABLE = [
    ("additive", 212, "--ccb_explore_adf --cb_type mtr --squarecb -q @_ -q ~_"),
    ("pairwise", 245, "--ccb_explore_adf --cb_type mtr --squarecb -q @_ -q ~_"),
    ("joint", 322, "--ccb_explore_adf --cb_type mtr --squarecb -q @_ -q ~_ --cubic @@_"),
    ("sparse", 195, "--ccb_explore_adf --cb_type mtr --squarecb -q @_ -q ~_"),
]


@pytest.mark.parametrize(("family", "seed", "policy"), LEARNABLE)
def test_each_family_is_learnable(tmp_path: Path, family: str, seed: int, policy: str) -> None:
    """After 1,500 events the learned greedy policy closes most of the gap from random to the oracle."""
    s = generate(seed)
    assert s.name == f"gen-{family}-{seed}"
    with engine.LocalPersonalizer(tmp_path, policy_arguments=policy) as learner:
        simulate(learner, s, 1500, seed=seed, event_prefix=f"learn-{seed}-")
        value = s.policy_value(learner.greedy)
    share = (value - s.random_value()) / (s.oracle_value() - s.random_value())
    assert share >= 0.7, (family, share)
