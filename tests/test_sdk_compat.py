"""The official SDK, azure-ai-personalizer 1.0.0b1, runs unchanged against the server on loopback.

The SDK needs no patch: it accepts an ``http://`` endpoint with ``AzureKeyCredential``
(only bearer-token credentials insist on https), appends ``/personalizer`` itself and
sends ``?api-version=2022-09-01-preview``, which the server's unversioned paths serve.
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from server_fixtures import KEY, ThreadedServer, rank_request

sdk = pytest.importorskip("azure.ai.personalizer")
from azure.core.credentials import AzureKeyCredential  # noqa: E402
from azure.core.exceptions import (  # noqa: E402
    ClientAuthenticationError,
    HttpResponseError,
    ResourceExistsError,
    ResourceNotFoundError,
)

from personalizer.simulation import load_scenario, simulate  # noqa: E402


@pytest.fixture
def clients(live_server: ThreadedServer) -> Iterator[tuple[Any, Any]]:
    credential = AzureKeyCredential(KEY)
    # Default SDK settings, except no retries so a failure shows at once instead of after back-offs.
    loop = sdk.PersonalizerClient(live_server.base, credential, retry_total=0)
    admin = sdk.PersonalizerAdministrationClient(live_server.base + "/", credential, retry_total=0)
    yield loop, admin
    loop.close()
    admin.close()


def test_multi_slot_rank_reward_activate(clients: tuple[Any, Any], live_server: ThreadedServer) -> None:
    loop, _ = clients
    answer = loop.rank_multi_slot(rank_request(defer=True))
    event = answer["eventId"]
    assert [s["id"] for s in answer["slots"]] == ["BigHeroPosition", "SmallSidebar"]
    assert loop.activate_multi_slot(event) is None
    assert loop.reward_multi_slot(event, {"reward": [{"slotId": "BigHeroPosition", "value": 1.0},
                                                     {"slotId": "SmallSidebar", "value": 0.0}]}) is None
    assert live_server.engine.stats()["learned"] == 1
    # The generated operation the public method wraps is reachable too.
    second = loop.rank_multi_slot(rank_request("sdk-event-2"))
    assert second["eventId"] == "sdk-event-2"
    assert loop._client.reward_multi_slot_event("sdk-event-2", {"reward": [{"slotId": "SmallSidebar",
                                                                              "value": 1}]}) is None
    assert loop._client.activate_multi_slot_event("sdk-event-2") is None


def test_single_slot_rank_reward_activate(clients: tuple[Any, Any], live_server: ThreadedServer) -> None:
    loop, _ = clients
    request = {"contextFeatures": [{"time": "evening"}], "actions": rank_request()["actions"],
               "excludedActions": ["Tennis-Racket-133"], "deferActivation": True}
    answer = loop.rank(request)
    ranking = {r["id"]: r["probability"] for r in answer["ranking"]}
    assert ranking["Tennis-Racket-133"] == 0 and answer["rewardActionId"] in ranking
    assert loop.activate(answer["eventId"]) is None
    assert loop.reward(answer["eventId"], {"value": 1.0}) is None
    assert live_server.engine.stats()["learned"] == 1


def test_administration(clients: tuple[Any, Any]) -> None:
    _, admin = clients
    config = admin.get_service_configuration()
    assert config["rewardWaitTime"] == "PT10M"
    config["explorationPercentage"] = 0.15
    assert admin.update_service_configuration(config)["explorationPercentage"] == 0.15

    default = admin.get_policy()
    mine = admin.update_policy({"name": "sdk policy", "arguments": "--ccb_explore_adf --epsilon 0.15 -q ::"})
    assert mine["name"] == "sdk policy"
    assert admin.reset_policy() == default

    model = b"".join(admin.export_model())
    assert model
    assert admin.import_model(io.BytesIO(model)) is None
    assert admin.reset_model() is None
    props = admin.get_model_properties()
    assert props["creationTime"] and props["lastModifiedTime"]
    assert "dateRange" in admin.get_log_properties()
    assert admin.delete_logs() is None


def test_errors_reach_the_sdk_as_its_own_exceptions(clients: tuple[Any, Any], live_server: ThreadedServer) -> None:
    loop, admin = clients
    with pytest.raises(ResourceNotFoundError) as info:
        loop.reward_multi_slot("never-ranked", {"reward": [{"slotId": "s", "value": 1}]})
    assert info.value.error.code == "ResourceNotFound"
    bad = rank_request()
    bad["slots"][0]["baselineAction"] = "nope"
    with pytest.raises(HttpResponseError) as info:
        loop.rank_multi_slot(bad)
    assert info.value.status_code == 400 and info.value.error.code == "InvalidRankRequest"
    with pytest.raises(HttpResponseError) as info:
        admin.import_model(io.BytesIO(b"not a model"))
    assert info.value.error.code == "InvalidModelImportFormat"
    wrong = sdk.PersonalizerClient(live_server.base, AzureKeyCredential("wrong"), retry_total=0)
    with pytest.raises(ClientAuthenticationError):
        wrong.rank_multi_slot(rank_request())


def test_offline_evaluations(clients: tuple[Any, Any], live_server: ThreadedServer) -> None:
    _, admin = clients
    simulate(live_server.engine, load_scenario("seed"), 200, seed=4)  # logged, rewarded events
    now = datetime.now(UTC)
    start, end = now - timedelta(hours=1), now + timedelta(minutes=5)
    candidate = {"name": "less exploration", "arguments": "--ccb_explore_adf --cb_type mtr -q :: --epsilon 0.1"}
    contract = {"name": "sdk evaluation", "startTime": start.isoformat(), "endTime": end.isoformat(),
                "policies": [candidate]}
    assert admin.create_evaluation("sdk-eval", contract) is None
    with pytest.raises(ResourceExistsError):
        admin.create_evaluation("sdk-eval", contract)
    listed = list(admin.list_evaluations())
    assert [e["id"] for e in listed] == ["sdk-eval"] and listed[0]["name"] == "sdk evaluation"

    deadline = time.monotonic() + 30
    while True:
        evaluation = admin.get_evaluation("sdk-eval", start_time=start, end_time=end, interval_in_minutes=5)
        if evaluation["status"] != "Running" or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert evaluation["status"] == "Succeeded", evaluation
    overall = {r["name"]: r["summary"] for r in evaluation["content"]["value"] if r["slotId"] == ""}
    assert set(overall) == {"Online", "Baseline", "Random", "less exploration"}
    low, high = overall["Online"]["confidenceInterval"]
    assert low <= overall["Online"]["expectedReward"] <= high

    assert admin.apply_from_evaluation({"evaluationId": "sdk-eval", "policyName": "less exploration"}) is None
    assert admin.get_policy() == candidate
    assert admin.delete_evaluation("sdk-eval") is None
    with pytest.raises(ResourceNotFoundError) as info:
        admin.get_evaluation("sdk-eval", start_time=start, end_time=end)
    assert info.value.error.code == "EvaluationNotFound"
    assert list(admin.list_evaluations()) == []
    with pytest.raises(HttpResponseError) as info:
        admin.create_evaluation("backwards", {**contract, "startTime": end.isoformat(), "endTime": start.isoformat()})
    assert info.value.status_code == 400 and info.value.error.code == "InvalidEvaluationContract"
