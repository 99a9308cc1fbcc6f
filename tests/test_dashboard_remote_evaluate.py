"""AppTest: the Evaluate page on a remote backend: evaluations created, polled, shown, applied and deleted through
the server's API (an embedded ``serve``; a PostgreSQL replica whose trainer runs them), lift from the server's
log through its listing, policy history through the API."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from dashboard_fixtures import EVALUATE, shared_engine, texts
from server_fixtures import KEY, ThreadedServer
from streamlit.testing.v1 import AppTest
from test_client_evaluations import finished
from test_dashboard_remote import _connect

from personalizer.client import PersonalizerClient
from personalizer.dashboard.lift import from_events
from personalizer.dashboard.scenarios import builtin
from personalizer.evaluation import PRESET_POLICIES
from personalizer.simulation import simulate

REFERENCES = ["Online", "Baseline", "Random"]
VISITORS = 300


@pytest.fixture(name="client")
def client_fixture(server: ThreadedServer) -> Iterator[PersonalizerClient]:
    """A client of the test's server (what the test checks the page against)."""
    with PersonalizerClient(server.base, KEY, retries=0) as client:
        yield client


def run_remote_evaluation(at: AppTest, client: PersonalizerClient) -> dict[str, Any]:
    """Click "Run evaluation", wait for the server to finish it, redraw (what the progress fragment does)."""
    at.button(key="eval-run").click().run()
    assert not at.exception, at.exception
    assert at.progress and "Evaluating" in at.progress[0].proto.text  # polled through the API meanwhile
    done = finished(client, at.session_state["studio.evaluation"], timeout=90)
    at.run()
    assert not at.exception, at.exception
    return done


def test_a_remote_evaluation_runs_on_the_server_is_shown_applied_and_deleted(
        app: AppTest, server: ThreadedServer, client: PersonalizerClient) -> None:
    # A log with uniform exploration on the server: a learning candidate is clearly better than what was served.
    client.update_service_configuration({**client.get_service_configuration(), "explorationPercentage": 1.0})
    started = time.time()
    simulate(server.engine, builtin("seed"), VISITORS, seed=5)
    _connect(app, server.base, KEY)
    app.switch_page(EVALUATE).run()
    assert not app.exception and not app.error
    shown = texts(app)
    assert "embedded engine" not in shown and "does not serve offline evaluations" not in shown
    app.selectbox(key="eval-range").set_value("All logged events").run()
    done = run_remote_evaluation(app, client)
    assert done["status"] == "completed"
    assert shared_engine().stats()["learned"] == 0  # nothing ran in the dashboard's engine
    shown = texts(app)
    # The connect ranked one visitor on the server (still waiting for its reward): not among the evaluated.
    assert f"{VISITORS} events" in shown and done["events"] == VISITORS
    # The headline lift, from the server's log read through its listing: the server's own numbers.
    catalog = (frozenset(builtin("seed").action_ids), tuple(builtin("seed").slot_ids))
    own = from_events(server.engine.events(started - 1, time.time() + 1), catalog).headline
    assert own is not None and f"n = {own.events}" in shown and "from the server's log" in shown
    table = app.dataframe[0].value
    assert table["policy"].tolist() == REFERENCES + list(PRESET_POLICIES)
    assert table["estimate"].between(0, 100).all() and table["best"].sum() == 1
    wire = {p["name"]: p["totalSummary"] for p in done["policyResults"]}
    assert table.set_index("policy")["estimate"].to_dict() == pytest.approx(
        {name: 100 * s["averageReward"] for name, s in wire.items()})
    details = app.dataframe[1].value
    assert (details["effective"] > 0).all()
    app.segmented_control(key="eval-slot").set_value("SmallSidebar").run()
    assert not app.exception and "Slot SmallSidebar is filled after BigHeroPosition" in texts(app)

    # Apply the best candidate: the server runs it now, and its policy history says where it came from.
    best = table.loc[table["best"], "policy"].item()
    assert best not in REFERENCES and best == done["optimalPolicy"]
    app.button(key="eval-apply").click().run()
    assert not app.exception, app.exception
    assert server.engine.get_policy()["name"] == best
    shown = texts(app)
    assert f"Applied {best}: the server now" in shown
    assert client.get_evaluation(done["id"])["status"] == "optimalPolicyApplied"
    assert "Applied from an evaluation" in shown and "by the API" in shown  # the policy history, through the API

    # Delete it: gone from the server and from the page.
    app.button(key="eval-delete").click().run()
    assert not app.exception, app.exception
    assert client.list_evaluations() == []
    assert f"Deleted the evaluation {done['name']}" in texts(app)
    assert not app.dataframe and not [b for b in app.button if b.key == "eval-delete"]


