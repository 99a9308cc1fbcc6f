"""One contract suite, run against the embedded engine and against PersonalizerClient -> server.

Every test takes ``backend`` and must pass on both, so the two cannot drift apart:
the same answers, the same receipts, the same error codes and statuses.
"""

from __future__ import annotations

import copy
import inspect
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from server_fixtures import KEY, ThreadedServer, rank_request

from personalizer.client import PersonalizerClient
from personalizer.contract import PersonalizerError
from personalizer.engine import LocalPersonalizer
from personalizer.interface import LocalEngine, Personalizer
from personalizer.scaled import ReplicaEngine, run_trainer


@pytest.fixture(params=["embedded", "remote", "embedded-pg", "remote-pg", "replicas-pg"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Personalizer]:
    """The embedded engine, or a client talking to a server around an identical engine; on a SQLite
    data directory, or (``-pg``) on a fresh PostgreSQL database; or (``replicas-pg``) a scaled-out
    deployment: two replica servers and a trainer on one database, each call sent to the other replica."""
    if request.param == "replicas-pg":
        yield from _replicas(request.getfixturevalue("pg_url"))
        return
    store = request.getfixturevalue("pg_url") if request.param.endswith("-pg") else tmp_path / "data"
    engine = LocalPersonalizer(store)
    try:
        if request.param.startswith("embedded"):
            yield engine
        else:
            with ThreadedServer(engine) as server, PersonalizerClient(server.base, KEY, retries=0) as client:
                yield client
    finally:
        engine.close()


class _Alternating:
    """Sends each call to the next of several clients (as a load balancer would)."""

    def __init__(self, clients: list[PersonalizerClient]) -> None:
        self.clients, self._turn = clients, 0

    def __getattr__(self, name: str) -> Any:
        self._turn += 1
        return getattr(self.clients[self._turn % len(self.clients)], name)


def _replicas(url: str) -> Iterator[Any]:
    """Two replica servers (real HTTP on loopback) and a leading trainer on one PostgreSQL database."""
    LocalPersonalizer(url).close()  # the settings and the first published model, as a deployment's setup
    stop = threading.Event()
    trainer = threading.Thread(target=run_trainer, args=(url,), kwargs={"stop": stop}, daemon=True)
    trainer.start()
    engines = [ReplicaEngine(url), ReplicaEngine(url)]
    try:
        with ThreadedServer(engines[0]) as one, ThreadedServer(engines[1]) as two, \
                PersonalizerClient(one.base, KEY, retries=0) as a, PersonalizerClient(two.base, KEY, retries=0) as b:
            yield _Alternating([a, b])
    finally:
        stop.set()
        trainer.join(timeout=30)
        for engine in engines:
            engine.close()


def error_of(call: Any, *args: Any) -> tuple[str, int]:
    with pytest.raises(PersonalizerError) as info:
        call(*args)
    assert info.value.message
    return info.value.code, info.value.status


# ---------------------------------------------------------------- the Personalizer type

def test_both_backends_are_a_personalizer(backend: Any) -> None:
    """Every operation of the Protocol exists on both, taking the Protocol's arguments the same way."""
    if isinstance(backend, _Alternating):  # replicas behind a balancer: each is reached by a client
        backend = backend.clients[0]
    assert isinstance(backend, Personalizer)
    assert isinstance(backend, LocalEngine) == isinstance(backend, LocalPersonalizer)
    operations = sorted(n for n, v in vars(Personalizer).items() if callable(v) and not n.startswith("_"))
    assert len(operations) == 23
    for name in operations:
        wanted = inspect.signature(getattr(Personalizer, name)).parameters
        offered = inspect.signature(getattr(type(backend), name)).parameters
        for param in wanted.values():
            assert param.name in offered and offered[param.name].kind == param.kind, (name, param.name)
        extra = [p for p in offered.values() if p.name not in wanted]
        assert all(p.default is not inspect.Parameter.empty for p in extra), (name, extra)


# ---------------------------------------------------------------- rank

def test_rank_fills_every_slot_with_an_allowed_distinct_action(backend: Any) -> None:
    answer = backend.rank(rank_request())
    assert set(answer) >= {"eventId", "slots"} and answer["eventId"]
    slots = answer["slots"]
    assert [s["id"] for s in slots] == ["BigHeroPosition", "SmallSidebar"]
    chosen = [s["rewardActionId"] for s in slots]
    assert len(set(chosen)) == 2
    assert chosen[0] != "31-Inch-Monitor-771" and chosen[1] != "Tennis-Racket-133"
    assert all(0 < s["probability"] <= 1 for s in slots)


def test_same_event_id_and_request_answer_the_same(backend: Any) -> None:
    first = backend.rank(rank_request("evt-1"))
    assert first["eventId"] == "evt-1"
    assert backend.rank(rank_request("evt-1")) == first
    assert error_of(backend.rank, rank_request("evt-1", device="desktop")) == ("InvalidRankRequest", 409)


def _mutate(path: list[Any], value: Any) -> dict[str, Any]:
    body = rank_request()
    target: Any = body
    for key in path[:-1]:
        target = target[key]
    if value is _DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return body


_DELETE = object()
BAD_RANKS = {
    "no actions": (["actions"], []),
    "actions missing": (["actions"], _DELETE),
    "slots missing": (["slots"], _DELETE),
    "baseline not an action": (["slots", 0, "baselineAction"], "nope"),
    "baseline excluded": (["slots", 0, "excludedActions"], ["Red-Polo-Shirt-432"]),
    "duplicate slot": (["slots", 1, "id"], "BigHeroPosition"),
    "empty action id": (["actions", 0, "id"], ""),
    "features not a list": (["contextFeatures"], {"time": "morning"}),
    "bad feature value": (["contextFeatures", 0], {"time": [1, "x"]}),
    "event id too long": (["eventId"], "e" * 257),
    "excluded unknown": (["slots", 1, "excludedActions"], ["ghost"]),
    "defer not bool": (["deferActivation"], "maybe"),
}


@pytest.mark.parametrize("case", list(BAD_RANKS))
def test_invalid_rank_requests_are_400_invalid_rank_request(backend: Any, case: str) -> None:
    path, value = BAD_RANKS[case]
    assert error_of(backend.rank, _mutate(path, value)) == ("InvalidRankRequest", 400)


@pytest.mark.parametrize("body", [[], "text", 3, None])
def test_a_rank_body_that_is_not_an_object_is_400(backend: Any, body: Any) -> None:
    assert error_of(backend.rank, body) == ("InvalidRankRequest", 400)


def test_too_many_slots_and_actions(backend: Any) -> None:
    body = rank_request()
    body["slots"].append({"id": "third", "baselineAction": "Tennis-Racket-133"})
    body["slots"].append({"id": "fourth", "baselineAction": "31-Inch-Monitor-771"})
    body["slots"].append({"id": "fifth", "baselineAction": "XBox-Series X-117"})
    assert error_of(backend.rank, body) == ("InvalidRankRequest", 400)
    many = rank_request()
    many["actions"] = [{"id": f"a{i}", "features": [{"i": i}]} for i in range(51)]
    many["slots"] = [{"id": "s", "baselineAction": "a0"}]
    assert error_of(backend.rank, many) == ("InvalidRankRequest", 400)


# ---------------------------------------------------------------- reward and activate

def test_reward_receipts(backend: Any) -> None:
    event = backend.rank(rank_request())["eventId"]
    first = backend.reward(event, {"reward": [{"slotId": "BigHeroPosition", "value": 1}]})
    assert first == {"eventId": event, "status": "pending"}
    done = backend.reward(event, {"reward": [{"slotId": "SmallSidebar", "value": 0.5}]})
    assert done == {"eventId": event, "status": "learned"}
    again = backend.reward(event, {"reward": [{"slotId": "SmallSidebar", "value": 0.5}]})
    assert again == {"eventId": event, "status": "duplicate"}  # a retried reward changes nothing


@pytest.mark.parametrize(("body", "expected"), [
    ({"reward": [{"slotId": "nope", "value": 1}]}, ("InvalidRewardRequest", 400)),
    ({"reward": [{"slotId": "SmallSidebar", "value": 1.5}]}, ("InvalidRewardRequest", 400)),
    ({"reward": [{"slotId": "SmallSidebar", "value": "1"}]}, ("InvalidRewardRequest", 400)),
    ({"reward": [{"slotId": "SmallSidebar"}]}, ("InvalidRewardRequest", 400)),
    ({"reward": []}, ("InvalidRewardRequest", 400)),
    ({"value": 1}, ("InvalidRewardRequest", 400)),
    ([1], ("InvalidRewardRequest", 400)),
])
def test_invalid_rewards(backend: Any, body: Any, expected: tuple[str, int]) -> None:
    event = backend.rank(rank_request())["eventId"]
    assert error_of(backend.reward, event, body) == expected


def test_unknown_events(backend: Any) -> None:
    reward = {"reward": [{"slotId": "SmallSidebar", "value": 1}]}
    assert error_of(backend.reward, "never-ranked", reward) == ("ResourceNotFound", 404)
    assert error_of(backend.activate, "never-ranked") == ("InvalidEventIdToActivate", 404)
    assert error_of(backend.reward_single, "never-ranked", {"value": 1}) == ("ResourceNotFound", 404)


def test_deferred_events_learn_only_once_activated(backend: Any) -> None:
    event = backend.rank(rank_request(defer=True))["eventId"]
    all_slots = {"reward": [{"slotId": "BigHeroPosition", "value": 1}, {"slotId": "SmallSidebar", "value": 0}]}
    assert backend.reward(event, all_slots)["status"] == "pending"
    assert backend.activate(event) == {"eventId": event, "status": "learned"}
    assert backend.activate(event) == {"eventId": event, "status": "learned"}  # idempotent


def test_single_slot_loop(backend: Any) -> None:
    actions = rank_request()["actions"]
    answer = backend.rank_single({"contextFeatures": [{"t": 1}], "actions": actions,
                                  "excludedActions": ["XBox-Series X-117"], "eventId": "single-1"})
    assert answer["eventId"] == "single-1"
    probabilities = {r["id"]: r["probability"] for r in answer["ranking"]}
    assert probabilities["XBox-Series X-117"] == 0 and answer["rewardActionId"] != "XBox-Series X-117"
    assert error_of(backend.reward_single, "single-1", {"value": 2}) == ("InvalidRewardRequest", 400)
    assert backend.reward_single("single-1", {"value": 1})["status"] == "learned"
    multi = backend.rank(rank_request())["eventId"]
    assert error_of(backend.reward_single, multi, {"value": 1}) == ("InvalidRewardRequest", 400)
    assert error_of(backend.rank_single, {"actions": actions, "excludedActions": ["ghost"]}) == (
        "InvalidRankRequest", 400)


# ---------------------------------------------------------------- settings, model, log

def test_configuration_and_policy(backend: Any) -> None:
    cfg = backend.get_service_configuration()
    assert cfg["rewardWaitTime"] == "PT10M" and cfg["explorationPercentage"] == 0.2
    updated = backend.update_service_configuration({"explorationPercentage": 0.1, "rewardAggregation": "Sum"})
    assert updated["explorationPercentage"] == 0.1 and updated["rewardAggregation"] == "sum"
    assert error_of(backend.update_service_configuration, {"defaultReward": 3}) == ("InvalidServiceConfiguration", 400)
    assert error_of(backend.update_policy, {"name": "x", "arguments": "--daemon"}) == (
        "InvalidPolicyConfiguration", 400)
    assert error_of(backend.update_policy, {"name": "x"}) == ("InvalidPolicyContract", 400)
    default = backend.get_policy()
    assert backend.update_policy({"name": "mine", "arguments": "--ccb_explore_adf -q ::"})["name"] == "mine"
    assert backend.reset_policy() == default


def test_model_round_trip_and_log(backend: Any) -> None:
    event = backend.rank(rank_request())["eventId"]
    backend.reward(event, {"reward": [{"slotId": "BigHeroPosition", "value": 1}, {"slotId": "SmallSidebar",
                                                                                   "value": 1}]})
    model = backend.export_model()
    assert isinstance(model, bytes) and model
    assert backend.import_model(model) is None
    assert error_of(backend.import_model, b"") == ("InvalidModelImportFormat", 400)
    assert error_of(backend.import_model, b"garbage") == ("InvalidModelImportFormat", 400)
    assert backend.reset_model() is None
    props = backend.model_properties()
    assert props["creationTime"] and props["lastModifiedTime"]
    assert backend.log_properties()["dateRange"]["from"]
    assert backend.delete_logs() == 1
    assert backend.log_properties() == {"dateRange": None}


def test_both_backends_reject_the_same_inputs_the_same_way(tmp_path: Path) -> None:
    """Cross-check on shared inputs: error (code, status) pairs are identical, call by call."""
    engine = LocalPersonalizer(tmp_path / "a")
    remote_engine = LocalPersonalizer(tmp_path / "b")
    try:
        with ThreadedServer(remote_engine) as server, PersonalizerClient(server.base, KEY, retries=0) as client:
            cases: list[tuple[str, tuple[Any, ...]]] = [("rank", (_mutate(*bad),)) for bad in BAD_RANKS.values()]
            body = rank_request()
            for slot in body["slots"]:
                slot["excludedActions"] = None
                slot["features"] = None
            cases += [("rank", (body,)), ("rank", ({},)), ("rank_single", ({"actions": []},)),
                      ("reward", ("x", {"reward": [{"slotId": "s", "value": 0}]})), ("activate", ("x",)),
                      ("reward_single", ("x", {"value": None})), ("update_policy", ({"name": 1, "arguments": 2},)),
                      ("update_service_configuration", ({"learningMode": "Sometimes"},))]
            for method, args in cases:
                outcomes = []
                for b in (engine, client):
                    try:
                        result = getattr(b, method)(*copy.deepcopy(args))
                        outcomes.append(("ok", sorted(result) if isinstance(result, dict) else result))
                    except PersonalizerError as exc:
                        outcomes.append((exc.code, exc.status))
                assert outcomes[0] == outcomes[1], (method, args, outcomes)
    finally:
        engine.close()
        remote_engine.close()
