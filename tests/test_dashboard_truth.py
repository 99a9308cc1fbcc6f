"""AppTest: the eight ways the dashboard stated numbers that were not true for what the viewer selected (issue 13).

One test (or a few) per numbered problem; each failed on the dashboard before the
experiment scope, the headline card and the synced controls existed.
"""

from __future__ import annotations

import json
import time

from dashboard_fixtures import (
    EVALUATE,
    RANK,
    SIMULATOR,
    TRENDS,
    chart_data,
    charts,
    history,
    layers,
    metric_values,
    run_evaluation,
    run_simulator,
    spec,
    texts,
    unescape,
)
from server_fixtures import KEY, ThreadedServer
from streamlit.testing.v1 import AppTest

from personalizer.simulation import load_scenario


def _remote(at: AppTest, server: ThreadedServer) -> AppTest:
    at.segmented_control(key="backend-kind").set_value("remote").run()
    at.text_input(key="remote-endpoint").input(server.base).run()
    at.text_input(key="remote-key").input(KEY).run()
    assert not at.exception, at.exception
    return at


def _upload(at: AppTest, data: dict | bytes, name: str = "mine.json") -> AppTest:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    at.selectbox(key="scenario-choice").set_value("__upload__").run()
    at.file_uploader(key="scenario-upload").set_value((name, raw, "application/json")).run()
    assert not at.exception, at.exception
    return at


def _news() -> dict:
    """A second catalog: three articles in two slots, with display names."""
    return {
        "name": "news",
        "context": {"section": ["home", "sport"]},
        "actions": [{"id": f"article-{i}", "features": [{"topic": t}]} for i, t in enumerate(["a", "b", "c"])],
        "slots": [{"id": "Lead", "features": [{"size": "large"}], "baselineAction": "article-0"},
                  {"id": "Second", "features": [{"size": "small"}], "baselineAction": "article-1"}],
        "preferences": {"type": "additive", "base": {"article-0": 0.2, "article-1": 0.3, "article-2": 0.6}},
        "display": {"slots": {"Lead": "Lead story"}, "actions": {"article-2": "Match report"},
                    "context": {"section": "Site section"}},
    }


def _wide(actions: int = 50, slots: int = 6) -> dict:
    """A catalog at the contract's edge: 50 actions and 6 slots."""
    ids = [f"item-{i:02d}" for i in range(actions)]
    return {
        "name": "wide",
        "context": {"device": ["mobile", "desktop"]},
        "actions": [{"id": a, "features": [{"rank": i}]} for i, a in enumerate(ids)],
        "slots": [{"id": f"Slot number {s + 1}", "features": [{"position": s}], "baselineAction": ids[s]}
                  for s in range(slots)],
        "preferences": {"type": "additive", "base": {a: 0.1 + 0.8 * (i % 7) / 7 for i, a in enumerate(ids)}},
    }


# 1. Metrics mix backends and catalogs ------------------------------------------------------------

def test_1_trends_after_switching_to_remote_show_only_the_remote_experiment(app: AppTest,
                                                                           server: ThreadedServer) -> None:
    run_simulator(app, 150)  # 150 visitors on the embedded engine
    _remote(app, server)
    app.switch_page(RANK).run()
    app.button(key="accept-BigHeroPosition").click().run()
    app.button(key="reject-SmallSidebar").click().run()
    app.switch_page(TRENDS).run()
    assert not app.exception
    metrics = metric_values(app)
    assert metrics["Visitors answered"] == "1" and metrics["Answers"] == "2"
    assert "Remote http://127.0.0.1" in texts(app)
    # Evaluate on remote: the server's log (this experiment's one visitor), not the embedded 150.
    app.switch_page(EVALUATE).run()
    assert "Not enough logged events yet" in texts(app) and "the log has 1." in texts(app)
    assert "150" not in texts(app)
    # The embedded experiment is still reachable.
    app.switch_page(TRENDS).run()
    embedded = next(o for o in app.selectbox(key="trend-experiment").options if "Embedded" in o)
    app.selectbox(key="trend-experiment").set_value(
        next(n for n in app.selectbox(key="trend-experiment").proto.options if n == embedded) if False else
        int(embedded.split(" ")[0].lstrip("#"))).run()
    assert metric_values(app)["Visitors answered"] == "150"


def test_1_a_second_catalog_never_mixes_into_the_first_ones_cards(app: AppTest) -> None:
    run_simulator(app, 120)
    _upload(app, _news())
    run_simulator(app, 120)
    app.switch_page(TRENDS).run()
    assert not app.exception
    metrics = metric_values(app)
    assert "Lead story" in metrics and "Second" in metrics
    assert "Hero banner" not in metrics and "BigHeroPosition" not in metrics
    assert metrics["Visitors answered"] == "120"
    # The whole log of this catalog is still only this catalog.
    app.segmented_control(key="trend-span").set_value("Whole log").run()
    assert metric_values(app)["Visitors answered"] == "120"


