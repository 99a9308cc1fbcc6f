"""The dashboard's plain logic, without Streamlit: text, history, ranking, trends, simulator, scenarios."""

from __future__ import annotations

import json
import math
import threading
from pathlib import Path

import pandas as pd
import pytest

from personalizer.contract import PersonalizerError
from personalizer.dashboard import trends
from personalizer.dashboard.backend import BackendChoice, open_backend, resolve_home
from personalizer.dashboard.history import COLUMNS, History
from personalizer.dashboard.ranking import answer, error_text, exploration_label, rank_visitor
from personalizer.dashboard.scenarios import (
    MAX_UPLOAD_BYTES,
    builtin,
    preference_profiles,
    scenario_from_upload,
)
from personalizer.dashboard.simulator import run_simulation
from personalizer.dashboard.text import (
    currency,
    describe_features,
    flatten_features,
    is_true,
    md,
    md_block,
    percent,
)
from personalizer.engine import LocalPersonalizer

SEED = builtin("seed")
CONTEXT = {"time": "morning", "device": "mobile"}


class Recorder:
    """A backend that answers with each slot's baseline and records every call.

    ``greedy`` stands for the embedded engine's top picks (pass it to ``rank_visitor``);
    the service configuration is not offered unless a test sets one.
    """

    def __init__(self, probability: float | None = 0.9, greedy: bool = True, fail: str | None = None) -> None:
        self.calls: list[tuple] = []
        self.probability = probability
        self.fail = fail
        self.greedy = (lambda request: {s["id"]: "Tennis-Racket-133" for s in request["slots"]}) if greedy else None

    def get_service_configuration(self) -> dict:
        raise PersonalizerError("NotFound", "no configuration here", 404)

    def rank(self, request: dict) -> dict:
        self.calls.append(("rank", request.get("deferActivation", False)))
        slots = [{"id": s["id"], "rewardActionId": s["baselineAction"]} for s in request["slots"]]
        if self.probability is not None:
            for s in slots:
                s["probability"] = self.probability
        return {"eventId": request.get("eventId", "e-1"), "slots": slots}

    def activate(self, event_id: str) -> None:
        self.calls.append(("activate", event_id))
        if self.fail == "activate":
            raise PersonalizerError("InvalidEventIdToActivate", "gone", 404)

    def reward(self, event_id: str, reward: dict) -> None:
        self.calls.append(("reward", event_id, json.dumps(reward, sort_keys=True)))
        if self.fail == "reward":
            raise PersonalizerError("ServiceUnavailable", "busy", 503)


# ---------------------------------------------------------------- text

def test_md_escapes_every_markdown_and_html_character() -> None:
    assert md("<img src=x onerror=alert(1)>") == r"\<img src\=x onerror\=alert\(1\)\>"
    assert md("[x](javascript:alert(1)) **b** :red[r] $x$") == (
        r"\[x\]\(javascript\:alert\(1\)\) \*\*b\*\* \:red\[r\] \$x\$")
    assert md("two\nlines") == "two lines"
    assert md_block("- a\n- b") == "\\- a  \n\\- b"


def test_feature_helpers() -> None:
    features = flatten_features([{"price": 20, "onSale": "true"}, {"dims": {"w": 3, "h": [1, 2]}}])
    assert features == {"price": 20, "onSale": "true", "dims.w": 3, "dims.h": [1, 2]}
    assert describe_features(features, skip=["PRICE"]) == "onSale: true · dims.w: 3 · dims.h: [1, 2]"
    assert currency(1234.5) == "$1,234.50" and currency("19.99") == "$19.99" and currency("n/a") is None
    assert currency(True) is None and currency(float("inf")) is None
    assert is_true("true") and is_true(True) and is_true("Yes") and not is_true("false") and not is_true(None)
    assert percent(0.8234, 1) == "82.3%" and percent(None) == "—" and percent(math.nan) == "—"


# ---------------------------------------------------------------- history

