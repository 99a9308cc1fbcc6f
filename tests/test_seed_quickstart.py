"""The seed quickstart's own request and reward code, run against the server.

The functions below are the quickstart's ``send_rank`` / ``send_reward`` and its
loop body, with its two bugs fixed as a user porting it would: the base URL ends
with a slash (the code joins ``'{0}personalizer/...'``) and the key travels in
``Ocp-Apim-Subscription-Key`` (not ``apim-subscription-id``).
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import requests
from server_fixtures import KEY, ThreadedServer, seed_actions, seed_slots


def quickstart(base_url: str, header_name: str = "Ocp-Apim-Subscription-Key") -> dict[str, Any]:
    """The quickstart's globals and HTTP helpers, bound to ``base_url``."""
    rank_url = "{0}personalizer/v1.1-preview.1/multislot/rank".format(base_url)  # noqa: UP030, UP032 (the seed's code)
    reward_url_base = "{0}personalizer/v1.1-preview.1/multislot/events/".format(base_url)  # noqa: UP030, UP032
    headers = {header_name: KEY, "Content-Type": "application/json"}

    def send_rank(rank_request: dict[str, Any]) -> Any:
        response = requests.post(rank_url, data=json.dumps(rank_request), headers=headers)
        return json.loads(response.text)

    def send_reward(reward_request: dict[str, Any], event_id: str) -> requests.Response:
        reward_url = "{0}{1}/reward".format(reward_url_base, event_id)  # noqa: UP030, UP032
        return requests.post(reward_url, data=json.dumps(reward_request), headers=headers)

    return {"send_rank": send_rank, "send_reward": send_reward}


def run_loop_once(qs: dict[str, Any], context: list[dict[str, str]], answers: dict[str, int]) -> tuple[Any, Any]:
    """One pass of the quickstart's learning loop; ``answers`` replaces the y/n prompt per slot."""
    event_id = str(uuid.uuid4())
    rank_request = {"eventId": event_id, "contextFeatures": context, "actions": seed_actions(),
                    "slots": seed_slots(), "deferActivation": False}
    rank_response = qs["send_rank"](rank_request)
    rewards: dict[str, list[dict[str, Any]]] = {"reward": []}
    for i in range(len(rank_response["slots"])):
        slot_reward: dict[str, Any] = {"slotId": rank_response["slots"][i]["id"]}
        slot_reward["value"] = answers.get(rank_response["slots"][i]["rewardActionId"], 0)
        rewards["reward"].append(slot_reward)
    return rank_response, qs["send_reward"](rewards, rank_response["eventId"])


def test_the_quickstart_loop_runs_against_the_server(live_server: ThreadedServer) -> None:
    qs = quickstart(live_server.base + "/")
    for time_of_day in ("morning", "afternoon", "evening", "night"):
        rank_response, reward = run_loop_once(qs, [{"time": time_of_day}, {"device": "mobile"}],
                                              {"Red-Polo-Shirt-432": 1})
        assert rank_response["eventId"] and len(rank_response["slots"]) == 2
        assert all(s["rewardActionId"] for s in rank_response["slots"])
        assert reward.status_code == 204
    stats = live_server.engine.stats()
    assert stats["learned"] == 4 and stats["rewards"] == 8


def test_the_quickstart_as_published_fails_loudly_not_silently(live_server: ThreadedServer) -> None:
    # Its header name is not Personalizer's: the server says so in Personalizer's error shape.
    qs = quickstart(live_server.base + "/", header_name="apim-subscription-id")
    answer = qs["send_rank"]({"eventId": "x", "contextFeatures": [], "actions": seed_actions(),
                              "slots": seed_slots(), "deferActivation": False})
    assert answer["error"]["code"] == "Unauthorized"
    assert live_server.engine.stats()["pending"] == 0