def test_1_scenario_switches_resets_and_drift_are_labelled_rules_on_the_curves(app: AppTest) -> None:
    run_simulator(app, 100)
    app.selectbox(key="scenario-choice").set_value("seed-drift").run()
    run_simulator(app, 100)
    app.switch_page(TRENDS).run()
    assert metric_values(app)["Visitors answered"] == "100"  # since last change: the seed-drift run only
    app.segmented_control(key="trend-span").set_value("Whole log").run()
    assert metric_values(app)["Visitors answered"] == "200"
    curve = charts(app)[2]
    labels = set(chart_data(curve).get("label", []).dropna())
    assert "Scenario switched to seed-drift" in labels and "Simulated drift: tastes change" in labels
    assert any(layer["mark"]["type"] == "rule" for layer in layers(spec(curve)))


# 2. The simulator ignores the sidebar scenario ---------------------------------------------------

def test_2_the_simulator_follows_the_sidebar_scenario_and_keeps_its_inputs(app: AppTest) -> None:
    app.selectbox(key="scenario-choice").set_value("seed-joint").run()
    app.switch_page(SIMULATOR).run()
    app.number_input(key="sim-visitors").set_value(150).run()
    app.button(key="sim-run").click().run()
    assert not app.exception
    assert "with the seed-joint preferences" in texts(app)
    simulated = history(app)[lambda f: f["source"] == "simulated"]
    assert set(simulated["scenario"]) == {"seed-joint"}
    app.switch_page(TRENDS).run()
    app.switch_page(SIMULATOR).run()
    assert app.number_input(key="sim-visitors").value == 150


# 3. Mode and reset don't reach the screen --------------------------------------------------------

def test_3_a_learning_mode_change_re_ranks_the_visitor_on_screen(app: AppTest) -> None:
    before = app.session_state["studio.event"].event_id
    app.selectbox(key="engine-learning-mode").set_value("Apprentice").run()
    event = app.session_state["studio.event"]
    assert event.event_id != before and event.learning_mode == "Apprentice"
    assert [s.action_id for s in event.slots] == [s.baseline_id for s in event.slots]
    assert "Baseline served" in texts(app)


def test_3_a_reset_re_ranks_the_visitor_and_the_counts_start_again(app: AppTest) -> None:
    run_simulator(app, 60)
    app.switch_page(RANK).run()
    before = app.session_state["studio.event"].event_id
    app.button(key="reset-model").click().run()
    app.button(key="reset-confirm").click().run()
    assert not app.exception
    assert app.session_state["studio.event"].event_id != before
    counts = unescape(" ".join(m.value for m in app.sidebar.markdown))
    assert "**0 events** learned since the model changed" in counts


# 4. Evaluate -------------------------------------------------------------------------------------

def test_4_evaluate_marks_the_live_policy_and_never_recommends_it_again(app: AppTest) -> None:
    app.slider(key="engine-exploration").set_value(100).run()
    run_simulator(app, 200)
    app.switch_page(EVALUATE).run()
    app.get("button_group")[0].set_value(["Less exploration"]).run()
    run_evaluation(app)
    assert app.button(key="eval-apply")
    app.button(key="eval-apply").click().run()
    shown = texts(app)
    assert "Applied Less exploration: the engine now explores 10% of the time" in shown
    assert "--ccb_explore_adf" not in " ".join(s.value for s in app.success)  # arguments behind the toggle
    assert any("--ccb_explore_adf" in c.value for c in app.code)
    shown = texts(app)  # the same results, redrawn: what was applied is live now
    assert "Less exploration (live)" in app.dataframe[0].value["policy"].tolist()
    assert "nothing to apply" in shown and not [b for b in app.button if b.key == "eval-apply"]
    app.selectbox(key="eval-range").set_value("All logged events").run()
    run_evaluation(app)  # a second run over the same log
    shown = texts(app)
    assert "Less exploration (live)" in app.dataframe[0].value["policy"].tolist()
    assert "nothing to apply" in shown and not [b for b in app.button if b.key == "eval-apply"]


def test_4_results_older_than_the_log_are_flagged_and_no_rounded_zero_warning(app: AppTest) -> None:
    run_simulator(app, 120)
    app.switch_page(EVALUATE).run()
    app.get("button_group")[0].set_value(["Less exploration"]).run()
    run_evaluation(app)
    assert not any("0% of the logged slots" in w.value or "0.0%" in w.value for w in app.warning)
    assert "older than the log" not in texts(app)
    time.sleep(1.1)  # the evaluation's creation time is kept to the second
    run_simulator(app, 30)
    app.switch_page(EVALUATE).run()
    assert "These results are older than the log" in texts(app)


# 5. Charts at the edges ---------------------------------------------------------------------------