def test_history_rows_rewards_and_cached_frame() -> None:
    h = History()
    assert list(h.frame().columns) == COLUMNS and h.frame().empty
    h.add_ranked("e1", "time=morning", "seed", [
        {"slot": "A", "action": "x", "baseline": "y", "probability": 0.8, "exploration": False},
        {"slot": "B", "action": "y", "baseline": "x", "probability": None},
    ])
    frame = h.frame()
    assert h.frame() is frame  # unchanged history: no rebuild
    assert h.set_reward("e1", "B", 0.0) and not h.set_reward("e1", "C", 1.0)
    frame = h.frame()
    assert frame["reward"].isna().tolist() == [True, False]
    assert frame["visitor"].tolist() == [1, 1] and math.isnan(frame["probability"][1])
    h.clear()
    assert h.frame().empty and not h.set_reward("e1", "A", 1.0)


# ---------------------------------------------------------------- ranking

def test_rank_visitor_defers_and_reads_exploration_from_greedy() -> None:
    backend = Recorder()
    event = rank_visitor(backend, SEED, CONTEXT, greedy=backend.greedy)
    assert backend.calls == [("rank", True)]
    assert [s.slot_id for s in event.slots] == SEED.slot_ids
    hero = event.slot("BigHeroPosition")
    assert hero.action_id == "Red-Polo-Shirt-432" and hero.top_pick == "Tennis-Racket-133" and hero.exploration
    assert "Exploring (probability 90%)" in exploration_label(hero, event)
    assert hero.action_features["category"] == "Clothing" and hero.slot_features["size"] == "large"


def test_a_sampled_tie_is_not_called_exploration() -> None:
    backend = Recorder(probability=0.5)
    backend.get_service_configuration = lambda: {"learningMode": "Online", "explorationPercentage": 0.2}
    event = rank_visitor(backend, SEED, CONTEXT, greedy=backend.greedy)
    hero = event.slot("BigHeroPosition")
    assert hero.tied and hero.exploration is False
    assert exploration_label(hero, event) == "Tied with the model's top pick Tennis-Racket-133 (probability 50%)"
    backend.probability = 0.1
    hero = rank_visitor(backend, SEED, CONTEXT, greedy=backend.greedy).slot("BigHeroPosition")
    assert not hero.tied and hero.exploration is True


def test_without_greedy_exploration_is_a_labelled_guess_and_probability_may_be_missing() -> None:
    event = rank_visitor(Recorder(probability=0.1, greedy=False), SEED, CONTEXT)
    slot = event.slots[0]
    assert slot.exploration is True and exploration_label(slot, event) == "Exploring (probability 10%)"
    # Remote and embedded call the same pick the same: above the exploration share it is the model's pick.
    event = rank_visitor(Recorder(probability=0.33, greedy=False), SEED, CONTEXT)
    event.slots[0].epsilon = 0.2
    assert event.slots[0].exploration is False
    assert exploration_label(event.slots[0], event) == "The model's top pick (probability 33%)"
    event = rank_visitor(Recorder(probability=None, greedy=False), SEED, CONTEXT)
    assert event.slots[0].exploration is None
    assert exploration_label(event.slots[0], event) == "Probability not reported by the backend"


def test_a_response_without_a_slot_is_a_readable_error() -> None:
    class Missing(Recorder):
        def rank(self, request: dict) -> dict:
            return {"eventId": "e", "slots": [{"id": "BigHeroPosition", "rewardActionId": "Red-Polo-Shirt-432"}]}

    with pytest.raises(PersonalizerError) as err:
        rank_visitor(Missing(), SEED, CONTEXT)
    assert error_text(err.value) == ("The service answered something that is not a valid rank answer. "
                                     "(InvalidRankResponse (HTTP 502): the backend's answer has no valid action "
                                     "for slot 'SmallSidebar')")
    assert error_text(ConnectionError("refused")) == "ConnectionError: refused"


def test_answer_activates_once_rewards_one_slot_and_rolls_back_on_error() -> None:
    backend = Recorder()
    event = rank_visitor(backend, SEED, CONTEXT)
    assert answer(backend, event, "BigHeroPosition", 1.0)
    assert answer(backend, event, "BigHeroPosition", 0.0) is False  # already answered
    assert answer(backend, event, "SmallSidebar", 0.0)
    assert [c[0] for c in backend.calls] == ["rank", "activate", "reward", "reward"]
    assert json.loads(backend.calls[2][2]) == {"reward": [{"slotId": "BigHeroPosition", "value": 1.0}]}
    failing = Recorder(fail="reward")
    event = rank_visitor(failing, SEED, CONTEXT)
    with pytest.raises(PersonalizerError):
        answer(failing, event, "SmallSidebar", 1.0)
    assert event.slot("SmallSidebar").decision is None and event.activated  # can be retried
    failing.fail = None
    assert answer(failing, event, "SmallSidebar", 1.0)
    assert [c[0] for c in failing.calls] == ["rank", "activate", "reward", "reward"]


