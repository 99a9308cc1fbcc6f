"""The evaluations API: Personalizer's offline-evaluation routes over the real server on loopback.

v1.x paths (POST creates, 201 + Location; v1.1-preview.1 shapes) and the 2022-09-01-preview
paths (PUT /evaluations/{id}, 200; list as {"value", "nextLink"}), background runs, Personalizer's
error codes and statuses, and applyFromEvaluation.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from server_fixtures import KEY, ThreadedServer
from timing import FakeClock, Ticking

from personalizer.engine import LocalPersonalizer
from personalizer.evaluation import Evaluations, _engine_events
from personalizer.server import API_VERSIONS
from personalizer.simulation import load_scenario, simulate

AUTH = {"Ocp-Apim-Subscription-Key": KEY}
JSON_AUTH = {**AUTH, "Content-Type": "application/json"}
Q = {"api-version": API_VERSIONS[0]}
START, END = "2027-01-15T08:00:00Z", "2027-01-16T00:00:00Z"  # covers the simulated events
EMPTY = {"startTime": "2001-01-01T00:00:00Z", "endTime": "2001-02-01T00:00:00Z"}
CANDIDATE = {"name": "less exploration", "arguments": "--ccb_explore_adf --cb_type mtr -q :: --epsilon 0.1"}
SUMMARY_FIELDS = ("ipsEstimatorNumerator", "ipsEstimatorDenominator", "snipsEstimatorDenominator",
                  "confidenceInterval", "averageReward", "nonZeroProbability", "sumOfSquares")
EVENTS = 300


def logged_engine(home: Path) -> LocalPersonalizer:
    """An engine whose log holds ``EVENTS`` rewarded seed-scenario visitors, one a minute from T0."""
    clock = FakeClock()
    engine = LocalPersonalizer(home, clock=clock)
    simulate(Ticking(engine, clock), load_scenario("seed"), EVENTS, seed=3)
    return engine


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadedServer]:
    """One server over a logged engine for the tests that do not change the engine's policy."""
    engine = logged_engine(tmp_path_factory.mktemp("evaluations") / "data")
    try:
        with ThreadedServer(engine) as srv:
            yield srv
    finally:
        engine.close()


def v1(srv: ThreadedServer, prefix: str = "v1.1-preview.1") -> str:
    return f"{srv.base}/personalizer/{prefix}"


def body(name: str = "look", policies: list[dict[str, str]] | None = None, **extra: Any) -> dict[str, Any]:
    return {"name": name, "startTime": START, "endTime": END, "policies": policies or [], **extra}


def post(url: str, payload: Any, **kw: Any) -> requests.Response:
    return requests.post(url, data=json.dumps(payload), headers=JSON_AUTH, timeout=30, **kw)


def put(url: str, payload: Any) -> requests.Response:
    return requests.put(url, data=json.dumps(payload), headers=JSON_AUTH, params=Q, timeout=30)


def get(url: str, **params: Any) -> requests.Response:
    return requests.get(url, headers=AUTH, params=params or None, timeout=30)


def delete(url: str, **params: Any) -> requests.Response:
    return requests.delete(url, headers=AUTH, params=params or None, timeout=30)


def assert_error(resp: requests.Response, status: int, code: str) -> str:
    """A Personalizer error body with this status and code; returns the message."""
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert error["code"] == code and resp.headers["x-ms-error-code"] == code, error
    assert error["message"]
    return str(error["message"])


def finished(url: str, params: dict[str, Any] | None = None, timeout: float = 30.0) -> dict[str, Any]:
    """GET an evaluation until it is no longer pending / Running."""
    deadline = time.monotonic() + timeout
    while True:
        resp = get(url, **(params or {}))
        assert resp.status_code == 200, resp.text
        answer = resp.json()
        if answer["status"] not in ("pending", "Running") or time.monotonic() > deadline:
            return answer
        time.sleep(0.05)


# ---------------------------------------------------------------- v1.x