def test_a_running_remote_evaluation_shows_progress_and_can_be_cancelled(
        app: AppTest, server: ThreadedServer, client: PersonalizerClient, monkeypatch: pytest.MonkeyPatch) -> None:
    from personalizer import evaluation

    def slow(data: Any, policies: Any, *, progress: Any = None, cancel: Any = None, **_kwargs: Any) -> Any:
        deadline = time.monotonic() + 30  # the server's replay, running until cancelled (the server is in-process)
        while not cancel() and time.monotonic() < deadline:
            progress(1, 4)
            time.sleep(0.01)
        raise evaluation.EvaluationCancelled

    monkeypatch.setattr(evaluation, "evaluate", slow)
    simulate(server.engine, builtin("seed"), 120, seed=6)
    _connect(app, server.base, KEY)
    app.switch_page(EVALUATE).run()
    app.button(key="eval-run").click().run()
    assert not app.exception
    assert app.progress and "Evaluating" in app.progress[0].proto.text
    assert [e["status"] for e in client.list_evaluations()] == ["Running"]
    app.button(key="eval-cancel").click().run()
    assert not app.exception
    assert client.list_evaluations() == [] and not app.progress and not app.dataframe


def test_on_a_postgresql_replica_the_trainer_runs_it_and_any_replica_shows_applies_and_deletes_it(
        app: AppTest, pg_url: str) -> None:
    from test_scale_commands import Replicas, TrainerThread

    from personalizer.engine import LocalPersonalizer
    from personalizer.pgstore import SETTLE_SECONDS

    with LocalPersonalizer(pg_url) as engine:  # 200 rewarded seed visitors in the shared log, just now
        simulate(engine, builtin("seed"), 200, seed=7)
    time.sleep(SETTLE_SECONDS)  # a replica lists the log up to this long ago (events still being committed)
    trainer = TrainerThread(pg_url)
    replicas = Replicas(pg_url, n=2)
    other = replicas.clients[1]  # the page talks to replica 0; the test reads through replica 1
    try:
        _connect(app, replicas.servers[0].base, KEY)
        app.switch_page(EVALUATE).run()
        assert not app.exception and not app.error
        app.selectbox(key="eval-range").set_value("All logged events").run()
        done = run_remote_evaluation(app, other)
        assert done["status"] == "completed" and done["events"] == 200
        shown = texts(app)
        assert "200 events" in shown and "n = 200" in shown and "from the server's log" in shown
        table = app.dataframe[0].value
        assert [p.removesuffix(" (live)") for p in table["policy"]] == REFERENCES + list(PRESET_POLICIES)
        assert "Project default (live)" in table["policy"].tolist()  # what the deployment runs, marked
        offered = [b for b in app.button if b.key == "eval-apply"]
        if offered:  # a candidate is estimated best: one click
            candidate = table.loc[table["best"], "policy"].item()
            offered[0].click().run()
        else:  # the online (or live) policy won: apply another candidate by hand
            candidate = "Joint interactions"
            app.selectbox(key="eval-apply-other").set_value(candidate).run()
            app.button(key="eval-apply-other-button").click().run()
        assert not app.exception, app.exception
        assert f"Applied {candidate}: the server now" in texts(app)
        assert other.get_policy()["name"] == candidate  # applied by the trainer, served by every replica
        app.button(key="eval-delete").click().run()
        assert not app.exception, app.exception
        assert other.list_evaluations() == []
    finally:
        replicas.close()
        trainer.close()