# ---------------------------------------------------------------- trends

def _frame(rewards: list[tuple[str, str, str, float | None]], simulated: bool = False) -> pd.DataFrame:
    h = History()
    for i, (event, slot, action, reward) in enumerate(rewards):
        h.rows.append({c: None for c in COLUMNS} | {
            "visitor": i, "eventId": event, "slot": slot, "action": action, "reward": reward,
            "source": "simulated" if simulated else "manual", "oracle": 0.7 if simulated else None,
            "baselineExpected": 0.3 if simulated else None})
    h.version += 1
    return h.frame()


def test_summary_counts_rates_and_the_recent_window() -> None:
    df = _frame([("e1", "A", "x", 1.0), ("e1", "B", "y", 0.0), ("e2", "A", "x", 0.0), ("e2", "B", "y", None),
                 ("e3", "A", "z", None), ("e3", "B", "x", None)])
    s = trends.summarize(df, recent=1)
    assert (s.events, s.answered_events, s.rewarded, s.accepted) == (3, 2, 3, 1)
    assert s.rate == pytest.approx(1 / 3) and s.recent == 0.0 and s.recent_window == 1
    assert [(x.slot, x.rewarded, x.accepted) for x in s.slots] == [("A", 2, 1), ("B", 1, 0)]
    rates = trends.slot_rates(df).set_index("slot")
    assert rates.loc["A", "rejected"] == 1 and rates.loc["A", "rate"] == 0.5
    mix = trends.action_mix(df)
    assert mix.groupby("slot")["share"].sum().tolist() == pytest.approx([1.0, 1.0])
    assert mix.set_index(["slot", "action"]).loc[("A", "z"), "rewarded"] == 0


def test_learning_curves_are_thinned_and_carry_reference_series_for_simulated_rows() -> None:
    rows = [(f"e{i}", "A", "x", float(i % 2)) for i in range(5000)]
    curves = trends.learning_curves(_frame(rows, simulated=True), window=100)
    per_series = curves.groupby("series").size()
    assert set(per_series.index) == {trends.SERIES_LEARNER, trends.SERIES_ORACLE, trends.SERIES_BASELINE}
    assert per_series.max() <= trends.MAX_POINTS and curves["n"].max() == 5000
    late = curves[(curves["series"] == trends.SERIES_LEARNER) & (curves["n"] > 200)]
    assert late["value"].between(0.49, 0.51).all()
    manual = trends.learning_curves(_frame(rows[:3]), window=50)
    assert set(manual["series"]) == {trends.SERIES_LEARNER} and len(manual) == 3


# ---------------------------------------------------------------- simulator

def test_run_simulation_fills_history_chunk_by_chunk(tmp_path: Path) -> None:
    with LocalPersonalizer(tmp_path / "home") as engine:
        h = History()
        seen: list[int] = []
        result = run_simulation(engine, SEED, 250, h, seed=1, on_progress=lambda d, t, s: seen.append(d))
        assert seen == [100, 200, 250] and result.visitors == 250
        df = h.frame()
        assert len(df) == 500 and df["eventId"].nunique() == 250 and (df["source"] == "simulated").all()
        assert engine.stats()["learned"] == 250
        assert 0 <= result.baseline_rate <= result.oracle_rate <= 1
        run_simulation(engine, SEED, 10, h, seed=1)  # the same seed again: fresh event ids
        assert h.frame()["eventId"].nunique() == 260 and engine.stats()["learned"] == 260
        with pytest.raises(ValueError):
            run_simulation(engine, SEED, 5, h)


