"""AppTest: the rank & reward page and the shared sidebar."""

from __future__ import annotations

import json
import re

import pytest
from dashboard_fixtures import APP, SLOTS, event_id, history, raw_texts, shared_engine, texts, unescape
from streamlit.testing.v1 import AppTest
from streamlit.testing.v1.errors import AppTestError

from personalizer.contract import PersonalizerError
from personalizer.dashboard.backend import embedded_engine
from personalizer.dashboard.ranking import answer
from personalizer.engine import LocalPersonalizer
from personalizer.simulation import load_scenario


def _event(eid: str):
    return next(e for e in shared_engine().events() if e.event_id == eid)


def test_first_load_ranks_one_deferred_visitor_with_a_card_per_slot(app: AppTest) -> None:
    assert [s.key for s in app.selectbox][:2] == ["ctx-time", "ctx-device"]
    assert app.selectbox(key="ctx-time").options == ["Morning", "Afternoon", "Evening", "Night"]  # display names
    assert app.selectbox(key="ctx-device").options == ["Phone", "Tablet", "Desktop"]
    keys = [b.key for b in app.button]
    assert keys.index("accept-BigHeroPosition") < keys.index("accept-SmallSidebar")  # slot order
    for slot in SLOTS:
        assert not app.button(key=f"accept-{slot}").disabled
        assert not app.button(key=f"reject-{slot}").disabled
    shown = texts(app)
    assert "Hero banner" in shown and "size: large" in shown  # the slot's display name
    assert "Without personalization" in shown and "probability" in shown
    assert "$" in shown  # a price as currency
    rows = history(app)
    assert rows["slot"].tolist() == SLOTS
    assert rows["reward"].isna().all() and (rows["source"] == "manual").all()
    stored = _event(event_id(app))
    assert stored.deferred and stored.activated is None  # only looked at: never learned
    assert app.title[0].value == "Rank & reward"


def test_changing_the_context_ranks_a_new_visitor_for_it(app: AppTest) -> None:
    first = event_id(app)
    app.selectbox(key="ctx-time").set_value("evening").run()
    assert not app.exception
    second = event_id(app)
    assert second != first
    assert app.session_state["studio.event"].context == {"time": "evening", "device": "mobile"}
    assert history(app)["eventId"].tolist() == [second, second]  # the unanswered first visitor left no trail
    assert "Time of day: Evening · Device: Phone" in texts(app)
    app.run()  # a plain rerun keeps the visitor
    assert event_id(app) == second


def test_next_visitor_ranks_a_new_event_in_the_same_context(app: AppTest) -> None:
    first = event_id(app)
    app.button(key="next-visitor").click().run()
    assert event_id(app) != first
    assert app.session_state["studio.event"].context == {"time": "morning", "device": "mobile"}
    assert history(app)["eventId"].nunique() == 1  # the unanswered one is dropped
    app.button(key="accept-BigHeroPosition").click().run()
    app.button(key="next-visitor").click().run()
    assert history(app)["eventId"].nunique() == 2  # an answered one stays


def test_accept_and_reject_send_one_reward_per_slot_and_lock_the_card(app: AppTest) -> None:
    eid = event_id(app)
    app.button(key="accept-BigHeroPosition").click().run()
    assert not app.exception
    assert app.button(key="accept-BigHeroPosition").disabled
    assert app.button(key="reject-BigHeroPosition").disabled
    assert not app.button(key="accept-SmallSidebar").disabled
    assert any("Accepted" in s.value for s in app.success)
    stored = _event(eid)
    assert stored.activated is not None  # the first answer activates the event
    assert shared_engine().stats()["rewards"] == 1
    app.button(key="reject-SmallSidebar").click().run()
    assert any("Rejected" in i.value for i in app.info)
    rows = history(app).set_index("slot")
    assert rows.loc["BigHeroPosition", "reward"] == 1.0
    assert rows.loc["SmallSidebar", "reward"] == 0.0
    stats = shared_engine().stats()
    assert stats["rewards"] == 2 and stats["learned"] == 1  # both slots answered: learned at once
    assert _event(eid).labels == [1.0, 0.0]


