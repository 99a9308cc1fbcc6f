"""Evaluation intervals: Cressie-Read against vw-estimators, coverage with known truth, paired lift, verdicts, DR."""

from __future__ import annotations

import hashlib
import json
import math
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from estimators.bandits import cressieread

from personalizer import evaluation as ev
from personalizer.simulation import OracleBackend, load_scenario, simulate


def _inside(value: float, interval: tuple[float, float]) -> bool:
    return interval[0] <= value <= interval[1]


# ---------------------------------------------------------------- a first slot with known truth

def _world(rare: bool, epsilon: float) -> SimpleNamespace:
    """The seed scenario's hero slot: hidden accept probabilities, an epsilon-greedy oracle logging it.

    rare: the oracle never prefers the baseline, so only exploration shows it.
    """
    scenario = load_scenario("seed")
    spec = scenario.slots[0]
    actions = [a["id"] for a in scenario.actions if a["id"] not in spec["excludedActions"]]
    accept = np.array([[scenario.accept_probability(c, spec["id"], a) for a in actions] for c in scenario.contexts])
    baseline = actions.index(spec["baselineAction"])
    preference = accept.copy()
    if rare:
        preference[:, baseline] = -1.0
    logging = np.full(accept.shape, epsilon / len(actions))
    logging[np.arange(len(accept)), preference.argmax(axis=1)] += 1.0 - epsilon
    fixed = np.argsort(-accept, axis=1)[:, 1]  # a deterministic policy: each context's second-best action
    return SimpleNamespace(accept=accept, logging=logging, baseline=baseline, fixed=fixed)


