"""AppTest: the reward trends page and the simulator page."""

from __future__ import annotations

from dashboard_fixtures import (
    SIMULATOR,
    TRENDS,
    chart_data,
    charts,
    history,
    layers,
    metric_values,
    run_simulator,
    shared_engine,
    spec,
    texts,
)
from streamlit.testing.v1 import AppTest

from personalizer.dashboard.history import COLUMNS
from personalizer.dashboard.trends import SERIES_BASELINE, SERIES_LEARNER, SERIES_ORACLE


def test_empty_state_points_to_the_rank_page_and_the_simulator(app: AppTest) -> None:
    app.switch_page(TRENDS).run()
    assert not app.exception
    assert "No rewards yet" in texts(app)
    links = {link.proto.label: link.proto.page for link in app.get("page_link")}
    assert links == {"Rank & reward": "", "Run the simulator": "simulator"}  # "" is the default page
    assert not charts(app)
    # Nothing answered anywhere: the log view (the default without answers) shows the same empty state;
    # the tab's view still holds the one ranked, unanswered visitor.
    assert app.segmented_control(key="trend-view").value == "All events in the log"
    app.segmented_control(key="trend-view").set_value("This tab's history").run()
    assert "No rewards yet" in texts(app)
    assert app.button(key="clear-history").disabled is False


def test_manual_answers_show_up_as_metrics_bars_and_history(app: AppTest) -> None:
    app.button(key="accept-BigHeroPosition").click().run()
    app.button(key="reject-SmallSidebar").click().run()
    app.button(key="next-visitor").click().run()
    app.button(key="accept-SmallSidebar").click().run()
    app.switch_page(TRENDS).run()
    assert not app.exception
    metrics = metric_values(app)
    assert metrics["Visitors answered"] == "2" and metrics["Answers"] == "3"
    assert metrics["Accept rate"] == "66.7%" and metrics["Last 2 visitors"] == "66.7%"
    assert metrics["Hero banner"] == "100.0%" and metrics["Sidebar"] == "50.0%"
    bars, mix, *curves = charts(app)
    bar_spec = spec(bars)
    tooltips = {t["title"] for t in layers(bar_spec)[0]["encoding"]["tooltip"]}
    assert {"Accepted", "Rejected", "Rewarded", "Accept rate"} <= tooltips
    assert len(layers(bar_spec)) == 2  # bars + labels; no oracle tick without simulated visitors
    data = chart_data(bars).set_index("slot")
    assert data.loc["Sidebar", "accepted"] == 1 and data.loc["Sidebar", "rejected"] == 1
    assert spec(mix)["encoding"]["y"]["stack"] == "normalize"
    assert len(curves) == 2
    assert set(chart_data(curves[0])["series"]) == {SERIES_LEARNER}
    table = app.dataframe[0].value
    assert len(table) == 4 and table["reward"].notna().sum() == 3  # the last, unanswered visitor is on screen
    assert app.get("download_button")[0].proto.label == "Download CSV"


def test_a_simulator_run_feeds_history_trends_and_the_oracle_line(app: AppTest) -> None:
    run_simulator(app, 200)
    assert "Simulated **200** visitors" in texts(app)
    rows = history(app)
    simulated = rows[rows["source"] == "simulated"]
    assert len(simulated) == 400 and simulated["reward"].notna().all()
    assert simulated["oracle"].between(0, 1).all()
    assert shared_engine().stats()["learned"] == 200
    app.switch_page(TRENDS).run()
    assert not app.exception
    metrics = metric_values(app)
    assert metrics["Visitors answered"] == "200" and metrics["Answers"] == "400"
    assert metrics["Last 50 visitors"].endswith("%")
    bars, _mix, *curves = charts(app)
    assert len(layers(spec(bars))) == 3  # the oracle's tick joins the bars
    lines = chart_data(curves[0])
    assert set(lines["series"]) == {SERIES_LEARNER, SERIES_ORACLE, SERIES_BASELINE}
    assert lines["value"].between(0, 1).all()
    assert layers(spec(curves[0]))[0]["encoding"]["x"]["title"] == "Answered visitors (rolling window 10)"
    app.segmented_control(key="trend-window").set_value(100).run()  # the rolling-window selector
    assert layers(spec(charts(app)[2]))[0]["encoding"]["x"]["title"] == "Answered visitors (rolling window 100)"


def test_the_simulator_follows_the_sidebar_scenario(app: AppTest) -> None:
    app.selectbox(key="scenario-choice").set_value("seed-drift").run()
    app.switch_page(SIMULATOR).run()
    assert not app.exception
    assert "seed-drift (the sidebar's scenario)" in texts(app)
    app.number_input(key="sim-visitors").set_value(120)
    app.button(key="sim-run").click().run()
    assert not app.exception
    rows = history(app)
    simulated = rows[rows["source"] == "simulated"]
    assert (simulated["scenario"] == "seed-drift").all() and len(simulated) == 240
    assert simulated["note"].notna().sum() == 2  # the drift's first visitor, both slots, marked
    app.switch_page(TRENDS).run()
    app.switch_page(SIMULATOR).run()
    assert app.number_input(key="sim-visitors").value == 120  # kept across pages
    assert app.number_input(key="sim-visitors").min == 10 and app.number_input(key="sim-visitors").max == 10_000


def test_clear_history_empties_this_tab_only(app: AppTest) -> None:
    run_simulator(app, 50)
    other = AppTest.from_file(app._script_path, default_timeout=60).run()  # a second tab
    other.button(key="accept-BigHeroPosition").click().run()
    app.switch_page(TRENDS).run()
    app.button(key="clear-history").click().run()
    assert not app.exception
    assert history(app).empty and "No rewards yet" in texts(app)
    assert app.button(key="clear-history").disabled
    assert len(history(other)) == 2  # the other tab keeps its own
    assert shared_engine().stats()["learned"] == 50  # the model keeps what it learned
    other.switch_page(TRENDS).run()
    assert metric_values(other)["Answers"] == "1"


def test_history_columns_and_csv(app: AppTest) -> None:
    from personalizer.dashboard.history import to_csv

    app.button(key="accept-BigHeroPosition").click().run()
    frame = history(app)
    assert list(frame.columns) == COLUMNS
    csv = to_csv(frame).splitlines()
    assert csv[0].split(",")[:5] == ["visitor", "time", "slot", "action", "reward"]
    assert {"backend", "scenario", "policy", "experiment"} <= set(csv[0].split(","))
    assert len(csv) == 3
