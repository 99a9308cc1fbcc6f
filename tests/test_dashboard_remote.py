"""AppTest: the dashboard on a remote endpoint (the project's REST server on loopback, with a key)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dashboard_fixtures import APP, EVALUATE, TRENDS, history, run_simulator, shared_engine, texts, unescape
from server_fixtures import KEY, ThreadedServer
from streamlit.testing.v1 import AppTest

WRONG_KEY = "wrong-key-9f8e7d6c5b4a"


def _protos(node: Any) -> Iterator[str]:
    """Every element proto of the app's last run, as text (what the browser receives)."""
    proto = getattr(node, "proto", None)
    if proto is not None:
        yield str(proto)
    children = getattr(node, "children", None)
    if isinstance(children, dict):
        for child in children.values():
            yield from _protos(child)


def _everything(at: AppTest) -> str:
    """All element protos of the last run and every text widget's value, Markdown escapes removed."""
    values = [str(w.value) for w in [*at.text_input, *at.text_area]]
    return unescape("\n".join([*_protos(at._tree), *values]))


def _connect(at: AppTest, endpoint: str, key: str) -> AppTest:
    at.segmented_control(key="backend-kind").set_value("remote").run()
    at.text_input(key="remote-endpoint").input(endpoint).run()
    at.text_input(key="remote-key").input(key).run()
    assert not at.exception, at.exception
    return at