def test_v1_create_get_list_delete(server: ThreadedServer) -> None:
    base = v1(server)
    resp = post(f"{base}/evaluations", body("first look", [CANDIDATE]))
    assert resp.status_code == 201, resp.text
    created = resp.json()
    evaluation_id = created["id"]
    assert created["status"] == "pending" and created["name"] == "first look"
    assert resp.headers["Location"] == f"{base}/evaluations/{evaluation_id}"

    done = finished(resp.headers["Location"])
    assert done["status"] == "completed", done
    assert done["startTime"] == "2027-01-15T08:00:00.000Z" and done["evaluationType"] == "Manual"
    results = {p["name"]: p for p in done["policyResults"]}
    assert list(results) == ["Online", "Baseline", "Random", "less exploration"]
    assert [p["policySource"] for p in results.values()] == ["Online", "Baseline", "Random", "Custom"]
    assert results["less exploration"]["arguments"] == CANDIDATE["arguments"]
    assert done["optimalPolicy"] in ("Online", "less exploration")
    for policy in results.values():
        total = policy["totalSummary"]
        assert all(isinstance(total[f], float) for f in SUMMARY_FIELDS), total
        assert total["ipsEstimatorDenominator"] == EVENTS
        assert total["averageReward"] == pytest.approx(total["ipsEstimatorNumerator"]
                                                       / total["snipsEstimatorDenominator"])
        assert 0 < total["confidenceInterval"] < 0.5 and 0 < total["nonZeroProbability"] <= 1
        assert policy["summary"] and all(set(SUMMARY_FIELDS) <= set(s) for s in policy["summary"])
        assert sum(s["ipsEstimatorDenominator"] for s in policy["summary"]) == EVENTS  # the buckets add up
    # The realized reward: every logged event counts with weight 1.
    online = results["Online"]["totalSummary"]
    assert online["nonZeroProbability"] == 1 and online["snipsEstimatorDenominator"] == EVENTS

    listed = get(f"{base}/evaluations")
    assert listed.status_code == 200 and isinstance(listed.json(), list)
    assert evaluation_id in [e["id"] for e in listed.json()]
    assert get(f"{base}/evaluations/{evaluation_id}").json() == done

    assert delete(f"{base}/evaluations/{evaluation_id}").status_code == 204
    assert_error(get(f"{base}/evaluations/{evaluation_id}"), 404, "EvaluationNotFound")
    assert_error(delete(f"{base}/evaluations/{evaluation_id}"), 404, "EvaluationNotFound")
    assert evaluation_id not in [e["id"] for e in get(f"{base}/evaluations").json()]


@pytest.mark.parametrize("prefix", ["v1.0", "v1.1-preview.3"])
def test_other_versioned_paths_serve_the_v1_shape(server: ThreadedServer, prefix: str) -> None:
    resp = post(f"{v1(server, prefix)}/evaluations", body(f"via {prefix}"))
    assert resp.status_code == 201 and resp.headers["Location"].startswith(v1(server, prefix))
    assert finished(resp.headers["Location"])["status"] == "completed"
    assert delete(resp.headers["Location"]).status_code == 204


@pytest.mark.parametrize(("change", "status", "code"), [
    ({"endTime": "2027-01-15T07:00:00Z"}, 400, "InvalidEvaluationContract"),  # end before start
    ({"startTime": "yesterday"}, 400, "InvalidEvaluationContract"),
    ({"startTime": None}, 400, "InvalidEvaluationContract"),
    ({"name": ""}, 400, "InvalidEvaluationContract"),
    ({"policies": [CANDIDATE, {**CANDIDATE, "name": CANDIDATE["name"].upper()}]}, 400, "DuplicateCustomPolicyNames"),
    ({"policies": [{**CANDIDATE, "name": "Random"}]}, 400, "DuplicateCustomPolicyNames"),
    ({"policies": [{**CANDIDATE, "name": f"p{i}"} for i in range(11)]}, 400, "InvalidEvaluationContract"),
    ({"policies": "all of them"}, 400, "InvalidEvaluationContract"),
    ({"policies": [{"name": "x"}]}, 400, "InvalidPolicyContract"),
    ({"policies": [{"name": "x", "arguments": "--cb_explore_adf"}]}, 400, "InvalidPolicyConfiguration"),
    ({"policies": [{"name": "x", "arguments": "--ccb_explore_adf -d /etc/passwd"}]}, 400, "InvalidPolicyConfiguration"),
    ({"enableOfflineExperimentation": "yes"}, 400, "InvalidEvaluationContract"),
    (EMPTY, 400, "NoLogsExistInDateRange"),
])
def test_bad_evaluations_are_refused_with_personalizers_codes(
        server: ThreadedServer, change: dict[str, Any], status: int, code: str) -> None:
    before = get(f"{v1(server)}/evaluations").json()
    assert_error(post(f"{v1(server)}/evaluations", {**body("bad"), **change}), status, code)
    assert_error(put(f"{server.base}/personalizer/evaluations/bad-2022", {**body("bad"), **change}), status, code)
    assert get(f"{v1(server)}/evaluations").json() == before  # nothing was created