def test_an_interrupted_run_keeps_every_finished_chunk(tmp_path: Path) -> None:
    class Interrupted(Exception):
        pass

    def stop_after_two(done: int, total: int, seconds: float) -> None:
        if done >= 200:
            raise Interrupted  # what Streamlit does at a progress update when the person clicks elsewhere

    with LocalPersonalizer(tmp_path / "home") as engine:
        h = History()
        with pytest.raises(Interrupted):
            run_simulation(engine, SEED, 1000, h, on_progress=stop_after_two)
        assert h.frame()["eventId"].nunique() == 200 == engine.stats()["learned"]


def test_two_tabs_simulating_at_once_share_the_engine_and_keep_their_own_history(tmp_path: Path) -> None:
    with LocalPersonalizer(tmp_path / "home") as engine:
        tabs = [History(), History()]
        errors: list[BaseException] = []

        def play(h: History) -> None:
            try:
                run_simulation(engine, SEED, 300, h)
            except BaseException as exc:  # surfaced below
                errors.append(exc)

        threads = [threading.Thread(target=play, args=(h,)) for h in tabs]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        assert [h.frame()["eventId"].nunique() for h in tabs] == [300, 300]
        assert set(tabs[0].frame()["eventId"]).isdisjoint(tabs[1].frame()["eventId"])
        stats = engine.stats()
        assert stats["learned"] == 600 and stats["rewards"] == 1200


def test_a_drifting_profile_switches_at_the_same_visitor_as_one_run() -> None:
    drift = builtin("seed-drift")
    h = History()
    run_simulation(Recorder(), drift, 250, h, seed=3)
    df = h.frame()
    switch = math.ceil(drift.drift_at * 250)
    before = df[df["visitor"] <= switch]
    after = df[df["visitor"] > switch]
    context, slot, action = after.iloc[0][["context", "slot", "action"]]
    ctx = dict(part.split("=") for part in context.split(", "))
    assert after.iloc[0]["expected"] == pytest.approx(drift.accept_probability(ctx, slot, action, progress=1.0))
    context, slot, action = before.iloc[0][["context", "slot", "action"]]
    ctx = dict(part.split("=") for part in context.split(", "))
    assert before.iloc[0]["expected"] == pytest.approx(drift.accept_probability(ctx, slot, action, progress=0.0))


# ---------------------------------------------------------------- scenarios and backend

def test_uploaded_scenarios_are_validated_with_clear_messages() -> None:
    good = json.dumps(SEED.to_dict()).encode()
    assert scenario_from_upload(good).name == "seed"
    with pytest.raises(ValueError, match="at most"):
        scenario_from_upload(b" " * (MAX_UPLOAD_BYTES + 1))
    with pytest.raises(ValueError, match="not UTF-8"):
        scenario_from_upload(b"\xff\xfe{}", "x.json")
    with pytest.raises(ValueError, match=r"x.json is not valid JSON: .* line 1, column 2"):
        scenario_from_upload(b"{,}", "x.json")
    with pytest.raises(ValueError, match="missing required field 'slots'"):
        scenario_from_upload(b'{"name": "n", "context": {}, "actions": [], "preferences": {}}')
    data = SEED.to_dict()
    data["actions"][0]["features"] = []
    with pytest.raises(ValueError, match="not a valid rank request"):
        scenario_from_upload(json.dumps(data).encode())


def test_preference_profiles_share_the_catalog() -> None:
    assert list(preference_profiles(SEED))[:1] == ["seed"]
    assert {"seed-joint", "seed-drift"} <= set(preference_profiles(SEED))
    data = SEED.to_dict()
    data["name"] = "mine"
    data["actions"][0]["features"][0]["price"] = 1
    mine = scenario_from_upload(json.dumps(data).encode())
    assert list(preference_profiles(mine)) == ["mine"]


def test_backend_choice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PERSONALIZER_HOME", str(tmp_path / "env"))
    assert resolve_home() == str((tmp_path / "env").resolve())
    assert resolve_home(tmp_path / "given") == str((tmp_path / "given").resolve())
    monkeypatch.delenv("PERSONALIZER_HOME")
    monkeypatch.chdir(tmp_path)
    assert resolve_home() == str((tmp_path / ".personalizer").resolve())
    assert "key" not in repr(BackendChoice(kind="remote", endpoint="http://127.0.0.1:1", key="secret"))
    with pytest.raises(ValueError, match="unknown backend kind"):
        open_backend(BackendChoice(kind="carrier-pigeon"))


