"""Policy history and automatic optimization: records, restarts, rollback, the schedule, and decisions on
simulated traffic (a clearly better setting is found and applied; a best live policy is kept)."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from server_fixtures import KEY, ProcessServer, ThreadedServer
from timing import T0, FakeClock, Ticking

from personalizer import store
from personalizer.client import PersonalizerClient
from personalizer.contract import MultiSlotRankRequest, PersonalizerError
from personalizer.engine import (
    DEFAULT_POLICY_ARGUMENTS,
    DEFAULT_POLICY_NAME,
    RETIRED_POLICY_ARGUMENTS,
    LocalPersonalizer,
)
from personalizer.evaluation import PRESET_POLICIES, Evaluations, _engine_events
from personalizer.optimization import AutoOptimizer, next_due
from personalizer.policy_history import ChangeNote, same_arguments
from personalizer.server import API_VERSIONS
from personalizer.simulation import load_scenario, simulate
from personalizer.vw import budget
from personalizer.vw.arguments import effective_arguments

LEARNING_RATE = {"name": "slower", "arguments": "--ccb_explore_adf --epsilon 0.2 --cb_type mtr -q @_ -l 0.5"}
AUTH = {"Ocp-Apim-Subscription-Key": KEY}
JSON_AUTH = {**AUTH, "Content-Type": "application/json"}
HOUR = 3600.0


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def logged_engine(home: Path, policy: str, scenario: str, n: int = 1500, seed: int = 1
                  ) -> tuple[LocalPersonalizer, FakeClock]:
    """An engine running ``policy`` whose log holds ``n`` rewarded visitors of ``scenario``, a second apart."""
    clock = FakeClock()
    engine = LocalPersonalizer(home, clock=clock, policy_arguments=policy)
    simulate(Ticking(engine, clock, 1.0), load_scenario(scenario), n, seed=seed, event_prefix=f"auto-{seed}-")
    clock.advance(HOUR)
    engine.process_due()
    return engine, clock


# ---------------------------------------------------------------- the history

def test_every_policy_change_is_recorded_and_survives_a_restart(tmp_path: Path, clock: FakeClock) -> None:
    home = tmp_path / "data"
    with LocalPersonalizer(home, clock=clock) as engine:
        assert engine.policy_history() == []
        clock.advance(10)
        engine.update_policy(LEARNING_RATE)
        clock.advance(10)
        engine.reset_policy(note=ChangeNote(who="person", action="reset"))
        history = engine.policy_history()
    assert [c["action"] for c in history] == ["reset", "update"]  # newest first
    update = history[1]
    assert update["who"] == "api" and update["evaluationId"] is None and update["estimate"] is None
    assert update["time"] == _iso(T0 + 10).replace("Z", ".000Z")
    assert same_arguments(update["before"]["arguments"], DEFAULT_POLICY_ARGUMENTS)
    assert update["after"] == {"name": "slower", "explorationPercentage": 0.2,
                               "arguments": "--ccb_explore_adf --cb_type mtr -q @_ -l 0.5 --epsilon 0.2"}
    assert history[0]["who"] == "person" and history[0]["after"]["name"] == DEFAULT_POLICY_NAME
    with LocalPersonalizer(home, clock=clock) as again:  # the store is the truth: the history is still there
        assert again.policy_history() == history
        assert again.policy_change(update["id"]) == update
        assert again.policy_history(limit=1) == history[:1]


def test_rollback_restores_the_previous_arguments_and_exploration(tmp_path: Path, clock: FakeClock) -> None:
    with LocalPersonalizer(tmp_path / "data", clock=clock) as engine:
        before = engine.get_policy()
        engine.update_policy({"name": "less exploration", "arguments": LEARNING_RATE["arguments"]},
                             exploration_percentage=0.1)
        assert engine.get_service_configuration()["explorationPercentage"] == 0.1
        change = engine.policy_history()[0]
        assert change["before"]["explorationPercentage"] == 0.2 and change["after"]["explorationPercentage"] == 0.1

        rollback = engine.rollback_policy(change["id"], who="person")
        assert engine.get_policy() == before
        assert engine.get_service_configuration()["explorationPercentage"] == 0.2
        assert rollback["action"] == "rollback" and rollback["who"] == "person"
        assert rollback["rollbackOf"] == change["id"] and rollback["after"] == change["before"]
        assert rollback["before"] == change["after"]
        # Rolling back again: that policy is already live, a 409 that changes nothing.
        with pytest.raises(PersonalizerError) as info:
            engine.rollback_policy(change["id"])
        assert info.value.status == 409 and info.value.code == "PolicyAlreadyActive"
        # Rolling back the rollback brings the other policy back.
        engine.rollback_policy(rollback["id"])
        assert engine.get_policy()["name"] == "less exploration"
        assert len(engine.policy_history()) == 3
        for bad in ("999", "x", "-1", "0", "1e3", "9" * 30, "\u0661", " 1"):
            with pytest.raises(PersonalizerError) as info:
                engine.rollback_policy(bad)
            assert info.value.status == 404
        assert len(engine.policy_history()) == 3


def test_a_refused_policy_records_nothing(engine: LocalPersonalizer) -> None:
    with pytest.raises(PersonalizerError) as info:
        engine.update_policy({"name": "bad", "arguments": "--ccb_explore_adf -f /tmp/x"})
    assert info.value.status == 400
    with pytest.raises(PersonalizerError):
        engine.update_policy(LEARNING_RATE, exploration_percentage=1.5)
    assert engine.policy_history() == []
    assert engine.get_service_configuration()["explorationPercentage"] == 0.2


def test_a_version_1_database_is_migrated_with_its_rows(tmp_path: Path, clock: FakeClock) -> None:
    home = tmp_path / "data"
    with LocalPersonalizer(home, clock=clock) as engine:
        engine.save_record("evaluation", "kept", 1.0, "{}")
    db = sqlite3.connect(home / "personalizer.sqlite3")  # as version 1 left it: no later tables
    try:
        with db:
            db.execute("DROP TABLE policy_changes")
            db.execute("DROP TABLE feature_importances")
            db.execute("PRAGMA user_version = 1")
    finally:
        db.close()
    with LocalPersonalizer(home, clock=clock) as engine:
        assert engine._log.schema_version() == store.SCHEMA_VERSION == 3
        assert engine.records("evaluation") == [("kept", "{}")]
        engine.update_policy(LEARNING_RATE)
        assert len(engine.policy_history()) == 1


def test_same_arguments_ignores_order_and_spelling() -> None:
    assert same_arguments("--ccb_explore_adf -l 1 --epsilon 0.2 -q @_", "--ccb_explore_adf -q @_ --epsilon=.2 "
                          "--learning_rate 1.0")
    assert not same_arguments("--ccb_explore_adf -q @_", "--ccb_explore_adf -q @~")
    assert not same_arguments("--ccb_explore_adf -q @_", "--ccb_explore_adf -q @_ -q @~")


# ---------------------------------------------------------------- the schedule

def test_schedule_follows_start_date_and_frequency() -> None:
    off = {"isAutoOptimizationEnabled": False, "autoOptimizationFrequency": "PT1H"}
    assert next_due(off, None) is None
    start = T0 + 100
    cfg = {"isAutoOptimizationEnabled": True, "autoOptimizationFrequency": "PT1H",
           "autoOptimizationStartDate": _iso(start)}
    assert next_due(cfg, None) == start
    assert next_due(cfg, start - 5) == start                 # a run before the start date does not count
    assert next_due(cfg, start) == start + HOUR
    assert next_due(cfg, start + 3.5 * HOUR) == start + 4 * HOUR  # missed periods run once, then on the grid
    loose = {"isAutoOptimizationEnabled": True}
    assert next_due(loose, None) == float("-inf")              # no start date: at once
    assert next_due(loose, T0) == T0 + 7 * 86400              # then every P7D (the default)


def test_invalid_auto_optimization_settings_are_refused(engine: LocalPersonalizer) -> None:
    before = engine.get_service_configuration()
    for bad in ({"autoOptimizationFrequency": "weekly"}, {"autoOptimizationFrequency": "PT10S"},
                {"autoOptimizationStartDate": "next monday"}):
        with pytest.raises(PersonalizerError) as info:
            engine.update_service_configuration(bad)
        assert info.value.status == 400 and info.value.code == "InvalidServiceConfiguration"
    assert engine.get_service_configuration() == before


# ---------------------------------------------------------------- decisions on simulated traffic

@pytest.fixture
def poor_live_policy(tmp_path: Path) -> Iterator[tuple[LocalPersonalizer, FakeClock, Evaluations]]:
    """The retired default serving seed-joint (tastes by time x device jointly): it cannot learn them."""
    engine, clock = logged_engine(tmp_path / "poor", RETIRED_POLICY_ARGUMENTS, "seed-joint")
    manager = Evaluations(engine, clock=clock)
    yield engine, clock, manager
    manager.close()
    engine.close()


def enable(engine: LocalPersonalizer, start: float, frequency: str = "P1D") -> None:
    engine.update_service_configuration({"isAutoOptimizationEnabled": True, "autoOptimizationFrequency": frequency,
                                         "autoOptimizationStartDate": _iso(start)})


def test_apply_from_an_evaluation_records_the_estimate(
        poor_live_policy: tuple[LocalPersonalizer, FakeClock, Evaluations]) -> None:
    engine, clock, manager = poor_live_policy
    evaluation = manager.create(None, "manual", T0, clock.now, [{"name": "Cubic", "arguments": CUBIC}])
    manager.wait(evaluation["id"], timeout=60)
    result = manager.result(evaluation["id"])
    manager.apply(evaluation["id"], "Cubic")
    change = engine.policy_history()[0]
    assert change["who"] == "api" and change["action"] == "evaluation"
    assert change["evaluationId"] == evaluation["id"]
    estimate = change["estimate"]
    cubic, online = result.policy("Cubic").headline, result.policy("Online").headline
    assert estimate["value"] == pytest.approx(cubic.snips) and estimate["online"] == pytest.approx(online.snips)
    assert estimate["interval"] == pytest.approx(list(cubic.interval))
    assert estimate["lift"] == pytest.approx(cubic.snips - online.snips)
    assert estimate["liftInterval"] == pytest.approx([cubic.interval[0] - online.snips,
                                                      cubic.interval[1] - online.snips])
    assert estimate["events"] == result.events and estimate["slotId"] == result.slot_ids[0]
    assert same_arguments(change["after"]["arguments"], CUBIC)


def test_auto_optimization_applies_a_clearly_better_policy(
        poor_live_policy: tuple[LocalPersonalizer, FakeClock, Evaluations]) -> None:
    engine, clock, manager = poor_live_policy
    optimizer = AutoOptimizer(engine, manager, clock=clock)
    assert optimizer.run_due_optimization() is None           # disabled: nothing runs
    enable(engine, clock.now + HOUR)
    assert optimizer.run_due_optimization() is None           # not yet due
    assert engine.policy_history() == []
    clock.advance(HOUR)
    run = optimizer.run_due_optimization()
    assert run is not None and run["decision"] == "applied", run
    best = run["best"]
    assert best["interval"][0] > run["online"]["value"] + optimizer.margin
    assert run["events"] >= optimizer.min_events
    policy = engine.get_policy()
    assert same_arguments(policy["arguments"], best["arguments"])
    assert not same_arguments(policy["arguments"], RETIRED_POLICY_ARGUMENTS)
    assert engine.get_service_configuration()["explorationPercentage"] == 0.2  # exploration stays the owner's
    change = engine.policy_history()[0]
    assert change["who"] == "auto" and change["action"] == "auto" and change["id"] == run["changeId"]
    assert change["evaluationId"] == run["evaluationId"]
    assert same_arguments(change["before"]["arguments"], RETIRED_POLICY_ARGUMENTS)
    estimate = change["estimate"]
    assert estimate["policy"] == best["name"] and estimate["intervalKind"] == "cressie-read"
    assert estimate["lift"] > 0 and estimate["liftInterval"][0] > optimizer.margin
    assert manager.get(run["evaluationId"])["evaluationType"] == "Auto"
    assert engine.auto_optimization_state()["lastRun"]["decision"] == "applied"
    # Once done, the next run waits a period; rollback restores the retired default.
    assert optimizer.run_due_optimization() is None
    engine.rollback_policy(change["id"])
    assert same_arguments(engine.get_policy()["arguments"], RETIRED_POLICY_ARGUMENTS)


def test_a_candidate_over_the_rank_budget_is_never_applied(
        poor_live_policy: tuple[LocalPersonalizer, FakeClock, Evaluations]) -> None:
    engine, clock, manager = poor_live_policy
    request = MultiSlotRankRequest.model_validate(engine.events()[-1].request)
    joint = effective_arguments(PRESET_POLICIES["Joint interactions"], 0.2)
    lean = effective_arguments(DEFAULT_POLICY_ARGUMENTS, 0.2)
    assert budget.rank_features(request, lean) < budget.rank_features(request, joint)
    engine.max_rank_features = budget.rank_features(request, lean)  # today's traffic fits only without cubes
    optimizer = AutoOptimizer(engine, manager, clock=clock)
    enable(engine, clock.now)
    run = optimizer.run_due_optimization()
    assert run is not None and run["decision"] in ("applied", "kept"), run
    result = manager.result(run["evaluationId"])
    assert result is not None
    evaluated = {p.name for p in result.policies}
    assert "Project default" in evaluated and "Joint interactions" not in evaluated
    assert "--cubic" not in engine.get_policy()["arguments"]


def test_a_policy_changed_while_evaluating_is_not_overridden(
        poor_live_policy: tuple[LocalPersonalizer, FakeClock, Evaluations]) -> None:
    engine, clock, _ = poor_live_policy
    reads: list[tuple[float, float]] = []

    def events(start: float, end: float) -> Iterator[Any]:
        reads.append((start, end))
        if len(reads) == 2:  # the evaluation's worker reads the log; meanwhile someone sets a policy
            engine.update_policy(LEARNING_RATE)
        return _engine_events(engine, start, end)

    with Evaluations(engine, clock=clock, events=events) as manager:
        enable(engine, clock.now)
        run = AutoOptimizer(engine, manager, clock=clock).run_due_optimization()
    assert run is not None and run["decision"] == "kept" and "changed while" in run["reason"], run
    assert engine.get_policy()["name"] == "slower"
    assert [c["who"] for c in engine.policy_history()] == ["api"]


#: The project default when this was written (cubic context x context x action), spelled out so that a new
#: default (issue 11) does not change what these tests mean.
CUBIC = "--ccb_explore_adf --epsilon 0.2 --cb_type mtr --cubic @@_ -l 1"
#: Candidates around CUBIC: the retired default (far worse on these scenarios), near-ties (a slower learning
#: rate, CUBIC with VW's default --power_t spelled out: the very same learner) and plain -q @_, about as good
#: on the additive seed scenario.
NEAR_TIES = {"Retired": RETIRED_POLICY_ARGUMENTS, "Slower": CUBIC.replace("-l 1", "-l 0.8"),
             "Same learner": CUBIC + " --power_t 0.5", "Quadratic": "--ccb_explore_adf --epsilon 0.2 --cb_type mtr "
             "-q @_ -l 1", "Live, respelled": "--ccb_explore_adf --learning_rate 1.0 --cubic @@_ --cb_type mtr"}


@pytest.mark.parametrize("scenario", ["seed-joint", "seed"])
def test_auto_optimization_keeps_the_best_live_policy(tmp_path: Path, scenario: str) -> None:
    engine, clock = logged_engine(tmp_path / "good", CUBIC, scenario)
    try:
        with Evaluations(engine, clock=clock) as manager:
            optimizer = AutoOptimizer(engine, manager, clock=clock, candidates=NEAR_TIES)
            enable(engine, clock.now)
            before = engine.get_policy()
            run = optimizer.run_due_optimization()
            assert run is not None and run["decision"] == "kept", run
            assert run["best"]["interval"][0] <= run["online"]["value"] + optimizer.margin
            assert engine.get_policy() == before and engine.policy_history() == []
            # The live policy, however spelled, is never a candidate.
            results = manager.get(run["evaluationId"])["policyResults"]
            assert sorted(p["name"] for p in results if p["policySource"] == "Custom") == \
                ["Quadratic", "Retired", "Same learner", "Slower"]
            # Not vacuous: the best candidate is a tie whose interval holds the online estimate.
            lo, hi = run["best"]["interval"]
            assert lo < run["online"]["value"] < hi
    finally:
        engine.close()


def test_auto_optimization_waits_for_enough_events(tmp_path: Path) -> None:
    engine, clock = logged_engine(tmp_path / "few", RETIRED_POLICY_ARGUMENTS, "seed-joint", n=200)
    try:
        with Evaluations(engine, clock=clock) as manager:
            optimizer = AutoOptimizer(engine, manager, clock=clock)
            enable(engine, clock.now)
            run = optimizer.run_due_optimization()
            assert run is not None and run["decision"] == "skipped" and "1000" in run["reason"]
            assert manager.list() == [] and engine.policy_history() == []
            low = AutoOptimizer(engine, manager, clock=clock, min_events=100)
            for setting in ({"learningMode": "Apprentice"}, {"explorationPercentage": 0.0}):
                engine.update_service_configuration(setting)  # logs without exploration: nothing to evaluate
                assert low.optimize()["decision"] == "skipped"
                engine.update_service_configuration({"learningMode": "Online", "explorationPercentage": 0.2})
            assert manager.list() == []
            # With a lower threshold the same log is evaluated, yet the evaluation's own count still decides.
            assert low.optimize()["decision"] in ("applied", "kept")
    finally:
        engine.close()


# ---------------------------------------------------------------- through the server and the client

def test_history_and_rollback_through_the_server_and_the_client(tmp_path: Path) -> None:
    engine = LocalPersonalizer(tmp_path / "data")
    try:
        with ThreadedServer(engine) as srv:
            base = f"{srv.base}/personalizer/v1.1-preview.3"
            r = requests.put(f"{base}/configurations/policy", json=LEARNING_RATE, headers=JSON_AUTH, timeout=30)
            assert r.status_code == 200
            r = requests.delete(f"{srv.base}/personalizer/configurations/policy", params={"api-version":
                                API_VERSIONS[0]}, headers=AUTH, timeout=30)
            assert r.status_code == 200
            listed = requests.get(f"{base}/configurations/policy/history", headers=AUTH, timeout=10).json()
            assert [c["action"] for c in listed["value"]] == ["reset", "update"]
            assert {c["who"] for c in listed["value"]} == {"api"}
            assert listed["autoOptimization"]["enabled"] is False
            assert listed["autoOptimization"]["minEvents"] == 1000
            update_id = listed["value"][1]["id"]
            one = requests.get(f"{base}/configurations/policy/history/{update_id}", headers=AUTH, timeout=10)
            assert one.status_code == 200 and one.json() == listed["value"][1]
            # Errors are Personalizer's and change nothing.
            for path, method in ((f"{base}/configurations/policy/history/nope", "GET"),
                                 (f"{base}/configurations/policy/history/12345/rollback", "POST")):
                bad = requests.request(method, path, headers=AUTH, timeout=10)
                assert bad.status_code == 404 and bad.json()["error"]["code"] == "ResourceNotFound"
            assert requests.get(f"{base}/configurations/policy/history", timeout=10).status_code == 401
            # The same routes on the SDK's path (?api-version), which insists on a known version.
            sdk = f"{srv.base}/personalizer/configurations/policy/history"
            top = requests.get(sdk, params={"api-version": API_VERSIONS[0], "top": "1"}, headers=AUTH, timeout=10)
            assert top.status_code == 200 and top.json()["value"] == listed["value"][:1]
            for params in ({}, {"api-version": "2020-01-01"}, {"api-version": API_VERSIONS[0], "top": "0"}):
                refused = requests.get(sdk, params=params, headers=AUTH, timeout=10)
                assert refused.status_code == 400 and refused.json()["error"]["code"] == "BadRequest"

            with PersonalizerClient(srv.base, KEY) as client:
                assert client.policy_history() == listed["value"]
                back = client.rollback_policy(listed["value"][0]["id"])  # undo the reset
                assert back["action"] == "rollback" and back["who"] == "api"
                assert client.get_policy()["name"] == "slower"
                with pytest.raises(PersonalizerError) as info:
                    client.rollback_policy(listed["value"][0]["id"])
                assert info.value.status == 409
                assert len(client.policy_history()) == 3
            bad_cfg = requests.put(f"{base}/configurations/service", json={"autoOptimizationFrequency": "soon"},
                                   headers=JSON_AUTH, timeout=10)
            assert bad_cfg.status_code == 400
            assert bad_cfg.json()["error"]["code"] == "InvalidServiceConfiguration"
    finally:
        engine.close()


def test_the_server_runs_auto_optimization_on_its_schedule(tmp_path: Path) -> None:
    engine, clock = logged_engine(tmp_path / "served", RETIRED_POLICY_ARGUMENTS, "seed-joint")
    try:
        with ThreadedServer(engine, auto_optimization={"clock": clock, "poll_seconds": 0.05}) as srv:
            base = f"{srv.base}/personalizer/v1.1-preview.1"
            start = clock.now
            cfg = {"isAutoOptimizationEnabled": True, "autoOptimizationFrequency": "P1D",
                   "autoOptimizationStartDate": _iso(start)}
            assert requests.put(f"{base}/configurations/service", json=cfg, headers=JSON_AUTH,
                                timeout=10).status_code == 200
            deadline = time.monotonic() + 60
            history: dict[str, Any] = {}
            while time.monotonic() < deadline:
                history = requests.get(f"{base}/configurations/policy/history", headers=AUTH, timeout=10).json()
                if (history["autoOptimization"]["lastRun"] or {}).get("decision"):
                    break
                time.sleep(0.1)
            status = history["autoOptimization"]
            assert status["lastRun"]["decision"] == "applied", status
            assert status["nextRun"] == _iso(start + 86400)
            assert history["value"][0]["who"] == "auto"
            evaluations = requests.get(f"{base}/evaluations", headers=AUTH, timeout=10).json()
            assert [e["evaluationType"] for e in evaluations] == ["Auto"]
            assert evaluations[0]["status"] == "optimalPolicyApplied"
    finally:
        engine.close()


def test_the_history_survives_a_server_restart_and_a_kill(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with ProcessServer(data) as srv:
        base = f"{srv.base}/personalizer/v1.1-preview.1"
        assert requests.put(f"{base}/configurations/policy", json=LEARNING_RATE, headers=JSON_AUTH,
                            timeout=30).status_code == 200
        srv.kill()  # SIGKILL right after the answer: the change was committed before it
    with ProcessServer(data) as srv:
        base = f"{srv.base}/personalizer/v1.1-preview.1"
        history = requests.get(f"{base}/configurations/policy/history", headers=AUTH, timeout=10).json()["value"]
        assert [c["after"]["name"] for c in history] == ["slower"]
        back = requests.post(f"{base}/configurations/policy/history/{history[0]['id']}/rollback", headers=AUTH,
                             timeout=30)
        assert back.status_code == 200
    with ProcessServer(data) as srv:  # after a clean stop too
        base = f"{srv.base}/personalizer/v1.1-preview.1"
        history = requests.get(f"{base}/configurations/policy/history", headers=AUTH, timeout=10).json()["value"]
        assert [c["action"] for c in history] == ["rollback", "update"]
        policy = requests.get(f"{base}/configurations/policy", headers=AUTH, timeout=10).json()
        assert policy["name"] == DEFAULT_POLICY_NAME and same_arguments(policy["arguments"], DEFAULT_POLICY_ARGUMENTS)


def test_openapi_documents_the_history_routes(tmp_path: Path) -> None:
    engine = LocalPersonalizer(tmp_path / "data")
    try:
        with ThreadedServer(engine) as srv:
            paths = requests.get(f"{srv.base}/openapi.json", timeout=10).json()["paths"]
    finally:
        engine.close()
    for prefix in ("/personalizer/v1.1-preview.1", "/personalizer/v1.1-preview.3", "/personalizer"):
        assert set(paths[f"{prefix}/configurations/policy/history"]) == {"get"}
        rollback = paths[f"{prefix}/configurations/policy/history/{{changeId}}/rollback"]["post"]
        assert "changeId" in {p["name"] for p in rollback["parameters"]}