def test_bodies_that_are_not_evaluation_contracts(server: ThreadedServer) -> None:
    url = f"{v1(server)}/evaluations"
    assert_error(post(url, ["not", "an", "object"]), 400, "InvalidEvaluationContract")
    assert_error(requests.post(url, data="{", headers=JSON_AUTH, timeout=10), 400, "BadRequest")
    assert_error(requests.post(url, data="{}", headers={**AUTH, "Content-Type": "text/plain"}, timeout=10),
                 415, "UnsupportedMediaType")
    assert_error(requests.post(url, json=body(), timeout=10), 401, "Unauthorized")
    assert_error(get(f"{v1(server)}/evaluations/never-created"), 404, "EvaluationNotFound")
    assert_error(requests.put(f"{url}/x", json=body(), headers=AUTH, timeout=10), 405, "OperationNotAllowed")


def test_create_answers_before_the_evaluation_finishes(tmp_path: Path) -> None:
    engine = logged_engine(tmp_path / "data")
    gate = threading.Event()
    reads = []

    def events(start: float, end: float) -> Iterator[Any]:
        reads.append(start)
        if len(reads) == 2:  # the run itself (the first read is create's "any events?" check)
            gate.wait(30)
        yield from _engine_events(engine, start, end)

    evaluations = Evaluations(engine, persist=False, events=events)
    try:
        with ThreadedServer(engine, evaluations=evaluations) as srv:
            resp = post(f"{v1(srv)}/evaluations", body("slow"))
            assert resp.status_code == 201 and resp.json()["status"] == "pending"
            location = resp.headers["Location"]
            assert get(location).json()["status"] == "pending"
            evaluation_id = resp.json()["id"]
            url = f"{srv.base}/personalizer/evaluations/{evaluation_id}"
            assert get(url, **Q).json()["status"] == "Running"
            assert get(f"{srv.base}/personalizer/evaluations", **Q).json()["value"][0]["status"] == "Running"
            gate.set()
            assert finished(location)["status"] == "completed"
            assert get(url, **Q).json()["status"] == "Succeeded"
    finally:
        gate.set()
        evaluations.close()
        engine.close()


# ---------------------------------------------------------------- 2022-09-01-preview