def test_the_default_rolling_window_follows_the_history_length() -> None:
    choices = [10, 25, 50, 100, 250, 500]
    assert trends.default_window(_frame([]), choices) == 10
    rows = [(f"e{i}", "A", "x", 1.0) for i in range(3000)]
    assert trends.default_window(_frame(rows), choices) == 250


# ---------------------------------------------------------------- remote backend settings

def test_remote_settings_come_from_secrets_then_the_environment() -> None:
    from personalizer.dashboard.remote import SOURCE_ENV, SOURCE_SECRETS, key_caption, remote_settings

    env = {"PERSONALIZER_ENDPOINT": "http://env:8000", "PERSONALIZER_KEY": "env-key"}
    assert not remote_settings(None, {}).configured  # zero configuration: nothing remote
    from_env = remote_settings(None, env)
    assert (from_env.endpoint, from_env.key, from_env.key_source) == ("http://env:8000", "env-key", SOURCE_ENV)
    secrets = {"personalizer": {"endpoint": " http://file:9000/ ", "key": "file-key"}}
    both = remote_settings(secrets, env)
    assert (both.endpoint, both.key, both.endpoint_source) == ("http://file:9000/", "file-key", SOURCE_SECRETS)
    mixed = remote_settings({"personalizer": {"endpoint": "http://file:9000"}}, {"PERSONALIZER_KEY": "env-key"})
    assert (mixed.key, mixed.key_source) == ("env-key", SOURCE_ENV)
    assert not remote_settings({"personalizer": "not a table"}, {}).configured
    assert "file-key" not in repr(both) and "env-key" not in repr(from_env)
    assert key_caption(True, SOURCE_SECRETS) == "Key: from .streamlit/secrets.toml · never shown"
    assert key_caption(False, None).startswith("Key: none")


def test_open_backend_remote_needs_a_usable_endpoint() -> None:
    with pytest.raises(PersonalizerError) as missing:
        open_backend(BackendChoice(kind="remote", key="k"))
    assert missing.value.code == "MissingEndpoint"
    with pytest.raises(PersonalizerError) as bad:
        open_backend(BackendChoice(kind="remote", endpoint="ftp://x", key="k"))
    assert bad.value.code == "InvalidEndpoint" and "k" not in bad.value.message.split()


def test_check_connection_reports_each_step_and_the_error_code() -> None:
    from personalizer.dashboard.remote import check_connection

    class Server:
        def __init__(self, health_error=None, config_error=None):
            self.health_error, self.config_error = health_error, config_error

        def health(self):
            if self.health_error:
                raise self.health_error
            return {"status": "ok", "version": "0.1.0"}

        def get_service_configuration(self):
            if self.config_error:
                raise self.config_error
            return {"learningMode": "Online"}

    ok = check_connection(Server(), "http://h")
    assert ok.ok and ok.lines == ("Health: ok (version 0.1.0)", "Key accepted · learning mode Online")
    denied = check_connection(Server(config_error=PersonalizerError("Unauthorized", "bad key", 401)), "http://h")
    assert not denied.ok and denied.code == "Unauthorized" and "HTTP 401" in denied.lines[-1]
    down = check_connection(Server(health_error=PersonalizerError("ServiceUnreachable", "no", 503)), "http://h")
    assert not down.ok and down.code == "ServiceUnreachable" and len(down.lines) == 1


# ---------------------------------------------------------------- lift and offline evaluation helpers

def test_lift_from_a_tabs_history_equals_lift_from_the_engines_log(tmp_path: Path) -> None:
    from personalizer.dashboard.lift import from_events, from_history, sentence

    with LocalPersonalizer(tmp_path / "home") as engine:
        history = History()
        run_simulation(engine, SEED, 300, history, seed=4)
        rank_visitor(engine, SEED, CONTEXT)  # ranked, never answered: pending, in neither
        logged = from_events(engine.events())
    remote = from_history(history.frame())
    assert logged.events == remote.events == 300
    for a, b in zip(logged.lifts, remote.lifts, strict=True):
        assert (a.slot_id, a.position, a.support) == (b.slot_id, b.position, b.support)
        assert a.lift == pytest.approx(b.lift) and a.interval == pytest.approx(b.interval)
    head = logged.headline
    assert head.slot_id == "BigHeroPosition" and head.position == 0 and head.enough_data
    text = sentence(head)
    assert text.startswith("Personalized **") and "vs without personalization" in text and "95 % CI" in text
    assert text.endswith(f"n = {head.events:,}")


