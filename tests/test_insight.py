"""Feature importances and "why this action": through the official SDK, on held-back truth, and adding up.

- The SDK's feature-importance calls (create, poll, list, delete) run unchanged against the real server.
- Importances find the truth of a simulated shop with relevant and pure-noise features (fixed seeds).
- Explanations add up to the model's own score difference (VW's scores, not ours), name only
  features the request holds, say "explored" for explored slots, and never run unless asked.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from server_fixtures import KEY, ThreadedServer, rank_request

from personalizer import LocalPersonalizer, PersonalizerError
from personalizer.client import PersonalizerClient
from personalizer.contract import MultiSlotRankRequest
from personalizer.importance import FeatureImportances, feature_importances
from personalizer.simulation import load_scenario, simulate
from personalizer.vw import explain as vw_explain
from personalizer.vw.encoding import encode_request

sdk = pytest.importorskip("azure.ai.personalizer")
from azure.core.credentials import AzureKeyCredential  # noqa: E402
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError  # noqa: E402

# ---------------------------------------------------------------- the official SDK

@pytest.fixture
def admin(live_server: ThreadedServer) -> Iterator[Any]:
    client = sdk.PersonalizerAdministrationClient(live_server.base + "/", AzureKeyCredential(KEY), retry_total=0)
    yield client
    client.close()


def test_feature_importances_through_the_sdk(admin: Any, live_server: ThreadedServer) -> None:
    simulate(live_server.engine, load_scenario("seed"), 300, seed=4, event_prefix="fi-sdk")  # repeatable draws
    now = datetime.now(UTC)
    contract = {"name": "what drives the shop", "startTime": (now - timedelta(hours=1)).isoformat(),
                "endTime": (now + timedelta(minutes=5)).isoformat()}
    assert admin.create_feature_importance("fi-1", contract) is None
    with pytest.raises(ResourceExistsError) as info:
        admin.create_feature_importance("fi-1", contract)
    assert info.value.error.code == "FeatureImportanceAlreadyExists"
    listed = list(admin.list_feature_importances())
    assert [(f["id"], f["name"]) for f in listed] == [("fi-1", "what drives the shop")]
    assert listed[0]["status"] in ("Running", "Succeeded") and "featureScores" not in listed[0]

    deadline = time.monotonic() + 60
    while (job := admin.get_feature_importance("fi-1"))["status"] == "Running" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert job["status"] == "Succeeded", job
    scores = job["featureScores"]
    names = {(s["namespace"], s["featureName"]) for s in scores}
    assert {("context", "time"), ("context", "device"), ("action", "category"), ("action", "price"),
            ("action", "onSale"), ("action", "_id"), ("slot", "size"), ("slot", "position"), ("slot", "_id")} == names
    values = [s["score"] for s in scores]
    assert values == sorted(values, reverse=True) and all(0 <= v <= 1 for v in values)
    assert sum(values) == pytest.approx(1.0)
    assert scores[0]["namespace"] == "context"  # the seed shop's tastes follow the time of day and device
    for s in scores:
        low, high = s["rewardDropInterval"]
        assert low <= s["rewardDrop"] <= high
    assert job["events"] == 300 and job["description"]

    assert admin.delete_feature_importance("fi-1") is None
    with pytest.raises(ResourceNotFoundError) as info:
        admin.get_feature_importance("fi-1")
    assert info.value.error.code == "FeatureImportanceNotFound"
    assert list(admin.list_feature_importances()) == []


def test_feature_importance_errors_change_nothing(admin: Any, live_server: ThreadedServer) -> None:
    now = datetime.now(UTC)
    empty = {"name": "nothing logged", "startTime": (now - timedelta(hours=1)).isoformat(),
             "endTime": now.isoformat()}
    with pytest.raises(HttpResponseError) as info:
        admin.create_feature_importance("empty", empty)
    assert info.value.status_code == 400 and info.value.error.code == "NoLogsExistInDateRange"
    for bad in ({"name": "", "startTime": empty["startTime"], "endTime": empty["endTime"]},
                {"name": "backwards", "startTime": empty["endTime"], "endTime": empty["startTime"]},
                {"name": "no dates"}, {"name": "bad date", "startTime": "yesterday", "endTime": "today"}):
        with pytest.raises(HttpResponseError) as info:
            admin.create_feature_importance("bad", bad)
        assert info.value.status_code == 400 and info.value.error.code == "InvalidContract", bad
    with pytest.raises(ResourceNotFoundError):
        admin.delete_feature_importance("never-made")
    assert list(admin.list_feature_importances()) == []


def test_client_and_embedded_manager_offer_the_same_calls(live_server: ThreadedServer, tmp_path: Path) -> None:
    simulate(live_server.engine, load_scenario("seed"), 150, seed=2)
    now = datetime.now(UTC)
    contract = {"name": "client", "startTime": (now - timedelta(hours=1)).isoformat(),
                "endTime": (now + timedelta(minutes=5)).isoformat()}
    with PersonalizerClient(live_server.base, KEY, retries=0) as client:
        created = client.create_feature_importance("via-client", contract)
        assert created["id"] == "via-client" and created["status"] in ("Running", "Succeeded")
        deadline = time.monotonic() + 60
        while (remote := client.get_feature_importance("via-client"))["status"] == "Running" \
                and time.monotonic() < deadline:
            time.sleep(0.05)
        assert remote["status"] == "Succeeded"
        assert [i["id"] for i in client.list_feature_importances()] == ["via-client"]
        client.delete_feature_importance("via-client")
        with pytest.raises(PersonalizerError) as info:
            client.get_feature_importance("via-client")
        assert info.value.code == "FeatureImportanceNotFound" and info.value.status == 404
    # The embedded manager answers the same shapes under the same names, and keeps finished jobs.
    local = FeatureImportances(live_server.engine, persist=False)
    try:
        local.create_feature_importance("embedded", contract)
        done = local.wait("embedded", timeout=60)
        assert done["status"] == "Succeeded" and set(done) >= set(remote)
        assert [s["featureName"] for s in done["featureScores"]] == [s["featureName"]
                                                                      for s in remote["featureScores"]]
    finally:
        local.close()


def test_finished_jobs_survive_a_restart(tmp_path: Path) -> None:
    engine = LocalPersonalizer(tmp_path / "data")
    try:
        simulate(engine, load_scenario("seed"), 120, seed=3)
        contract = {"name": "kept", "startTime": "2000-01-01T00:00:00", "endTime": "2100-01-01T00:00:00"}
        with FeatureImportances(engine) as jobs:
            jobs.create("kept", contract)
            before = jobs.wait("kept", timeout=60)
        engine.close()
        engine = LocalPersonalizer(tmp_path / "data")  # the jobs live in the engine's database
        assert [job_id for job_id, _ in engine.records("featureImportance")] == ["kept"]
        with FeatureImportances(engine) as again:
            assert again.get("kept") == before
    finally:
        engine.close()


# ---------------------------------------------------------------- held-back truth

TIMES = ("morning", "afternoon", "evening", "night")
DEVICES = ("mobile", "tablet", "desktop")
CATEGORY = {"a": "shoes", "b": "shoes", "c": "books", "d": "books"}
RELEVANT = {("context", "time"), ("context", "device"), ("action", "discount")}
NOISE = {("context", "weather"), ("context", "mood"), ("action", "color")}


def _accept_probability(context: dict[str, str], action: str, features: dict[str, str]) -> float:
    """The hidden truth: the time of day picks the category (decisive), the device and a discount the item."""
    p = 0.1
    if CATEGORY[action] == ("shoes" if context["time"] in ("morning", "afternoon") else "books"):
        p += 0.45
    if action in {"mobile": "ac", "desktop": "bd"}.get(context["device"], ""):
        p += 0.25
    if features["discount"] == "yes":
        p += 0.2
    return p  # weather, mood and color change nothing


def _simulated_log(home: Path, seed: int, n: int) -> LocalPersonalizer:
    """A log of ``n`` visitors whose weather, mood and item color are pure noise (50 % exploration)."""
    rng = random.Random(seed)
    engine = LocalPersonalizer(home, configuration={"explorationPercentage": 0.5})
    for i in range(n):
        context = {"time": rng.choice(TIMES), "device": rng.choice(DEVICES),
                   "weather": rng.choice(("sun", "rain", "snow")), "mood": rng.choice(("calm", "busy"))}
        items = {a: {"category": CATEGORY[a], "discount": rng.choice(("yes", "no")),
                     "color": rng.choice(("red", "green", "blue"))} for a in CATEGORY}
        answer = engine.rank({
            "contextFeatures": [{"time": context["time"], "device": context["device"]},
                                {"weather": context["weather"], "mood": context["mood"]}],
            "actions": [{"id": a, "features": [f]} for a, f in items.items()],
            "slots": [{"id": "top", "baselineAction": "a"}, {"id": "side", "baselineAction": "b"}],
            "eventId": f"truth-{seed}-{i}"})
        engine.reward(answer["eventId"], {"reward": [
            {"slotId": s["id"], "value": float(rng.random() < _accept_probability(
                context, s["rewardActionId"], items[s["rewardActionId"]]))} for s in answer["slots"]]})
    return engine


@pytest.mark.parametrize("seed", [1, 2])
def test_importances_put_noise_below_every_relevant_feature(tmp_path: Path, seed: int) -> None:
    engine = _simulated_log(tmp_path / "data", seed, 3000)
    try:
        result = feature_importances(engine.events(), engine.get_policy()["arguments"])
    finally:
        engine.close()
    score = {(s.namespace, s.feature_name): s.score for s in result.scores}
    assert set(score) >= RELEVANT | NOISE
    assert min(score[f] for f in RELEVANT) > max(score[f] for f in NOISE), result.scores
    top = result.scores[0]
    assert (top.namespace, top.feature_name) == ("context", "time")
    assert [s.score for s in result.scores] == sorted((s.score for s in result.scores), reverse=True)
    by_role = result.by_namespace()
    assert {s.feature_name for s in by_role["context"]} == {"time", "device", "weather", "mood"}


# ---------------------------------------------------------------- why this action

def _trained(home: Path, policy: str | None = None, exploration: float | None = None, n: int = 600
             ) -> LocalPersonalizer:
    config = None if exploration is None else {"explorationPercentage": exploration}
    engine = LocalPersonalizer(home, policy_arguments=policy, configuration=config)
    simulate(engine, load_scenario("seed"), n, seed=7, event_prefix="train-")
    return engine


def _request_features(request: dict[str, Any]) -> set[tuple[str, str, Any]]:
    """(namespace, key path, value) of every feature a request holds, ids included."""
    out: set[tuple[str, str, Any]] = set()

    def flatten(role: str, obj: dict[str, Any], prefix: str = "") -> None:
        for key, value in obj.items():
            if isinstance(value, dict):
                flatten(role, value, f"{prefix}{key}.")
            elif not isinstance(value, bool) and isinstance(value, (int, float)):
                out.add((role, prefix + key, float(value)))
            else:
                out.add((role, prefix + key, str(value).lower() if isinstance(value, bool) else value))

    for obj in request["contextFeatures"]:
        flatten("context", obj)
    for action in request["actions"]:
        out.add(("action", "_id", action["id"]))
        for obj in action["features"]:
            flatten("action", obj)
    for slot in request["slots"]:
        out.add(("slot", "_id", slot["id"]))
        for obj in slot.get("features", []):
            flatten("slot", obj)
    return out


def _vw_margin(engine: LocalPersonalizer, request: dict[str, Any], event_id: str, answer: dict[str, Any],
               slot: int, runner_up: str) -> float:
    """The model's own score difference (VW's predictions, read independently of the explanation)."""
    canonical = MultiSlotRankRequest.model_validate(request).model_dump(by_alias=True, exclude={"event_id"})
    head, bodies, allowed, index = encode_request(canonical, event_id)
    chosen = [index[s["rewardActionId"]] for s in answer["slots"]]
    scores = vw_explain.slot_scores(engine._vw, head, bodies, allowed, chosen)[slot].scores
    return scores[index[runner_up]] - scores[chosen[slot]]


@pytest.mark.parametrize("policy", [
    None,                                                                     # the project default (--cubic @@_)
    "--ccb_explore_adf --epsilon 0.2 --power_t 0 -l 0.001 --cb_type mtr -q ::",  # the retired service's
    "--ccb_explore_adf --epsilon 0.2 -q _@ --interactions @_~ --ignore_linear @",
])
def test_explanations_add_up_and_name_only_present_features(tmp_path: Path, policy: str | None) -> None:
    engine = _trained(tmp_path / "data", policy)
    explained = 0
    try:
        for n, (time_of_day, device) in enumerate([("morning", "mobile"), ("evening", "desktop"),
                                                   ("night", "tablet"), ("afternoon", "mobile")]):
            request = rank_request(f"why-{n}", time_of_day, device)
            request["contextFeatures"].append({"user": {"tier": "gold", "visits": 3}})  # nested, numeric
            answer = engine.rank(request, explain=True)
            present = _request_features(request)
            for k, slot in enumerate(answer["slots"]):
                why = slot["explanation"]
                if not why["available"]:
                    assert why["explored"] and "explored" in why["reason"]
                    continue
                explained += 1
                assert why["chosen"]["actionId"] == slot["rewardActionId"] and why["margin"] >= 0
                margin = _vw_margin(engine, request, answer["eventId"], answer, k, why["runnerUp"]["actionId"])
                assert why["margin"] == pytest.approx(margin, abs=1e-9)
                assert sum(f["contribution"] for f in why["features"]) == pytest.approx(margin, abs=1e-4)
                assert sum(r["contribution"] for r in why["reasons"]) + why["rest"] == pytest.approx(margin, abs=1e-4)
                assert 1 <= len(why["reasons"]) <= 3 and len(why["text"]) >= len(why["reasons"])
                for feature in why["features"]:
                    for value in (feature["value"], feature["runnerUpValue"]):
                        if value is not None:
                            assert (feature["namespace"], feature["featureName"], value) in present, feature
                for reason in why["reasons"]:
                    assert reason["text"].startswith(" x ".join(f"{f['featureName']}=" for f in reason["features"])
                                                     [:len(reason["features"][0]["featureName"]) + 1])
                    for f in reason["features"]:
                        assert (f["namespace"], f["featureName"], f["value"]) in present, f
        assert explained >= 4
    finally:
        engine.close()


def test_explored_slots_say_explored(tmp_path: Path) -> None:
    engine = _trained(tmp_path / "data", exploration=1.0, n=200)  # every slot explores uniformly
    try:
        seen_explored = False
        for n in range(20):
            answer = engine.rank(rank_request(f"explore-{n}", "evening", "desktop"), explain=True)
            for slot in answer["slots"]:
                why = slot["explanation"]
                if why["explored"]:
                    seen_explored = True
                    assert not why["available"] and "features" not in why and "reasons" not in why
                    assert why["favourite"]["actionId"] != slot["rewardActionId"]
                    assert why["reason"].startswith("explored")
        assert seen_explored
    finally:
        engine.close()


def test_explain_changes_no_choice_and_never_runs_on_a_plain_rank(tmp_path: Path) -> None:
    plain, asked = _trained(tmp_path / "plain", n=300), _trained(tmp_path / "asked", n=300)
    try:
        for n in range(30):
            request = rank_request(f"same-{n}", random.Random(n).choice(["morning", "night"]))
            a, b = plain.rank(request), asked.rank(request, explain=True)
            assert "explanation" not in a["slots"][0] and "explanation" in b["slots"][0]
            assert [s["rewardActionId"] for s in a["slots"]] == [s["rewardActionId"] for s in b["slots"]]
            assert [s["probability"] for s in a["slots"]] == [s["probability"] for s in b["slots"]]
        assert plain._explainer is None  # the explainer is only ever built by a rank that asks
        assert "explanation" not in asked.event("same-0").response["slots"][0]  # the log holds no explanation
        again = asked.rank(rank_request("same-0", random.Random(0).choice(["morning", "night"])), explain=True)
        assert "explanation" in again["slots"][0]  # a retried eventId: its logged answer, explained
        by_event = asked.explain_event("same-0")
        assert [s["rewardActionId"] for s in by_event["slots"]] == [s["rewardActionId"] for s in again["slots"]]
        with pytest.raises(PersonalizerError) as info:
            asked.explain_event("never-ranked")
        assert info.value.status == 404
    finally:
        plain.close()
        asked.close()


def test_explain_over_http(live_server: ThreadedServer) -> None:
    simulate(live_server.engine, load_scenario("seed"), 200, seed=5)
    with PersonalizerClient(live_server.base, KEY, retries=0) as client:
        plain = client.rank(rank_request("http-plain"))
        assert all("explanation" not in s for s in plain["slots"])
        answer = client.rank(rank_request("http-why", "evening"), explain=True)
        assert all("explanation" in s for s in answer["slots"])
        assert client.explain_event("http-why")["slots"][0]["rewardActionId"] == answer["slots"][0]["rewardActionId"]
        with pytest.raises(PersonalizerError) as info:
            client.explain_event("never-ranked")
        assert info.value.status == 404
    before = live_server.engine.stats()["pending"]
    import requests

    bad = requests.post(f"{live_server.base}/personalizer/v1.1-preview.1/multislot/rank?explain=maybe",
                        json=rank_request("http-bad"), headers={"Ocp-Apim-Subscription-Key": KEY}, timeout=10)
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "BadRequest"
    assert live_server.engine.stats()["pending"] == before and live_server.engine.event("http-bad") is None