def test_2022_create_get_list_delete(server: ThreadedServer) -> None:
    base = f"{server.base}/personalizer/evaluations"
    resp = put(f"{base}/new-look", body("new look", [CANDIDATE], enablePolicyOptimization=False))
    assert resp.status_code == 200, resp.text
    assert resp.json()["id"] == "new-look" and resp.json()["status"] in ("Running", "Succeeded")
    assert_error(put(f"{base}/new-look", body("again")), 409, "EvaluationAlreadyExists")

    params = {**Q, "startTime": START, "endTime": END, "intervalInMinutes": 60}
    done = finished(f"{base}/new-look", params)
    assert done["status"] == "Succeeded" and done["optimalPolicy"] in ("Online", "less exploration")
    content = done["content"]
    assert content["intervalInMinutes"] == 60
    rows = {(r["name"], r["slotId"]): r for r in content["value"]}
    assert {name for name, _ in rows} == {"Online", "Baseline", "Random", "less exploration"}
    assert {slot for _, slot in rows} == {"", "BigHeroPosition", "SmallSidebar"}
    overall = rows[("Online", "")]
    low, high = overall["summary"]["confidenceInterval"]
    assert low <= overall["summary"]["expectedReward"] <= high
    points = overall["timeseries"]["data"]
    # Events at 08:01 .. 13:00 touch six hourly intervals; expanding: each point is cumulative.
    stamps = [p["timeStamp"] for p in points]
    assert len(stamps) == 6 and stamps == sorted(stamps) and stamps[0].startswith("2027-01-15T09:00")
    assert points[-1]["expectedReward"] == pytest.approx(overall["summary"]["expectedReward"])
    rolling = get(f"{base}/new-look", **{**params, "window": "Rolling"}).json()
    assert len([r for r in rolling["content"]["value"] if r["slotId"] == ""][0]["timeseries"]["data"]) == 6
    # startTime / endTime narrow the results; without them the whole evaluation is shown.
    part = get(f"{base}/new-look", **{**params, "endTime": "2027-01-15T10:00:00Z"}).json()
    assert len([r for r in part["content"]["value"] if r["slotId"] == ""][0]["timeseries"]["data"]) == 2
    assert get(f"{base}/new-look", **Q).json()["content"]["value"]

    listed = get(base, **Q).json()
    assert set(listed) == {"value"}
    details = {e["id"]: e for e in listed["value"]}["new-look"]
    assert set(details) >= {"id", "name", "startTime", "endTime", "creationTime", "status", "evaluationType"}
    assert "content" not in details

    assert delete(f"{base}/new-look", **Q).status_code == 204
    assert_error(get(f"{base}/new-look", **params), 404, "EvaluationNotFound")
    assert_error(delete(f"{base}/new-look", **Q), 404, "EvaluationNotFound")


def test_2022_list_pages_filters_top_and_skip(server: ThreadedServer) -> None:
    base = f"{server.base}/personalizer/evaluations"
    ids = [f"page-{i}" for i in range(3)]
    for evaluation_id in ids:
        assert put(f"{base}/{evaluation_id}", body(evaluation_id)).status_code == 200
    try:
        first = get(base, **Q, filter="name eq 'page-0' and evaluationType eq 'Manual'").json()
        assert [e["id"] for e in first["value"]] == ["page-0"]
        assert get(base, **Q, filter="metadata=evaluationType eq 'Auto'").json()["value"] == []
        page = get(base, **Q, filter="evaluationType eq 'Manual'", maxpagesize=2).json()
        seen = [e["id"] for e in page["value"]]
        while "nextLink" in page:
            page = requests.get(page["nextLink"], headers=AUTH, timeout=10).json()
            seen += [e["id"] for e in page["value"]]
        assert [i for i in seen if i in ids] == ids
        every = [e["id"] for e in get(base, **Q).json()["value"]]
        assert [e["id"] for e in get(base, **Q, skip=1, top=2).json()["value"]] == every[1:3]
        assert_error(get(base, **Q, filter="status gt 'Running'"), 400, "BadRequest")
        assert_error(get(base, **Q, top=-1), 400, "BadRequest")
        assert_error(get(base, **Q, skip="many"), 400, "BadRequest")
        assert_error(get(f"{base}/page-0", **Q, intervalInMinutes=7), 400, "BadRequest")
        assert_error(get(f"{base}/page-0", **Q, window="Sliding"), 400, "BadRequest")
        assert_error(get(f"{base}/page-0", **Q, startTime="soon"), 400, "InvalidEvaluationContract")
        assert_error(get(base), 400, "BadRequest")  # api-version is required on the unversioned paths
        assert_error(post(f"{base}?api-version={Q['api-version']}", body()), 405, "OperationNotAllowed")
    finally:
        for evaluation_id in ids:
            delete(f"{base}/{evaluation_id}", **Q)


# ---------------------------------------------------------------- applyFromEvaluation

