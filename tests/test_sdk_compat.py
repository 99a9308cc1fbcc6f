"""The official SDK, azure-ai-personalizer 1.0.0b1, runs unchanged against the server on loopback.

The SDK needs no patch: it accepts an ``http://`` endpoint with ``AzureKeyCredential``
(only bearer-token credentials insist on https), appends ``/personalizer`` itself and
sends ``?api-version=2022-09-01-preview``, which the server's unversioned paths serve.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import pytest
from server_fixtures import KEY, ThreadedServer, live_server_fixture, rank_request, server_engine_fixture  # noqa: F401

sdk = pytest.importorskip("azure.ai.personalizer")
from azure.core.credentials import AzureKeyCredential  # noqa: E402
from azure.core.exceptions import ClientAuthenticationError, HttpResponseError, ResourceNotFoundError  # noqa: E402


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
