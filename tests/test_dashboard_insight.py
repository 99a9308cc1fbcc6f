"""AppTest: trends from the event log, the shareable report, "why this action?" and "what drives the choices"."""

from __future__ import annotations

import html.parser
from pathlib import Path

import pytest
from dashboard_fixtures import APP, RANK, TRENDS, chart_data, charts, shared_engine, spec, texts
from streamlit.testing.v1 import AppTest

from personalizer.dashboard import report
from personalizer.dashboard.scenarios import builtin
from personalizer.simulation import simulate

VIEW_TAB = "This tab's history"
VIEW_LOG = "All events in the log"


def _metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def _fresh_tab() -> AppTest:
    """A new browser tab on the same server (the engine and its log are shared; the session is new)."""
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    assert not at.exception, at.exception
    return at


def _fill_log(visitors: int, seed: int = 3) -> None:
    simulate(shared_engine(), builtin("seed"), visitors, seed=seed)


def test_a_fresh_tab_over_a_logged_run_shows_the_logs_trends(studio_home: Path) -> None:
    _fresh_tab()  # the server's first tab starts the engine
    _fill_log(300)  # another tab, an app or a batch job
    at = _fresh_tab()
    at.switch_page(TRENDS).run()
    assert not at.exception
    assert at.segmented_control(key="trend-view").value == VIEW_LOG
    assert "No rewards yet" not in texts(at)
    assert _metrics(at)["Visitors answered"] == "300"
    assert len(charts(at)) == 4  # accept rates, action mix, one curve per slot
    assert "logged for the catalog of scenario seed" in texts(at)
    # A reload (the same session running again) keeps them.
    at.run()
    assert _metrics(at)["Visitors answered"] == "300" and len(charts(at)) == 4


def test_the_switch_between_this_tabs_history_and_the_log(app: AppTest) -> None:
    _fill_log(200)
    app.button(key="accept-BigHeroPosition").click().run()
    app.switch_page(TRENDS).run()
    assert app.segmented_control(key="trend-view").value == VIEW_TAB  # the tab has answers: its own view
    assert _metrics(app)["Visitors answered"] == "1"
    app.segmented_control(key="trend-view").set_value(VIEW_LOG).run()
    assert not app.exception
    # Every rewarded event of the catalog: the simulated 200; the tab's visitor waits for its other slot.
    assert _metrics(app)["Visitors answered"] == "200"
    # The choice survives a visit to another page.
    app.switch_page(RANK).run()
    app.switch_page(TRENDS).run()
    assert app.segmented_control(key="trend-view").value == VIEW_LOG
    # Whole log vs since the last change: a reset starts a new model, and the log view follows it.
    assert app.segmented_control(key="trend-log-span").value == "Since last change"
    shared_engine().reset_model()
    app.run()
    assert "No rewards since the last change" in texts(app)
    app.segmented_control(key="trend-log-span").set_value("Whole log").run()
    assert _metrics(app)["Visitors answered"] == "200"
    rules = [layer for chart in charts(app) for layer in spec(chart).get("layer", [])
             if layer.get("mark", {}).get("type") == "text"]
    assert rules, "the whole log marks where the current model began"


def test_the_report_downloads_as_one_html_file_with_the_charts_specs(app: AppTest) -> None:
    _fill_log(150)
    app.switch_page(TRENDS).run()
    drawn = [spec(chart) for chart in charts(app)]
    make = app.session_state["studio.trend_report"]  # the callable the Download report button serves
    assert app.get("download_button")[-1].proto.label == "Download report"
    document = make()
    parser = html.parser.HTMLParser()
    parser.feed(document)  # well-formed enough for a parser; and it is one file:
    assert document.startswith("<!DOCTYPE html>") and "<title>" in document
    assert "http://" not in document.split("<script>")[0] and 'src="http' not in document
    specs = report.specs(document)
    assert len(specs) == len(drawn) == 4
    for mine, shown in zip(specs, drawn, strict=True):  # the charts on screen, data included
        assert mine.get("layer", [mine])[0]["mark"] == shown.get("layer", [shown])[0]["mark"]
        assert mine["datasets"] and all(len(rows) for rows in mine["datasets"].values())
    assert "Time range:" in document and "Policy:" in document and "Visitors answered" in document
    assert "window.vegaEmbed" in document  # the charts draw offline (the browser test opens it)


WHAT_DRIVES = "pages/what_drives.py"


def test_each_card_says_why_it_got_its_action_or_that_it_explored(app: AppTest) -> None:
    _fill_log(400)  # a model with something to say
    app.button(key="next-visitor").click().run()
    assert not app.exception
    event = app.session_state["studio.event"]
    whys = app.session_state["studio.why"]
    assert whys[0] == event.event_id and set(whys[1]) == {s.slot_id for s in event.slots}
    shown = texts(app)
    assert shown.count("WHY THIS ACTION?") == len(event.slots)
    for slot in event.slots:
        why = whys[1][slot.slot_id]
        if why.explored:
            assert "Shown to keep learning" in shown
        else:
            assert why.lines, why.note
            for line in why.lines:  # "Evening × Electronics: +0.31" with display names
                words, _, number = line.rpartition(": ")
                assert words and float(number) == float(number)
                assert line in shown
            assert "_id" not in " ".join(why.lines) and "=" not in " ".join(why.lines)
    # Asked once per visitor: an Accept rerun keeps the same explanation object.
    before = app.session_state["studio.why"]
    app.button(key=f"accept-{event.slots[0].slot_id}").click().run()
    assert app.session_state["studio.why"] is before