def test_history_lift_skips_partly_answered_visitors_and_says_why_when_short() -> None:
    from personalizer.dashboard.lift import from_history, sentence

    history = History()
    slots = [{"slot": "A", "action": "x", "baseline": "x", "probability": 0.8},
             {"slot": "B", "action": "y", "baseline": "z", "probability": 0.5}]
    history.add_ranked("e1", "c", "s", slots)
    history.add_ranked("e2", "c", "s", slots)
    history.set_reward("e1", "A", 1.0)
    history.set_reward("e1", "B", 0.0)
    history.set_reward("e2", "A", 1.0)  # B unanswered: e2 is left out
    report = from_history(history.frame())
    assert (report.events, report.skipped) == (1, 1)
    assert [lift.slot_id for lift in report.lifts] == ["A", "B"]
    assert not report.headline.enough_data
    assert sentence(report.headline) == ("Not enough data yet: needs at least 100 events with "
                                         "rewards \\(has 1\\).")
    assert from_history(History().frame()).lifts == []


def test_custom_policies_time_windows_and_candidates() -> None:
    from datetime import date

    from personalizer.dashboard import offline
    from personalizer.evaluation import PRESET_POLICIES

    text = "# comment\n\nFast: --ccb_explore_adf -l 0.5 -q ::\n--ccb_explore_adf --epsilon 0.05\n  \n-q ::"
    assert offline.parse_custom(text) == [
        {"name": "Fast", "arguments": "--ccb_explore_adf -l 0.5 -q ::"},
        {"name": "Custom 1", "arguments": "--ccb_explore_adf --epsilon 0.05"},
        {"name": "Custom 2", "arguments": "-q ::"},
    ]
    chosen = offline.candidate_policies(["Project default"], "Fast: --ccb_explore_adf")
    assert chosen[0] == {"name": "Project default", "arguments": PRESET_POLICIES["Project default"]}
    with pytest.raises(ValueError, match="at least one"):
        offline.candidate_policies([], "  ")
    with pytest.raises(ValueError, match="At most 10"):
        offline.candidate_policies(list(PRESET_POLICIES), "\n".join(f"-q ::{i}" for i in range(7)))
    covered = (1_800_000_000.0, 1_800_000_500.0)
    now = 1_800_000_600.0
    assert offline.time_window(offline.RANGE_ALL, covered, now) == (covered[0] - 1, now + 1)
    assert offline.time_window(offline.RANGE_HOUR, covered, now) == (now - 3600, now + 1)
    start, end = offline.time_window(offline.RANGE_CUSTOM, covered, now, [date(2027, 1, 15), date(2027, 1, 16)])
    assert end - start == 2 * 86400  # both days, end day included
    assert offline.log_range({"dateRange": None}) is None
    assert offline.log_range({"dateRange": {"from": "2027-01-15T08:00:00.000Z", "to": "2027-01-15T09:00:00Z"}}) \
        == (1_800_000_000.0, 1_800_003_600.0)


# ---------------------------------------------------------------- capabilities

def test_only_the_embedded_engine_offers_the_local_extras(tmp_path: Path) -> None:
    from personalizer.client import PersonalizerClient
    from personalizer.dashboard.capabilities import local_engine, top_picks
    from personalizer.interface import Personalizer

    client = PersonalizerClient("http://127.0.0.1:9", None)
    engine = LocalPersonalizer(tmp_path)
    try:
        assert isinstance(client, Personalizer) and isinstance(engine, Personalizer)
        assert local_engine(client) is None and top_picks(client) is None
        assert local_engine(engine) is engine
        picks = top_picks(engine)
        assert picks is not None and set(picks(SEED.rank_request(CONTEXT))) == set(SEED.slot_ids)
    finally:
        engine.close()
        client.close()