def test_switch_to_remote_test_connection_rank_and_accept(app: AppTest, server: ThreadedServer,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    _connect(app, server.base, KEY)
    assert app.text_input(key="remote-key").value == ""  # the key left the widget at once
    assert "Key: entered in this tab · never shown" in texts(app)
    app.button(key="test-connection").click().run()
    shown = texts(app)
    assert "**Connected** to http://127.0.0.1" in shown and "Key accepted · learning mode Online" in shown
    # The rank page ranked a visitor on the server (an event id the server logged), with probabilities.
    event = app.session_state["studio.event"]
    assert server.engine.event(event.event_id) is not None
    assert all(s.probability is not None for s in event.slots)
    assert "probability" in shown
    app.button(key="accept-BigHeroPosition").click().run()
    assert not app.exception and not app.error
    assert app.button(key="accept-BigHeroPosition").disabled
    stored = server.engine.event(event.event_id)
    assert stored.activated is not None and server.engine.stats()["rewards"] == 1
    rows = history(app)
    rows = rows[rows["eventId"] == event.event_id].set_index("slot")
    assert rows.loc["BigHeroPosition", "reward"] == 1.0
    # Settings in the sidebar are the server's.
    app.slider(key="engine-exploration").set_value(30).run()
    assert server.engine.get_service_configuration()["explorationPercentage"] == pytest.approx(0.3)
    assert shared_engine().stats()["rewards"] == 0  # the embedded engine saw nothing
    # The key is nowhere: not in the page, not in repr, not in the logs.
    assert server.base in _everything(app)  # (the page's text is all there)
    assert KEY not in _everything(app)
    assert KEY not in repr(app.session_state["studio.backend_choice"])
    assert KEY not in caplog.text


def test_a_wrong_key_shows_the_error_code_without_the_key(app: AppTest, server: ThreadedServer,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    _connect(app, server.base, WRONG_KEY)
    app.button(key="test-connection").click().run()
    assert not app.exception
    sidebar = " ".join(e.value for e in app.sidebar.error)
    assert "Connection failed" in sidebar and "Unauthorized" in sidebar and "401" in sidebar
    assert "Health: ok" in texts(app)  # the server answered; the key was refused
    main = " ".join(e.value for e in app.main.error)
    assert "Could not rank this visitor" in main and "Unauthorized" in main
    for secret in (WRONG_KEY, KEY):
        assert secret not in _everything(app)
        assert secret not in caplog.text
    # Entering the right key fixes it, and "Forget key" drops it again.
    app.text_input(key="remote-key").input(KEY).run()
    app.button(key="next-visitor").click().run()
    assert not app.error and app.button(key="accept-SmallSidebar")
    app.button(key="forget-key").click().run()
    assert app.session_state["studio.backend_choice"].key is None
    assert KEY not in _everything(app)


def test_a_configured_endpoint_is_the_default_and_everything_works_on_it(
        studio_home: Path, server: ThreadedServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PERSONALIZER_ENDPOINT", server.base)
    monkeypatch.setenv("PERSONALIZER_KEY", KEY)
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert not at.exception and not at.error
    assert at.segmented_control(key="backend-kind").value == "remote"
    assert "Key: from PERSONALIZER_KEY · never shown" in texts(at)
    # The simulator through HTTP, then the trends page's lift from this tab's history.
    run_simulator(at, 200)
    assert "Simulated **200** visitors" in texts(at)
    assert server.engine.stats()["learned"] == 200
    rows = history(at)
    assert rows[rows["source"] == "simulated"]["probability"].notna().all()
    at.switch_page(TRENDS).run()
    assert not at.exception
    shown = texts(at)
    assert "Lift over baseline" in shown and "From 200 visitors of this view" in shown
    assert "Hero banner · first slot, headline" in shown and "Sidebar · later slot" in shown
    # Offline evaluation runs on the server (tests/test_dashboard_remote_evaluate.py): the page offers it.
    at.switch_page(EVALUATE).run()
    assert not at.exception and not at.error
    assert at.button(key="eval-run") and "embedded engine" not in texts(at)
    # Back to the embedded engine with one click; the remote settings are kept for this tab.
    at.segmented_control(key="backend-kind").set_value("embedded").run()
    assert not at.session_state["studio.backend_choice"].remote
    at.segmented_control(key="backend-kind").set_value("remote").run()
    assert at.text_input(key="remote-endpoint").value == server.base
    assert KEY not in _everything(at)


def test_secrets_toml_settings_win_and_a_missing_endpoint_is_explained(studio_home: Path,
                                                                       server: ThreadedServer) -> None:
    at = AppTest.from_file(APP, default_timeout=60)
    at.secrets["personalizer"] = {"endpoint": server.base + "/", "key": KEY}
    at.run()
    assert not at.exception and not at.error
    assert "Key: from .streamlit/secrets.toml · never shown" in texts(at)
    assert server.engine.event(at.session_state["studio.event"].event_id) is not None
    at.text_input(key="remote-endpoint").input("").run()
    assert not at.exception
    assert "No backend yet" in texts(at) and "Enter the endpoint URL" in texts(at)
    assert KEY not in _everything(at)


def test_remote_trends_chart_the_servers_whole_log_and_cards_explain_through_the_api(
        app: AppTest, server: ThreadedServer) -> None:
    from personalizer.dashboard.scenarios import builtin
    from personalizer.simulation import simulate

    simulate(server.engine, builtin("seed"), 300, seed=5)  # the server has a log; this tab has no answers
    _connect(app, server.base, KEY)
    # Why this action? comes from the server's explanation extension, for the visitor on screen only.
    event = app.session_state["studio.event"]
    whys = app.session_state["studio.why"]
    assert whys[0] == event.event_id
    assert all(w.lines or w.explored for w in whys[1].values()), whys
    app.switch_page("pages/reward_trends.py").run()
    assert not app.exception
    assert app.segmented_control(key="trend-view").value == "All events in the log"
    # The server's whole log, listed through its logs/events API: every visitor the server answered.
    assert app.metric[0].value == "300", texts(app)
    app.segmented_control(key="trend-log-span").set_value("Whole log").run()
    assert not app.exception and app.metric[0].value == "300"
    assert app.download_button(key="download-log").label == "Download CSV"  # the view's rows, under the charts
    # New events on the server show on the next run (read from the listing's cursor, not from the start).
    simulate(server.engine, builtin("seed"), 20, seed=6)
    app.run()
    assert not app.exception and app.metric[0].value == "320"
    # What drives the choices: the same report through the server's featureImportances API.
    app.switch_page("pages/what_drives.py").run()
    app.selectbox(key="why-range").set_value("All logged events")
    app.button(key="why-run").click().run()
    assert not app.exception, app.exception
    job = app.session_state["studio.importance_job"]
    assert "What it means" in texts(app)
    from personalizer.client import PersonalizerClient

    with PersonalizerClient(server.base, KEY) as client:  # it ran on the server
        assert job in {j["id"] for j in client.list_feature_importances()}
