"""The REST server: routes under every base path, auth, Personalizer-shaped errors, limits, OpenAPI."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import pytest
import requests
from server_fixtures import KEY, ThreadedServer, rank_request

from personalizer.engine import LocalPersonalizer
from personalizer.server import API_VERSIONS, VERSIONED_PREFIXES

AUTH = {"Ocp-Apim-Subscription-Key": KEY}
JSON_AUTH = {**AUTH, "Content-Type": "application/json"}
Q = {"api-version": API_VERSIONS[0]}
MULTISLOT_PREFIXES = [p for p in VERSIONED_PREFIXES if p != "v1.0"]


def assert_error(resp: requests.Response, status: int, code: str | None = None) -> dict[str, Any]:
    """The answer is a Personalizer error body with this status (and code)."""
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert resp.headers["x-ms-error-code"] == body["error"]["code"]
    if code is not None:
        assert body["error"]["code"] == code, body
    return body["error"]


def post_json(url: str, body: Any, headers: dict[str, str] | None = None, **kw: Any) -> requests.Response:
    return requests.post(url, data=json.dumps(body), headers=headers or JSON_AUTH, timeout=10, **kw)


def counts(engine: LocalPersonalizer) -> tuple[int, ...]:
    s = engine.stats()
    return (s["learned"], s["logged"], s["discarded"], s["pending"], s["rewards"])


# ---------------------------------------------------------------- paths

@pytest.mark.parametrize("prefix", MULTISLOT_PREFIXES)
def test_multislot_loop_on_every_versioned_path(live_server: ThreadedServer, prefix: str) -> None:
    base = f"{live_server.base}/personalizer/{prefix}"
    rank = post_json(f"{base}/multislot/rank", rank_request(defer=True))
    assert rank.status_code == 201
    answer = rank.json()
    assert [s["id"] for s in answer["slots"]] == ["BigHeroPosition", "SmallSidebar"]
    event = answer["eventId"]
    assert requests.post(f"{base}/multislot/events/{event}/activate", headers=AUTH, timeout=10).status_code == 204
    reward = post_json(f"{base}/multislot/events/{event}/reward", {"reward": [{"slotId": "SmallSidebar", "value": 1}]})
    assert reward.status_code == 204 and reward.content == b""
    assert reward.headers["x-personalizer-status"] == "pending"


def test_unversioned_paths_need_a_known_api_version(live_server: ThreadedServer) -> None:
    url = f"{live_server.base}/personalizer/multislot/rank"
    assert post_json(url, rank_request(), params=Q).status_code == 201
    assert "api-version" in assert_error(post_json(url, rank_request()), 400, "BadRequest")["message"]
    assert_error(post_json(url, rank_request(), params={"api-version": "1999-01-01"}), 400, "BadRequest")
    assert requests.get(f"{live_server.base}/personalizer/configurations/service", params=Q, headers=AUTH,
                        timeout=10).status_code == 200


def test_v1_0_serves_single_slot_but_not_multislot(live_server: ThreadedServer) -> None:
    base = f"{live_server.base}/personalizer/v1.0"
    assert_error(post_json(f"{base}/multislot/rank", rank_request()), 404, "ResourceNotFound")
    actions = rank_request()["actions"]
    resp = post_json(f"{base}/rank", {"contextFeatures": [{"time": "night"}], "actions": actions,
                                      "excludedActions": ["Tennis-Racket-133"]})
    assert resp.status_code == 201
    answer = resp.json()
    ranking = {r["id"]: r["probability"] for r in answer["ranking"]}
    assert list(ranking) == [a["id"] for a in actions]
    assert ranking["Tennis-Racket-133"] == 0
    assert sum(ranking.values()) == pytest.approx(1.0, abs=1e-5)
    assert answer["rewardActionId"] in ranking and answer["rewardActionId"] != "Tennis-Racket-133"
    event = answer["eventId"]
    assert post_json(f"{base}/events/{event}/reward", {"value": 1}).headers["x-personalizer-status"] == "learned"
    assert requests.post(f"{base}/events/{event}/activate", headers=AUTH, timeout=10).status_code == 204
    assert_error(post_json(f"{base}/events/nope/reward", {"value": 1}), 404, "ResourceNotFound")


def test_event_ids_with_slashes_and_spaces_reach_the_engine(live_server: ThreadedServer) -> None:
    base = f"{live_server.base}/personalizer/v1.1-preview.3"
    event = "shop/home page 1"
    assert post_json(f"{base}/multislot/rank", rank_request(event)).json()["eventId"] == event
    quoted = requests.utils.quote(event, safe="")
    resp = post_json(f"{base}/multislot/events/{quoted}/reward",
                     {"reward": [{"slotId": "BigHeroPosition", "value": 1}]})
    assert resp.status_code == 204


def test_configuration_policy_model_and_logs(live_server: ThreadedServer) -> None:
    base = f"{live_server.base}/personalizer/v1.1-preview.3"
    config = requests.get(f"{base}/configurations/service", headers=AUTH, timeout=10).json()
    assert config["rewardWaitTime"] == "PT10M" and config["rewardAggregation"] == "earliest"
    changed = requests.put(f"{base}/configurations/service", json={**config, "explorationPercentage": 0.3},
                           headers=AUTH, timeout=10)
    assert changed.status_code == 200 and changed.json()["explorationPercentage"] == 0.3
    assert_error(requests.put(f"{base}/configurations/service", json={"rewardWaitTime": "PT1S"}, headers=AUTH,
                              timeout=10), 400, "InvalidServiceConfiguration")

    policy = requests.put(f"{base}/configurations/policy", json={"name": "mine", "arguments": "--ccb_explore_adf"},
                          headers=AUTH, timeout=10)
    assert policy.status_code == 200 and policy.json()["name"] == "mine"
    assert requests.get(f"{base}/configurations/policy", headers=AUTH, timeout=10).json()["name"] == "mine"
    default = requests.delete(f"{base}/configurations/policy", headers=AUTH, timeout=10)
    assert default.status_code == 200 and default.json()["name"] != "mine"
    assert "--ccb_explore_adf" in default.json()["arguments"]
    assert_error(requests.put(f"{base}/configurations/policy", json={"name": "x", "arguments": "-d /etc/passwd"},
                              headers=AUTH, timeout=10), 400, "InvalidPolicyConfiguration")

    model = requests.get(f"{base}/model", headers=AUTH, timeout=10)
    assert model.status_code == 200 and model.headers["content-type"] == "application/octet-stream"
    assert 'filename="model.vw"' in model.headers["content-disposition"] and model.content
    put = requests.put(f"{base}/model", data=model.content,
                       headers={**AUTH, "Content-Type": "application/octet-stream"}, timeout=10)
    assert put.status_code == 204
    assert_error(requests.put(f"{base}/model", data=b"not a model",
                              headers={**AUTH, "Content-Type": "application/octet-stream"}, timeout=10),
                 400, "InvalidModelImportFormat")
    assert requests.delete(f"{base}/model", headers=AUTH, timeout=10).status_code == 204
    props = requests.get(f"{base}/model/properties", headers=AUTH, timeout=10).json()
    assert set(props) == {"creationTime", "lastModifiedTime"}

    post_json(f"{base}/multislot/rank", rank_request())
    logs = requests.get(f"{base}/logs/properties", headers=AUTH, timeout=10).json()
    assert logs["dateRange"]["from"] <= logs["dateRange"]["to"]
    deleted = requests.delete(f"{base}/logs", headers=AUTH, timeout=10)
    assert deleted.status_code == 204 and deleted.headers["x-personalizer-deleted"] == "0"  # the event is pending


def test_health_is_open_and_openapi_is_generated(live_server: ThreadedServer) -> None:
    for path in ("/health", "/personalizer/health"):
        resp = requests.get(live_server.base + path, timeout=10)
        assert resp.status_code == 200 and resp.json()["status"] == "ok"
    doc = requests.get(f"{live_server.base}/openapi.json", timeout=10).json()
    schemas = doc["components"]["schemas"]
    for model in ("MultiSlotRankRequest", "MultiSlotRankResponse", "MultiSlotRewardRequest", "RankRequest",
                  "RankResponse", "ServiceConfiguration", "PolicyContract", "ErrorResponse"):
        assert model in schemas
    rank = doc["paths"]["/personalizer/multislot/rank"]["post"]
    assert rank["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/MultiSlotRankRequest")
    assert "201" in rank["responses"]
    assert any(p["name"] == "api-version" for p in rank["parameters"])
    assert "/personalizer/v1.1-preview.1/multislot/events/{eventId}/reward" in doc["paths"]
    assert doc["components"]["securitySchemes"]["apim_key"]["name"] == "Ocp-Apim-Subscription-Key"


# ---------------------------------------------------------------- errors

def test_missing_or_wrong_key_is_401(live_server: ThreadedServer) -> None:
    url = f"{live_server.base}/personalizer/v1.1-preview.1/multislot/rank"
    before = counts(live_server.engine)
    assert_error(post_json(url, rank_request(), headers={"Content-Type": "application/json"}), 401, "Unauthorized")
    wrong = {"Content-Type": "application/json", "Ocp-Apim-Subscription-Key": KEY + "x"}
    error = assert_error(post_json(url, rank_request(), headers=wrong), 401, "Unauthorized")
    assert KEY not in error["message"]
    # The seed quickstart's header name is not the key header.
    seed_bug = {"Content-Type": "application/json", "apim-subscription-id": KEY}
    assert_error(post_json(url, rank_request(), headers=seed_bug), 401)
    assert_error(requests.get(f"{live_server.base}/nowhere", timeout=10), 401)  # key before routing
    assert counts(live_server.engine) == before


def test_without_a_key_configured_no_header_is_needed(open_server: ThreadedServer) -> None:
    resp = post_json(f"{open_server.base}/personalizer/v1.1-preview.1/multislot/rank", rank_request(),
                     headers={"Content-Type": "application/json"})
    assert resp.status_code == 201


def test_unknown_event_and_route_are_404(live_server: ThreadedServer) -> None:
    base = f"{live_server.base}/personalizer/v1.1-preview.1"
    assert_error(post_json(f"{base}/multislot/events/nope/reward", {"reward": [{"slotId": "s", "value": 1}]}),
                 404, "ResourceNotFound")
    assert_error(requests.post(f"{base}/multislot/events/nope/activate", headers=AUTH, timeout=10),
                 404, "InvalidEventIdToActivate")
    assert_error(requests.get(f"{base}/no/such/route", headers=AUTH, timeout=10), 404, "ResourceNotFound")
    assert_error(requests.get(f"{live_server.base}/personalizer/v9.9/model", headers=AUTH, timeout=10), 404)
    err = assert_error(requests.get(f"{base}/logs/interactions", headers=AUTH, timeout=10), 501, "OperationNotAllowed")
    assert "not supported" in err["message"]


def test_wrong_method_is_405(live_server: ThreadedServer) -> None:
    resp = requests.get(f"{live_server.base}/personalizer/v1.1-preview.1/multislot/rank", headers=AUTH, timeout=10)
    assert_error(resp, 405, "OperationNotAllowed")
    assert resp.headers["allow"] == "POST"


def test_body_over_the_limit_is_413_by_length_and_by_stream(server_engine: LocalPersonalizer) -> None:
    engine = server_engine
    with ThreadedServer(engine, max_body_bytes=2048) as server:
        url = f"{server.base}/personalizer/v1.1-preview.1/multislot/rank"
        big = rank_request()
        big["contextFeatures"].append({"pad": "x" * 4096})
        before = counts(engine)
        assert_error(post_json(url, big), 413, "PayloadSizeExceeded")

        def chunks():  # no Content-Length: the server must count what it reads
            data = json.dumps(big).encode()
            for i in range(0, len(data), 512):
                yield data[i:i + 512]

        assert_error(requests.post(url, data=chunks(), headers=JSON_AUTH, timeout=10), 413, "PayloadSizeExceeded")
        assert counts(engine) == before
        assert post_json(url, rank_request()).status_code == 201  # the server is fine afterwards


def test_a_body_of_megabytes_is_answered_413_not_a_broken_connection(live_server: ThreadedServer) -> None:
    big = rank_request()
    big["contextFeatures"].append({"pad": "x" * (3 * 1024 * 1024)})
    url = f"{live_server.base}/personalizer/v1.1-preview.1/multislot/rank"
    assert_error(post_json(url, big), 413, "PayloadSizeExceeded")


@pytest.mark.parametrize("key", ["", " padded ", "k\u00e9y", "line\nbreak"])
def test_keys_that_cannot_be_header_values_are_refused(server_engine: LocalPersonalizer, key: str) -> None:
    from personalizer.server import create_app

    with pytest.raises(ValueError):
        create_app(server_engine, key=key)


def test_wrong_content_type_is_415(live_server: ThreadedServer) -> None:
    url = f"{live_server.base}/personalizer/v1.1-preview.1/multislot/rank"
    body = json.dumps(rank_request())
    for ctype in ("text/plain", "application/x-www-form-urlencoded", "application/xml"):
        assert_error(requests.post(url, data=body, headers={**AUTH, "Content-Type": ctype}, timeout=10),
                     415, "UnsupportedMediaType")
    assert_error(requests.post(url, data=body.encode(), headers=AUTH, timeout=10), 415)  # no content type
    ok = requests.post(url, data=body, headers={**AUTH, "Content-Type": "application/json; charset=utf-8"}, timeout=10)
    assert ok.status_code == 201
    model_url = f"{live_server.base}/personalizer/v1.1-preview.3/model"
    assert_error(requests.put(model_url, data=b"x", headers={**AUTH, "Content-Type": "text/plain"}, timeout=10), 415)


@pytest.mark.parametrize("raw", [b"{bad", b"", b"   ", b"\xff\xfe\x00garbage", b"[" * 50_000, b'{"actions": [}',
                                 b"null", b"42", b'"text"', b"[]"])
def test_malformed_json_is_400_never_500(live_server: ThreadedServer, raw: bytes) -> None:
    base = f"{live_server.base}/personalizer/v1.1-preview.1"
    before = counts(live_server.engine)
    event = post_json(f"{base}/multislot/rank", rank_request()).json()["eventId"]
    after_rank = counts(live_server.engine)
    for url in (f"{base}/multislot/rank", f"{base}/multislot/events/{event}/reward"):
        assert_error(requests.post(url, data=raw, headers=JSON_AUTH, timeout=10), 400)
    assert counts(live_server.engine) == after_rank != before


def test_invalid_requests_are_400_with_the_engine_code_and_change_nothing(live_server: ThreadedServer) -> None:
    base = f"{live_server.base}/personalizer/v1.1-preview.1"
    event = post_json(f"{base}/multislot/rank", rank_request("e-1")).json()["eventId"]
    before = counts(live_server.engine)
    bad_rank = rank_request()
    bad_rank["slots"][0]["baselineAction"] = "nope"
    assert_error(post_json(f"{base}/multislot/rank", bad_rank), 400, "InvalidRankRequest")
    assert_error(post_json(f"{base}/multislot/rank", rank_request("e-1", device="tablet")), 409, "InvalidRankRequest")
    assert_error(post_json(f"{base}/multislot/events/{event}/reward", {"reward": [{"slotId": "nope", "value": 1}]}),
                 400, "InvalidRewardRequest")
    assert_error(post_json(f"{base}/multislot/events/{event}/reward",
                           {"reward": [{"slotId": "SmallSidebar", "value": 2}]}), 400, "InvalidRewardRequest")
    assert_error(post_json(f"{base}/multislot/events/{event}/reward", {"reward": []}), 400, "InvalidRewardRequest")
    assert counts(live_server.engine) == before


class _Exploding(LocalPersonalizer):
    """A real engine whose rank fails with an internal detail the client must not see (a bug)."""

    def rank(self, request: dict[str, Any], *, explain: bool = False) -> dict[str, Any]:
        raise RuntimeError("internal detail /srv/secret/path")


def test_unexpected_errors_are_a_personalizer_500_without_internals(caplog: pytest.LogCaptureFixture,
                                                                    tmp_path: Path) -> None:
    caplog.set_level(logging.DEBUG)
    engine = _Exploding(tmp_path / "data")
    try:
        with ThreadedServer(engine) as server:
            resp = post_json(f"{server.base}/personalizer/v1.1-preview.1/multislot/rank", rank_request())
            error = assert_error(resp, 500, "InternalServerError")
            assert "secret" not in error["message"] and "RuntimeError" not in resp.text
            # The server keeps serving.
            assert requests.get(f"{server.base}/health", timeout=10).status_code == 200
    finally:
        engine.close()
    assert "internal detail" in caplog.text  # logged for the operator ...
    assert KEY not in caplog.text  # ... without the key


def test_the_key_is_never_logged(server_engine: LocalPersonalizer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with ThreadedServer(server_engine) as server:
        url = f"{server.base}/personalizer/v1.1-preview.1/multislot/rank"
        post_json(url, rank_request())
        post_json(url, {"bad": True})
        post_json(url, rank_request(), headers={"Content-Type": "application/json",
                                                "Ocp-Apim-Subscription-Key": KEY + "-wrong"})
    assert KEY not in caplog.text


def test_background_task_closes_events_after_the_reward_wait_time(tmp_path: Any) -> None:
    now = [time.time()]
    engine = LocalPersonalizer(tmp_path / "d", clock=lambda: now[0])
    try:
        with ThreadedServer(engine, process_interval=0.05) as server:
            post_json(f"{server.base}/personalizer/v1.1-preview.1/multislot/rank", rank_request())
            assert engine.stats()["pending"] == 1
            now[0] += 601  # past the default PT10M wait
            deadline = time.monotonic() + 5
            while engine.stats()["pending"] and time.monotonic() < deadline:
                time.sleep(0.02)
            stats = engine.stats()
            assert stats["pending"] == 0 and stats["learned"] == 1  # learned with the default reward
    finally:
        engine.close()