def test_5_one_reward_draws_a_point_on_a_whole_number_axis(app: AppTest) -> None:
    app.button(key="accept-BigHeroPosition").click().run()
    app.switch_page(TRENDS).run()
    curve = charts(app)[2]
    line = layers(spec(curve))[0]
    assert line["mark"].get("point") is True  # a single answer is a visible dot
    axis = line["encoding"]["x"]["axis"]
    assert axis["tickMinStep"] == 1 and axis["format"] == ",d"


def test_5_the_action_mix_stays_readable_with_six_slots_and_fifty_actions(app: AppTest) -> None:
    _upload(app, _wide())
    run_simulator(app, 300)
    app.switch_page(TRENDS).run()
    assert not app.exception
    mix = charts(app)[1]
    data = chart_data(mix)
    assert data["action"].nunique() <= 9 and "Other actions" in set(data["action"])
    assert data["slot"].nunique() == 6
    legend = spec(mix)["encoding"]["color"]["legend"]
    assert legend["orient"] == "bottom"  # under the chart: fits a 390 px phone


# 6. Uploads ------------------------------------------------------------------------------------

def test_6_every_problem_of_an_upload_is_listed_in_the_main_area(app: AppTest) -> None:
    bad = load_scenario("seed").to_dict()
    bad["slots"][0]["baselineAction"] = "Nope-1"
    bad["slots"][1]["excludedActions"] = ["Ghost-2"]
    _upload(app, bad, "bad.json")
    main = unescape(" ".join(e.value for e in app.main.error))
    assert "Nope-1" in main and "Ghost-2" in main
    uploader = app.file_uploader(key="scenario-upload")
    assert uploader.proto.max_upload_size_mb == 1  # what the widget says is what is enforced


def test_6_a_new_catalog_is_labelled_as_unseen_by_the_model(app: AppTest) -> None:
    _upload(app, _news())
    shown = texts(app)
    assert "the model has not seen this catalog yet" in shown
    assert "Lead story" in shown  # display names from the file
    app.button(key="accept-Lead").click().run()
    app.button(key="next-visitor").click().run()
    assert "has not seen this catalog yet" not in texts(app)


# 7. Words ------------------------------------------------------------------------------------------

def test_7_names_plurals_and_explained_codes(app: AppTest) -> None:
    app.button(key="accept-BigHeroPosition").click().run()
    app.button(key="accept-SmallSidebar").click().run()
    sidebar = unescape(" ".join(m.value for m in app.sidebar.markdown))
    assert "**1 event** learned" in sidebar
    assert app.selectbox(key="ctx-time").label == "Time of day"
    shown = texts(app)
    assert "Xbox Series X" in shown or "Red polo shirt" in shown or "Tennis racket" in shown
    app.switch_page(TRENDS).run()
    assert not [m for m in app.metric if m.label.startswith("Last ")]  # no "Last 1 events ↑ +0.0 pts"
    app.segmented_control(key="backend-kind").set_value("remote").run()
    app.text_input(key="remote-endpoint").input("").run()
    warning = unescape(" ".join(w.value for w in app.sidebar.warning))
    assert "No endpoint URL is set yet" in warning


def test_7_changing_selectors_leaves_no_trail_of_unanswered_visitors(app: AppTest) -> None:
    app.selectbox(key="ctx-time").set_value("Evening").run()
    app.selectbox(key="ctx-device").set_value("Desktop").run()
    app.selectbox(key="ctx-time").set_value("Night").run()
    app.button(key="accept-BigHeroPosition").click().run()
    assert history(app)["eventId"].nunique() == 1
    app.switch_page(TRENDS).run()
    assert metric_values(app)["Visitors answered"] == "1"
    assert "2 rows in this view" in texts(app)


# 8. A comparison that can't close --------------------------------------------------------------------

def test_8_the_simulator_result_has_a_headline_and_an_exploring_oracle(app: AppTest) -> None:
    run_simulator(app, 300)
    metrics = metric_values(app)
    assert "All slots: oracle exploring 20%" in metrics and "All slots: oracle never exploring" in metrics
    exploring = float(metrics["All slots: oracle exploring 20%"].rstrip("%"))
    greedy = float(metrics["All slots: oracle never exploring"].rstrip("%"))
    assert exploring < greedy
    shown = texts(app)
    assert "vs without personalization" in shown and "n = 300" in shown
    assert any(word in shown for word in ("Winning", "Too early", "Losing"))


def test_8_the_history_shows_the_reward_up_front_and_the_csv_names_the_backend(app: AppTest) -> None:
    from personalizer.dashboard.history import to_csv

    app.button(key="accept-BigHeroPosition").click().run()
    app.switch_page(TRENDS).run()
    order = list(app.dataframe[0].proto.column_order)
    assert order.index("reward") < 5 and order.index("eventId") > order.index("reward")
    header = to_csv(history(app)).splitlines()[0].split(",")
    assert "backend" in header and "policy" in header
    assert "Embedded engine" in to_csv(history(app))