def _log(world: SimpleNamespace, n: int, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    c = rng.integers(0, len(world.accept), n)
    a = np.minimum((rng.random(n)[:, None] > np.cumsum(world.logging[c], axis=1)).sum(axis=1),
                   world.accept.shape[1] - 1)
    r = (rng.random(n) < world.accept[c, a]).astype(float)
    return c, a, r, world.logging[c, a]


def test_cressie_read_agrees_with_vw_estimators() -> None:
    """Ours, from bucket statistics, equals vw-estimators' per-event Cressie-Read interval (unbounded and bounded)."""
    rng = np.random.default_rng(5)
    for trial in range(60):
        n = int(rng.integers(2, 300))
        p = rng.choice([0.05, 0.1, 0.5, 0.85, 1.0], size=n)
        pred = rng.choice([0.0, 1.0, 0.3], size=n)
        r = (rng.random(n) < rng.random()).astype(float)
        bound = None if trial % 2 else 20.0
        reference = cressieread.Interval() if bound is None else cressieread.Interval(wmax=bound)
        for pl, rr, pp in zip(p, r, pred, strict=True):
            reference.add_example(pl, rr, pp)
        ours = ev.estimate(pred / p, r, max_weight=bound).interval
        assert ours == pytest.approx(reference.get(0.05), abs=1e-9), (trial, n)


@pytest.mark.parametrize("rare", [False, True])
def test_headline_intervals_cover_the_truth_at_300_and_1500_events(rare: bool) -> None:
    """200 logs per size: the headline covers >= 90 % (nominal 95 %) and is no wider than vw-estimators'."""
    world = _world(rare, 0.1 if rare else 0.2)
    rng = np.random.default_rng(14 + rare)
    targets = {"Baseline": np.eye(3)[np.full(12, world.baseline)], "Fixed": np.eye(3)[world.fixed],
               "Random": np.full((12, 3), 1 / 3)}
    for n in (300, 1500):
        for name, pi in targets.items():
            truth = float((pi * world.accept).sum(axis=1).mean())
            hits = gauss_hits = 0
            width = reference_width = 0.0
            for _ in range(200):
                c, a, r, p = _log(world, n, rng)
                e = ev.estimate(pi[c, a] / p, r, max_weight=float((1 / p).max()))
                unbounded = ev.estimate(pi[c, a] / p, r)  # vw-estimators' default (checked equal above)
                hits += _inside(truth, e.interval)
                gauss_hits += _inside(truth, e.interval_of("gaussian"))
                width += e.interval[1] - e.interval[0]
                reference_width += unbounded.interval[1] - unbounded.interval[0]
            assert hits >= 180, (n, name, hits, gauss_hits)
            assert width <= reference_width, (n, name)


def test_paired_lift_interval_covers_the_true_lift() -> None:
    world = _world(True, 0.1)
    truth = float((world.logging * world.accept).sum(axis=1).mean() - world.accept[:, world.baseline].mean())
    rng = np.random.default_rng(3)
    for n in (300, 1500):
        hits = 0
        for _ in range(200):
            c, a, r, p = _log(world, n, rng)
            lift = ev._lift("s", 0, "conditional", (a == world.baseline) / p, r, float((1 / p).max()), (0.0, 1.0),
                            0.95, 100, 20)
            hits += _inside(truth, lift.interval)
            assert _inside(lift.lift, lift.interval)
        assert hits >= 180, (n, hits)


# ---------------------------------------------------------------- verdicts and time to decision

def _lift(lift: float, interval: tuple[float, float], *, events: int = 400, enough: bool = True,
          minimum: int = 0) -> ev.Lift:
    return ev.Lift("hero", 0, events, 50, 0.5, 0.5 - lift, lift, interval, lift, interval, interval, "conditional",
                   enough, "" if enough else "needs at least 20 events that showed the baseline action (has 5)",
                   0.95, interval, minimum)


def test_verdicts_read_the_headline_interval() -> None:
    assert _lift(0.1, (0.02, 0.2)).verdict == "winning"
    assert _lift(-0.1, (-0.2, -0.01)).verdict == "losing"
    assert _lift(0.05, (-0.05, 0.15)).verdict == "too early"
    assert _lift(0.1, (0.02, 0.2), enough=False, minimum=1600).verdict == "too early"
    assert _lift(0.1, (0.02, 0.2)).events_needed == 0
    d = _lift(0.1, (0.02, 0.2)).to_dict()
    assert d["verdict"] == "winning" and d["eventsNeeded"] == 0 and d["intervalKind"] == "cressie-read"


def test_events_needed_scales_the_width_like_one_over_root_n() -> None:
    # Lower end 0.1 below a lift of 0.05: the gap must halve, so 4x the events: 1,200 more.
    assert _lift(0.05, (-0.05, 0.15)).events_needed == 1200
    assert _lift(-0.05, (-0.15, 0.05)).events_needed == 1200
    assert _lift(0.0, (-0.1, 0.1)).events_needed is None          # no direction: no finite answer
    # Not enough data yet: at least what enough_data needs.
    assert _lift(0.1, (0.02, 0.2), enough=False, minimum=1600).events_needed == 1200


def test_events_needed_predicts_when_the_verdict_comes() -> None:
    """From 300 events of a clearly better online policy, the prediction lands within 3x of the truth."""
    world = _world(True, 0.1)
    rng = np.random.default_rng(8)
    ratios = []
    for _ in range(20):
        c, a, r, p = _log(world, 20_000, rng)
        w = (a == world.baseline) / p

        def lift_at(n: int, w: np.ndarray = w, r: np.ndarray = r, p: np.ndarray = p) -> ev.Lift:
            return ev._lift("s", 0, "conditional", w[:n], r[:n], float((1 / p[:n]).max()), (0.0, 1.0), 0.95, 100, 20)

        early = lift_at(300)
        if early.verdict != "too early" or early.events_needed is None:
            continue
        predicted = 300 + early.events_needed
        actual = next((n for n in range(300, 20_001, 100) if lift_at(n).verdict != "too early"), 20_000)
        ratios.append(predicted / actual)
    assert len(ratios) >= 5
    assert 1 / 3 <= float(np.median(ratios)) <= 3, ratios


# ---------------------------------------------------------------- doubly robust, on engine-shaped logs

def _events(n: int, seed: int, epsilon: float = 0.2) -> list[SimpleNamespace]:
    scenario = load_scenario("seed")
    records = simulate(OracleBackend(scenario, epsilon=epsilon, seed=seed), scenario, n, seed=seed,
                       event_prefix=f"dr-{seed}-")
    requests = {}
    for ctx in scenario.contexts:
        text = json.dumps(scenario.rank_request(ctx), sort_keys=True)
        requests["|".join(ctx.values())] = (json.loads(text), hashlib.sha256(text.encode()).hexdigest())
    by_event: dict[str, list[dict[str, Any]]] = {}
    for rec in records:
        by_event.setdefault(rec["eventId"], []).append(rec)
    out = []
    for i, (event_id, rows) in enumerate(by_event.items()):
        request, digest = requests[rows[0]["contextKey"]]
        response = {"eventId": event_id, "slots": [{"id": x["slotId"], "rewardActionId": x["actionId"],
                                                   "probability": x["probability"]} for x in rows]}
        out.append(SimpleNamespace(event_id=event_id, created=1.8e9 + i, request=request, request_hash=digest,
                                   response=response, mode="Online", status="learned",
                                   labels=[float(x["accepted"]) for x in rows],
                                   baseline_p=rows[0]["baseline_expected"]))
    return out


def test_doubly_robust_baseline_is_unbiased_and_steadier_than_snips() -> None:
    errors: dict[str, list[float]] = {"snips": [], "dr": []}
    for seed in range(12):
        events = _events(1000, seed)
        truth = float(np.mean([e.baseline_p for e in events]))  # hidden accept probability of the baseline
        head = ev.evaluate(events, include=("Baseline",)).policy("Baseline").headline
        errors["snips"].append(head.snips - truth)
        errors["dr"].append(head.dr - truth)
        assert head.dr_interval[0] <= head.dr <= head.dr_interval[1]
    mse = {k: float(np.mean(np.square(v))) for k, v in errors.items()}
    assert mse["dr"] < mse["snips"], mse
    assert abs(float(np.mean(errors["dr"]))) < 3 * math.sqrt(mse["dr"] / 12) + 0.01


def test_reward_model_never_reads_the_rows_own_event() -> None:
    data = ev.prepare(_events(300, 1))
    model = ev._RewardModel(data)
    rows = np.arange(len(data.chosen))
    before = model.predict(rows, data.chosen)
    data.reward[5] = 1.0 - data.reward[5]
    flipped = ev._RewardModel(data)
    after = flipped.predict(rows, data.chosen)
    assert after[5] == before[5]                  # its own reward does not move its prediction
    assert not np.array_equal(after, before)      # others' do


def test_replayed_candidates_get_dr_beside_snips() -> None:
    data = ev.prepare(_events(600, 2))
    res = ev.evaluate(data, [{"name": "default", "arguments": ev.PRESET_POLICIES["Project default"]}],
                      include=("Online",))
    head = res.policy("default").headline
    assert math.isfinite(head.dr) and head.dr != head.ips
    assert abs(head.dr - head.snips) < 0.1
    summary = res.policy_results()[1]["totalSummary"]
    assert summary["drAverageReward"] == pytest.approx(head.dr)
    assert summary["intervalKind"] == "cressie-read"
    assert summary["interval"] == pytest.approx(list(head.interval))
    assert summary["confidenceInterval"] == pytest.approx((head.interval[1] - head.interval[0]) / 2)
    row = next(r for r in res.policy_results_2022() if r["name"] == "default" and r["slotId"] == "")
    assert row["summary"]["confidenceInterval"] == pytest.approx(list(head.interval))
    for kind in ev.INTERVAL_KINDS:
        lo, hi = head.interval_of(kind)
        assert lo <= hi
    with pytest.raises(ValueError):
        head.interval_of("t-test")


def test_cascade_estimates_use_the_page_weight_bound() -> None:
    data = ev.prepare(_events(600, 3))
    res = ev.evaluate(data, include=("Baseline",))
    stats = res.policy("Baseline").stats
    later = 1 + res.slot_ids.index(data.slot_ids[1])
    first, second = (1 / data.probability[data.position == k] for k in (0, 1))
    page_bound = float(first.max() * second.max())
    assert stats["cascade"][ev._WB, later].max() <= page_bound
    assert stats["cascade"][ev._WB, later].max() > stats["conditional"][ev._WB, later].max()


def test_results_saved_before_these_fields_still_load() -> None:
    data = ev.prepare(_events(300, 4))
    res = ev.evaluate(data, include=("Baseline", "Random"))
    saved = res.to_json()
    for p in saved["policies"]:  # the 8-field statistics of earlier versions
        p["stats"] = {k: np.asarray(v)[:8].tolist() for k, v in p["stats"].items()}
    old = ev.EvaluationResult.from_json(saved)
    head, new_head = old.policy("Baseline").headline, res.policy("Baseline").headline
    assert head.snips == pytest.approx(new_head.snips)
    assert head.dr == pytest.approx(head.ips)                      # no DR terms saved: DR reads as IPS
    # No weight bound saved: Cressie-Read with unbounded weights, vw-estimators' default.
    first = data.position == 0
    w = data.is_baseline[first] / data.probability[first]
    assert head.interval == pytest.approx(ev.estimate(w, data.reward[first]).interval)


def test_exact_replay_gives_the_same_dr() -> None:
    """The pinned-predict path hands DR the same first-slot distributions as the learn-time read."""
    data = ev.prepare(_events(300, 5))
    policy = [{"name": "default", "arguments": ev.PRESET_POLICIES["Project default"]}]
    fast = ev.evaluate(data, policy, include=()).policy("default").headline
    exact = ev.evaluate(data, policy, include=(), exact=True).policy("default").headline
    assert exact.dr == pytest.approx(fast.dr, abs=1e-6)
    assert exact.snips == pytest.approx(fast.snips, abs=1e-6)