def test_apply_from_evaluation_sets_the_policy(tmp_path: Path) -> None:
    engine = logged_engine(tmp_path / "data")
    try:
        with ThreadedServer(engine) as srv:
            base = v1(srv)
            resp = post(f"{base}/evaluations", body("pick one", [CANDIDATE]))
            evaluation_id = resp.json()["id"]
            apply_url = f"{base}/configurations/applyFromEvaluation"
            assert finished(resp.headers["Location"])["status"] == "completed"

            assert post(apply_url, {"evaluationId": evaluation_id, "policyName": CANDIDATE["name"]}).status_code == 204
            policy = get(f"{base}/configurations/policy").json()
            assert policy == {"name": CANDIDATE["name"], "arguments": CANDIDATE["arguments"]}
            assert get(f"{base}/configurations/service").json()["explorationPercentage"] == pytest.approx(0.1)
            assert get(f"{base}/evaluations/{evaluation_id}").json()["status"] == "optimalPolicyApplied"
            rank = post(f"{base}/multislot/rank", load_scenario("seed").rank_request(
                {"time": "morning", "device": "mobile"}))
            assert rank.status_code == 201  # the engine serves with the applied policy (and the replayed model)

            # The 2022 path: Online keeps the current settings.
            unversioned = f"{srv.base}/personalizer/configurations/applyFromEvaluation"
            ok = requests.post(unversioned, params=Q, headers=JSON_AUTH, timeout=30,
                               data=json.dumps({"evaluationId": evaluation_id, "policyName": "Online"}))
            assert ok.status_code == 204
            assert get(f"{base}/configurations/policy").json() == policy
            assert get(f"{srv.base}/personalizer/evaluations/{evaluation_id}", **Q).json()["status"] == \
                "OnlinePolicyRetained"

            assert_error(post(apply_url, {"evaluationId": "nope", "policyName": "Online"}), 404, "EvaluationNotFound")
            assert_error(post(apply_url, {"evaluationId": evaluation_id, "policyName": "nope"}),
                         404, "LearningSettingsNotFound")
            assert_error(post(apply_url, {"evaluationId": evaluation_id, "policyName": "Baseline"}),
                         400, "LearningSettingsNotFound")
            assert_error(post(apply_url, {"policyName": "Online"}), 400, "BadRequest")
            assert get(f"{base}/configurations/policy").json() == policy
            # v1.0 predates applyFromEvaluation.
            assert_error(post(f"{v1(srv, 'v1.0')}/configurations/applyFromEvaluation",
                              {"evaluationId": evaluation_id, "policyName": "Online"}), 404, "ResourceNotFound")
    finally:
        engine.close()


# ---------------------------------------------------------------- lifecycle and documentation

def test_evaluations_outlive_a_restart_and_close_with_the_app(tmp_path: Path) -> None:
    engine = logged_engine(tmp_path / "data")
    earlier = set(threading.enumerate())  # workers of managers other tests left open
    try:
        with ThreadedServer(engine) as srv:
            resp = post(f"{v1(srv)}/evaluations", body("kept"))
            done = finished(resp.headers["Location"])
            manager = srv._server.config.app.state.evaluations
            assert [t for t in set(threading.enumerate()) - earlier if t.name.startswith("personalizer-evaluations")]
        # Closed with the app: its worker thread is gone.
        assert manager is not None
        assert not [t for t in set(threading.enumerate()) - earlier if t.name.startswith("personalizer-evaluations")]
        assert [i for i, _ in engine.records("evaluation")] == [done["id"]]  # in the engine's database
        with ThreadedServer(engine) as again:
            assert get(f"{v1(again)}/evaluations/{done['id']}").json() == done
    finally:
        engine.close()


def test_openapi_documents_the_evaluation_routes(server: ThreadedServer) -> None:
    doc = requests.get(f"{server.base}/openapi.json", timeout=10).json()
    paths = doc["paths"]
    create = paths["/personalizer/v1.1-preview.1/evaluations"]["post"]
    assert create["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/EvaluationContract")
    assert "201" in create["responses"]
    assert set(paths["/personalizer/evaluations/{evaluationId}"]) == {"get", "put", "delete"}
    get_2022 = paths["/personalizer/evaluations/{evaluationId}"]["get"]
    assert {"evaluationId", "api-version", "startTime", "endTime", "intervalInMinutes", "window"} <= {
        p["name"] for p in get_2022["parameters"]}
    assert "/personalizer/v1.0/configurations/applyFromEvaluation" not in paths
    assert {"EvaluationContract", "PolicyReferenceContract"} <= set(doc["components"]["schemas"])
