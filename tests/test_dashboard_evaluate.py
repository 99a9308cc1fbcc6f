"""AppTest: the Evaluate page (offline evaluation of the engine's log) and the trends page's lift over baseline."""

from __future__ import annotations

import pytest
from dashboard_fixtures import (
    EVALUATE,
    TRENDS,
    chart_data,
    charts,
    run_evaluation,
    run_simulator,
    shared_engine,
    spec,
    texts,
)
from streamlit.testing.v1 import AppTest

from personalizer.dashboard.backend import evaluations_for
from personalizer.evaluation import PRESET_POLICIES

REFERENCES = ["Online", "Baseline", "Random"]


def test_too_few_logged_events_point_to_the_simulator(app: AppTest) -> None:
    app.switch_page(EVALUATE).run()
    assert not app.exception
    assert "Not enough logged events yet" in texts(app) and "the log has 0" in texts(app)
    links = {link.proto.label: link.proto.page for link in app.get("page_link")}
    assert links["Run the simulator"] == "simulator"
    assert not app.get("button") or "eval-run" not in [b.key for b in app.button]


def test_evaluate_after_a_simulator_run_table_chart_sentence_and_apply(app: AppTest) -> None:
    # Log with uniform exploration: the online policy earns what a random page earns, so a learning
    # candidate is clearly better (and the estimates are at their most reliable).
    app.slider(key="engine-exploration").set_value(100).run()
    run_simulator(app, 200)
    app.switch_page(EVALUATE).run()
    assert not app.exception
    assert app.selectbox(key="eval-range").value == "Since last change"
    assert app.get("button_group")[0].value == list(PRESET_POLICIES)  # every preset chosen by default
    run_evaluation(app)
    shown = texts(app)
    assert "200 events" in shown
    # The headline card (here online explores uniformly, so its verdict may well be "too early").
    assert "vs without personalization" in shown and "n = 200" in shown
    table = app.dataframe[0].value
    assert table["policy"].tolist() == REFERENCES + list(PRESET_POLICIES)
    assert table["estimate"].between(0, 100).all() and table["best"].sum() == 1
    assert table.set_index("policy").loc["Online", "vsOnline"] == pytest.approx(0.0)
    # The details: every interval the evaluation computed, the headline being Cressie-Read.
    details = app.dataframe[1].value.set_index("policy")
    assert list(details.index) == list(table["policy"])
    assert {"headline", "gaussian", "bernstein", "dr", "drInterval", "effective"} <= set(details.columns)
    assert details.loc["Online", "headline"] == table.set_index("policy").loc["Online", "interval"].rstrip("%")
    assert (details["effective"] > 0).all()
    chart = charts(app)[0]
    layers = spec(chart)["layer"]
    assert {layer["mark"]["type"] for layer in layers} == {"rule", "point", "text"}
    assert spec(chart)["height"] == 120 + 36 * (len(REFERENCES) + len(PRESET_POLICIES))
    data = chart_data(chart).dropna(subset=["policy"])
    assert set(data["policy"]) == set(REFERENCES) | set(PRESET_POLICIES)
    assert (data["low"] <= data["estimate"]).all() and (data["estimate"] <= data["high"]).all()
    # The best row says so in its name (the value label beside it is only a number: room on a phone).
    best_row = table.loc[table["best"], "policy"].item()
    assert sorted(data.loc[data["row"] != data["policy"], "row"]) == [f"{best_row} · best"]
    assert not data["label"].str.contains("best").any()
    # Later slots: their own numbers, with the caveat.
    app.segmented_control(key="eval-slot").set_value("SmallSidebar").run()
    assert "Slot SmallSidebar is filled after BigHeroPosition" in texts(app)
    app.segmented_control(key="eval-slot").set_value("BigHeroPosition").run()
    # Apply the best candidate with one click.
    best = table.loc[table["best"], "policy"].item()
    assert best not in REFERENCES
    before = shared_engine().get_policy()
    app.button(key="eval-apply").click().run()
    assert not app.exception
    after = shared_engine().get_policy()
    assert after != before and after["name"] == best
    epsilon = PRESET_POLICIES[best].split("--epsilon ")[1].split()[0]
    assert f"--epsilon {epsilon}" in after["arguments"]
    assert f"Applied {best}" in texts(app)
    assert app.slider(key="engine-exploration").value < 100  # the policy's own --epsilon came along


def test_bad_custom_arguments_are_refused_with_their_code(app: AppTest) -> None:
    run_simulator(app, 60)
    app.switch_page(EVALUATE).run()
    app.get("button_group")[0].set_value([]).run()
    app.text_area(key="eval-custom").input("Broken: --ccb_explore_adf --cb_type nonsense").run()
    app.button(key="eval-run").click().run()
    assert not app.exception
    message = " ".join(e.value for e in app.error)
    assert "The evaluation was refused" in message and "InvalidPolicyConfiguration" in message
    app.text_area(key="eval-custom").input("").run()
    app.button(key="eval-run").click().run()
    assert "Choose at least one candidate policy" in " ".join(e.value for e in app.error)


def test_trends_show_lift_over_baseline_only_with_enough_events(app: AppTest) -> None:
    app.button(key="accept-BigHeroPosition").click().run()
    app.button(key="reject-SmallSidebar").click().run()  # every slot answered: learned, in the log
    app.switch_page(TRENDS).run()
    assert not app.exception
    shown = texts(app)
    assert "Lift over baseline" in shown
    assert "Too early" in shown and "Not enough data yet: needs at least 100 events with rewards (has 1)" in shown
    run_simulator(app, 200)
    app.switch_page(TRENDS).run()
    shown = texts(app)
    assert "From 201 visitors of this view with every slot answered" in shown
    assert "vs without personalization" in shown and "n = 201" in shown
    metrics = {m.label: m for m in app.metric}
    head = metrics["Hero banner · first slot, headline"]
    assert head.value.endswith(" pts") and "95% interval" in head.proto.delta
    assert "Sidebar · later slot" in metrics
    assert "The first slot is the unbiased headline" in shown


def test_a_running_evaluation_shows_progress_and_can_be_cancelled(app: AppTest,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    from personalizer import evaluation

    def slow(data, policies, *, progress=None, cancel=None, **_kwargs):  # a replay that runs until cancelled
        deadline = time.monotonic() + 30
        while not cancel() and time.monotonic() < deadline:
            progress(1, 4)
            time.sleep(0.01)
        raise evaluation.EvaluationCancelled

    monkeypatch.setattr(evaluation, "evaluate", slow)
    run_simulator(app, 60)
    app.switch_page(EVALUATE).run()
    app.button(key="eval-run").click().run()
    assert not app.exception
    assert app.progress and "Evaluating" in app.progress[0].proto.text
    manager = evaluations_for(shared_engine())
    assert manager.details()[0]["status"] == "Running"
    app.button(key="eval-cancel").click().run()
    assert not app.exception
    assert manager.details() == [] and not app.progress and not app.dataframe