def test_what_drives_the_choices_runs_a_report_with_a_chart_and_advice(app: AppTest) -> None:
    _fill_log(600)
    app.switch_page(WHAT_DRIVES).run()
    assert not app.exception
    app.selectbox(key="why-range").set_value("All logged events")
    app.button(key="why-run").click().run()
    assert not app.exception, app.exception
    job = app.session_state["studio.importance_job"]
    assert job.startswith("dashboard-")
    chart = next(c for c in charts(app))
    data = spec(chart)
    assert data["encoding"]["x"]["field"] == "score" and data["encoding"]["color"]["field"] == "kind"
    rows = chart_data(chart).to_dict("records")
    kinds = {r["kind"] for r in rows}
    assert {"Visitor context", "Action"} <= kinds
    # The engine's scores, as served (normalized, most important first): the chart draws them all.
    served = app.session_state["studio.importance_job"]
    assert abs(sum(r["score"] for r in rows) - 1.0) < 1e-6
    top = max(rows, key=lambda r: r["score"])
    shown = texts(app)
    assert "What it means" in shown and f"`{top['name']}`** matters most" in shown
    assert served == job
    # The report stays listed and shown after leaving and coming back.
    app.switch_page(TRENDS).run()
    app.switch_page(WHAT_DRIVES).run()
    assert app.selectbox(key="why-report").value == job and charts(app)


# ---------------------------------------------------------------- the log's rows, without Streamlit

def test_log_rows_are_read_incrementally_and_follow_rewards_resets_and_deleted_logs(tmp_path: Path) -> None:
    from personalizer.dashboard.log_trends import LogRows, in_scope, parse_time, time_markers
    from personalizer.engine import LocalPersonalizer

    scenario = builtin("seed")
    catalog = (frozenset(scenario.action_ids), tuple(scenario.slot_ids))
    with LocalPersonalizer(tmp_path / "home") as engine:
        simulate(engine, scenario, 50, seed=1)
        rows = LogRows(engine)
        v1 = rows.refresh()
        frame = rows.frame()
        assert len(frame) == 100 and frame["reward"].notna().all()
        assert rows.refresh() == v1 and rows.frame() is frame  # nothing new: nothing read or rebuilt
        # A visitor waiting for its rewards is a row without one; its reward arrives on a later read.
        event = engine.rank(scenario.rank_request({"time": "morning", "device": "mobile"}))
        rows.refresh()
        waiting = rows.frame()
        assert len(waiting) == 102 and waiting["reward"].isna().sum() == 2
        engine.reward(event["eventId"], {"reward": [{"slotId": s, "value": 1.0} for s in scenario.slot_ids]})
        rows.refresh()
        done = rows.frame()
        assert len(done) == 102 and done["reward"].notna().all() and done["reward"].iloc[-2:].tolist() == [1.0, 1.0]
        assert done["visitor"].iloc[-1] == 51 and done["eventId"].is_unique is False  # two slots per event
        # Scope: this catalog, since the model's last change.
        number = rows.catalog_number(catalog)
        assert len(in_scope(done, number)) == 102 and in_scope(done, None).empty
        engine.reset_model()
        since = parse_time(engine.model_properties()["creationTime"])
        assert in_scope(done, number, since).empty
        simulate(engine, scenario, 10, seed=2)
        rows.refresh()
        assert len(in_scope(rows.frame(), number, since)) == 20
        # A rule where the model began, on each slot's curve at the first event after it.
        marks = time_markers(in_scope(rows.frame(), number), [(since, "Current model began")])
        assert sorted(marks["n"].tolist()) == [52, 52] and set(marks["label"]) == {"Current model began"}
        # Deleted logs: read again from the start.
        engine.delete_logs()
        rows.refresh()
        assert rows.frame().empty


def test_a_first_read_of_a_large_log_goes_in_chunks_with_progress(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from personalizer.dashboard import log_trends
    from personalizer.engine import LocalPersonalizer

    with LocalPersonalizer(tmp_path / "home") as engine:
        simulate(engine, builtin("seed"), 120, seed=9)
        whole = log_trends.LogRows(engine)
        whole.refresh()
        monkeypatch.setattr(log_trends, "READ_CHUNK", 25)  # 120 events: several chunks, each its own read
        chunked = log_trends.LogRows(engine)
        assert chunked.cold
        shares: list[float] = []
        chunked.refresh(shares.append)
        assert not chunked.cold and len(shares) >= 2 and shares == sorted(shares) and shares[-1] == 1.0
        a, b = whole.frame(), chunked.frame()
        assert len(a) == len(b) == 240
        assert a["eventId"].tolist() == b["eventId"].tolist() and a["reward"].tolist() == b["reward"].tolist()


def test_policy_changes_become_marks_on_the_log_curves(tmp_path: Path) -> None:
    from personalizer.dashboard import log_trends
    from personalizer.engine import RETIRED_POLICY_ARGUMENTS, LocalPersonalizer

    with LocalPersonalizer(tmp_path / "data") as engine:
        assert log_trends.policy_change_times(engine) == []
        engine.update_policy({"name": "Retired service default", "arguments": RETIRED_POLICY_ARGUMENTS})
        engine.reset_policy()
        marks = log_trends.policy_change_times(engine)
    assert len(marks) == 2 and marks[0][0] <= marks[1][0]  # oldest first
    assert "Retired service default" in marks[0][1]
