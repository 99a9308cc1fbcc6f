"""PersonalizerClient's offline-evaluation methods against the real server on loopback, and the Evaluate page's
view of their answers (``offline.EvaluationView``) checked against the evaluation's own result object."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from server_fixtures import KEY, ThreadedServer
from timing import FakeClock, Ticking

from personalizer.client import PersonalizerClient
from personalizer.contract import PersonalizerError
from personalizer.dashboard.offline import EvaluationView, interval_details, result_frame
from personalizer.engine import LocalPersonalizer
from personalizer.evaluation import Evaluations
from personalizer.simulation import load_scenario, simulate

EVENTS = 240
START, END = "2027-01-15T08:00:00Z", "2027-01-16T00:00:00Z"  # covers the simulated events (FakeClock's T0 on)
CANDIDATE = {"name": "less exploration", "arguments": "--ccb_explore_adf --cb_type mtr -q :: --epsilon 0.1"}


@pytest.fixture(name="served")
def served_fixture(tmp_path: Path) -> Iterator[tuple[ThreadedServer, PersonalizerClient]]:
    """A server whose log holds ``EVENTS`` rewarded seed visitors (one a minute), and a client of it."""
    clock = FakeClock()
    engine = LocalPersonalizer(tmp_path / "data", clock=clock)
    simulate(Ticking(engine, clock), load_scenario("seed"), EVENTS, seed=3)
    try:
        with ThreadedServer(engine) as server, PersonalizerClient(server.base, KEY, retries=0) as client:
            yield server, client
    finally:
        engine.close()


def contract(name: str, policies: list[dict[str, str]] | None = None) -> dict[str, Any]:
    return {"name": name, "startTime": START, "endTime": END, "policies": policies or []}


def finished(client: PersonalizerClient, evaluation_id: str, timeout: float = 60.0) -> dict[str, Any]:
    """The evaluation once it is no longer pending (bounded)."""
    deadline = time.monotonic() + timeout
    while (answer := client.get_evaluation(evaluation_id))["status"] == "pending":
        assert time.monotonic() < deadline, answer
        time.sleep(0.05)
    return answer


def test_create_get_list_apply_delete(served: tuple[ThreadedServer, PersonalizerClient]) -> None:
    server, client = served
    created = client.create_evaluation(contract("first look", [CANDIDATE]))
    evaluation_id = created["id"]
    assert created["status"] == "pending" and created["name"] == "first look" and created["policyResults"] == []
    done = finished(client, evaluation_id)
    assert done["status"] == "completed" and done["events"] == EVENTS
    assert [p["name"] for p in done["policyResults"]] == ["Online", "Baseline", "Random", "less exploration"]
    assert all(p["totalSummary"]["effectiveEvents"] > 0 for p in done["policyResults"])

    # Listing: EvaluationDetails (no results), oldest first, every page followed.
    more = [client.create_evaluation(contract(f"look {i}"))["id"] for i in range(2)]
    listed = client.list_evaluations(page_size=1)
    assert [e["id"] for e in listed] == [evaluation_id, *more]
    assert listed[0]["name"] == "first look" and "policyResults" not in listed[0]
    assert listed[0]["status"] == "Succeeded"  # the 2022 listing's words
    for other in more:  # settled, so two listings can be compared whole
        finished(client, other)
    assert client.list_evaluations() == client.list_evaluations(page_size=2)

    # Apply a candidate: the server's engine now runs it, and the evaluation says so.
    client.apply_from_evaluation(evaluation_id, "less exploration")
    policy = server.engine.get_policy()
    assert policy["name"] == "less exploration" and "--epsilon 0.1" in policy["arguments"]
    assert client.get_policy() == policy
    assert client.get_evaluation(evaluation_id)["status"] == "optimalPolicyApplied"
    assert client.policy_history()[0]["action"] == "evaluation"

    # Delete: gone for get, apply and a second delete, with the service's error code.
    client.delete_evaluation(evaluation_id)
    for call in (lambda: client.get_evaluation(evaluation_id), lambda: client.delete_evaluation(evaluation_id),
                 lambda: client.apply_from_evaluation(evaluation_id)):
        with pytest.raises(PersonalizerError) as info:
            call()
        assert (info.value.code, info.value.status) == ("EvaluationNotFound", 404)
    assert evaluation_id not in [e["id"] for e in client.list_evaluations()]


def test_invalid_requests_are_personalizer_errors_and_change_nothing(
        served: tuple[ThreadedServer, PersonalizerClient]) -> None:
    _, client = served
    before = client.get_policy()
    cases = [
        ({**contract("backwards"), "startTime": END, "endTime": START}, "InvalidEvaluationContract", 400),
        ({**contract("empty"), "startTime": "2001-01-01T00:00:00Z", "endTime": "2001-02-01T00:00:00Z"},
         "NoLogsExistInDateRange", 400),
        (contract("twice", [CANDIDATE, CANDIDATE]), "DuplicateCustomPolicyNames", 400),
        (contract("broken", [{"name": "broken", "arguments": "--ccb_explore_adf --cb_type nonsense"}]), None, 400),
    ]
    for body, code, status in cases:
        with pytest.raises(PersonalizerError) as info:
            client.create_evaluation(body)
        assert info.value.status == status and (code is None or info.value.code == code), info.value
    assert client.list_evaluations() == []
    pending = client.create_evaluation(contract("too soon", [CANDIDATE]))
    with pytest.raises(PersonalizerError) as info:  # no results yet (or, if it finished already: no such policy)
        client.apply_from_evaluation(pending["id"], "no such policy")
    assert info.value.status == 404 and info.value.code in ("EvaluationModelNotFound", "LearningSettingsNotFound")
    assert client.get_policy() == before and client.policy_history() == []


def test_the_pages_view_of_the_wire_is_the_evaluations_own_result(
        served: tuple[ThreadedServer, PersonalizerClient]) -> None:
    server, client = served
    evaluation_id = client.create_evaluation(contract("faithful", [CANDIDATE]))["id"]
    view = EvaluationView.from_wire(finished(client, evaluation_id))
    assert view is not None
    with Evaluations(server.engine) as stored:  # the same evaluation, read back from the server's store
        result = stored.result(evaluation_id)
    assert result is not None
    assert view.slot_ids == result.slot_ids and view.slot_positions == result.slot_positions
    assert view.events == result.events and view.optimal_policy == result.optimal_policy
    assert view.deterministic_share == result.deterministic_share
    assert [p.name for p in view.policies] == [p.name for p in result.policies]
    later = [s for s in result.slot_ids if result.slot_positions[s] > 0]
    assert later, "the seed scenario has a later slot"
    for shown, own in zip(view.policies, result.policies, strict=True):
        pairs = [(shown.headline, own.headline)] + [
            (shown.estimate(s, weighting="cascade"), own.estimate(s, weighting="cascade")) for s in later]
        for got, want in pairs:
            assert got.value == want.snips and got.interval == want.interval and got.events == want.events
            assert got.support == want.nonzero / want.events and got.dr == want.dr
            assert got.gaussian == want.interval_of("gaussian") and got.bernstein == want.interval_of("bernstein")
            assert math.isclose(got.effective_events, want.effective_events)
    frame = result_frame(view, later[0])
    assert frame["estimate"].between(0, 1).all() and frame["best"].sum() <= 1
    assert (interval_details(view)["effective"] > 0).all()