def test_an_answered_slot_takes_no_second_answer(app: AppTest) -> None:
    app.button(key="accept-BigHeroPosition").click().run()
    with pytest.raises(AppTestError):  # disabled: a browser user cannot click it either
        app.button(key="reject-BigHeroPosition").click()
    # A second click that reaches the server before the disabled card was drawn runs the same
    # callback again: the slot is already claimed, so nothing more is sent.
    event = app.session_state["studio.event"]
    assert answer(shared_engine(), event, "BigHeroPosition", 0.0) is False
    assert shared_engine().stats()["rewards"] == 1
    assert history(app).set_index("slot").loc["BigHeroPosition", "reward"] == 1.0


def test_a_refused_reward_shows_the_error_code_and_can_be_retried(app: AppTest,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(self, event_id, reward):
        raise PersonalizerError("ServiceUnavailable", "the engine is busy <b>now</b>", 503)

    monkeypatch.setattr(LocalPersonalizer, "reward", refuse)
    app.button(key="accept-SmallSidebar").click().run()
    assert not app.exception
    message = " ".join(e.value for e in app.error)
    assert "ServiceUnavailable" in message and "503" in message and "\\<b\\>now" in message
    assert not app.button(key="accept-SmallSidebar").disabled  # rolled back: try again
    assert history(app)["reward"].isna().all()
    monkeypatch.undo()
    app.button(key="accept-SmallSidebar").click().run()
    assert app.button(key="accept-SmallSidebar").disabled
    assert shared_engine().stats()["rewards"] == 1
    assert not app.error


def test_a_failed_rank_is_shown_and_the_page_keeps_working(app: AppTest, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(self, request):
        raise PersonalizerError("InternalServerError", "model file unreadable", 500)

    monkeypatch.setattr(LocalPersonalizer, "rank", broken)
    app.selectbox(key="ctx-device").set_value("desktop").run()
    assert not app.exception
    assert "InternalServerError" in app.error[0].value
    assert app.selectbox(key="ctx-device").value == "desktop"
    assert not [b for b in app.button if b.key.startswith("accept-")]
    monkeypatch.undo()
    app.button(key="next-visitor").click().run()
    assert not app.error
    assert app.session_state["studio.event"].context["device"] == "desktop"
    assert app.button(key="accept-BigHeroPosition")


def test_the_context_survives_a_visit_to_another_page(app: AppTest) -> None:
    app.selectbox(key="ctx-time").set_value("night").run()
    eid = event_id(app)
    app.switch_page("pages/reward_trends.py").run()
    app.switch_page("pages/rank_and_reward.py").run()
    assert app.selectbox(key="ctx-time").value == "night"
    assert event_id(app) == eid  # same visitor: nothing re-ranked


def test_sidebar_settings_change_the_engine(app: AppTest) -> None:
    app.slider(key="engine-exploration").set_value(50).run()
    assert shared_engine().get_service_configuration()["explorationPercentage"] == pytest.approx(0.5)
    app.selectbox(key="engine-learning-mode").set_value("Apprentice").run()
    assert shared_engine().get_service_configuration()["learningMode"] == "Apprentice"
    app.button(key="next-visitor").click().run()
    event = app.session_state["studio.event"]
    assert [s.action_id for s in event.slots] == [s.baseline_id for s in event.slots]
    assert "Baseline served" in texts(app)
    assert "events** learned" in " ".join(m.value for m in app.sidebar.markdown)


def test_reset_model_needs_a_confirmation(app: AppTest) -> None:
    before = shared_engine().model_properties()["creationTime"]
    app.button(key="reset-model").click().run()
    assert app.button(key="reset-confirm") and app.button(key="reset-cancel")
    app.button(key="reset-cancel").click().run()
    assert shared_engine().model_properties()["creationTime"] == before
    app.button(key="reset-model").click().run()
    app.button(key="reset-confirm").click().run()
    assert not app.exception
    assert any("Model reset" in s.value for s in app.sidebar.success)
    checkpoints = shared_engine()._log.latest_checkpoint()
    assert checkpoints is not None and checkpoints.reason == "reset"


def _upload(app: AppTest, data: bytes, name: str = "mine.json") -> AppTest:
    app.selectbox(key="scenario-choice").set_value("__upload__").run()
    app.file_uploader(key="scenario-upload").set_value((name, data, "application/json")).run()
    assert not app.exception
    return app


def test_an_invalid_scenario_upload_names_the_problem(app: AppTest) -> None:
    _upload(app, b'{"name": "broken", "actions": [', "broken.json")
    message = unescape(app.main.error[0].value)  # in the main area, not below the sidebar's fold
    assert "broken.json is not valid JSON" in message and "line 1, column 32" in message
    assert "choose a built-in scenario" in message
    bad = load_scenario("seed").to_dict()
    bad["slots"][0]["baselineAction"] = "Nope-1"
    _upload(app, json.dumps(bad).encode(), "bad.json")
    message = unescape(app.main.error[0].value)
    assert "baselineAction 'Nope-1' is not one of the actions" in message


def test_ids_and_features_from_an_uploaded_scenario_render_as_text(app: AppTest) -> None:
    evil = "<img src=x onerror=alert(1)>"
    data = load_scenario("seed").to_dict()
    data["name"] = "evil [x](javascript:alert(1))"
    old = data["actions"][0]["id"]
    data["actions"][0]["id"] = evil
    data["actions"][0]["features"][0]["category"] = "**bold** :red[red]"
    for slot in data["slots"]:
        slot["excludedActions"] = [evil if a == old else a for a in slot["excludedActions"]]
        if slot["baselineAction"] == old:
            slot["baselineAction"] = evil
    for profile in (data["preferences"], (data.get("drift") or {}).get("preferences")):
        if profile:
            text = json.dumps(profile).replace(json.dumps(old), json.dumps(evil))
            profile.clear()
            profile.update(json.loads(text))
    data["context"] = {"<script>alert(2)</script>": ["a<b", "c"], "device": ["mobile"]}
    data["preferences"] = {"type": "additive", "base": {a["id"]: 0.3 for a in data["actions"]}}
    data.pop("drift", None)
    _upload(app, json.dumps(data).encode())
    assert not app.sidebar.error
    app.button(key="next-visitor").click().run()
    assert not app.exception
    assert app.selectbox(key="ctx-<script>alert(2)</script>").options == ["a<b", "c"]
    assert app.selectbox(key="ctx-<script>alert(2)</script>").label == r"\<script\>alert\(2\)\<\/script\>"
    everything = raw_texts(app)
    assert not re.search(r"(?<!\\)[<>]", everything)  # every angle bracket is escaped: no HTML
    assert "](javascript" not in everything and r"\[x\]\(javascript\:alert\(1\)\)" in everything
    if any(s.baseline_id == evil or s.action_id == evil for s in app.session_state["studio.event"].slots):
        assert "\\<img src\\=x onerror\\=alert\\(1\\)\\>" in everything
    for element in app.markdown:
        assert not element.proto.allow_html


def test_a_page_streamlit_runs_on_its_own_reruns_inside_the_app(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    # AppTest, like a fresh server's first run of a deep link, runs pages/<page>.py alone
    # (pages-directory mode); the page must run through app.py, with no Streamlit internals patched.
    monkeypatch.setenv("PERSONALIZER_HOME", str(tmp_path / "home"))
    try:
        at = AppTest.from_file(APP, default_timeout=60).run()
        at.switch_page("pages/reward_trends.py").run()
        assert not at.exception
        assert [h.value for h in at.sidebar.subheader] == ["Backend", "Scenario"]
        assert at.title[0].value == "Reward trends"
        assert len(at.title) == 1  # drawn once, by the run app.py started
        at.run()  # a rerun (a reload) lands on the same page, again inside the app
        assert at.title[0].value == "Reward trends" and len(at.sidebar.subheader) == 2
    finally:
        embedded_engine.clear()


def test_apprentice_mode_shows_how_closely_the_model_imitates_the_baselines(app: AppTest) -> None:
    app.selectbox(key="engine-learning-mode").set_value("Apprentice").run()
    assert "no rewarded Apprentice events yet" in " ".join(c.value for c in app.sidebar.caption)
    engine = shared_engine()
    scenario = load_scenario("seed")
    for i in range(60):
        context = scenario.contexts[i % len(scenario.contexts)]
        ranked = engine.rank(scenario.rank_request(context, event_id=f"apprentice-{i}"))
        engine.reward(ranked["eventId"], {"reward": [{"slotId": s["id"], "value": 1.0} for s in ranked["slots"]]})
    app.run()
    line = next(unescape(c.value) for c in app.sidebar.caption if "Apprentice" in c.value)
    assert "matches the baseline in 100% of the last 60 events — ready to go online" in line
