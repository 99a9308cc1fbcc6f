"""LocalPersonalizer behaviour: the multi-slot contract, joining rewards, learning modes, settings."""

from __future__ import annotations

import random
import re
import sqlite3
import threading
from pathlib import Path

import pytest
from seed_data import ACTIONS, both_rewards, seed_request
from timing import FakeClock

from personalizer.contract import PersonalizerError
from personalizer.engine import DEFAULT_POLICY_ARGUMENTS, LocalPersonalizer

TIMES = ["morning", "afternoon", "evening", "night"]
DEVICES = ["mobile", "tablet", "desktop"]


def _labels(engine: LocalPersonalizer, event_id: str) -> list[float | None] | None:
    event = engine.event(event_id)
    assert event is not None
    return event.labels


def _status(engine: LocalPersonalizer, event_id: str) -> str:
    event = engine.event(event_id)
    assert event is not None
    return event.status


def _page(engine: LocalPersonalizer) -> list[dict[str, str]]:
    """The greedy page for every seed context: how the model would fill the slots."""
    return [engine.greedy(seed_request(t, d)) for t in TIMES for d in DEVICES]


def test_response_shape_and_generated_event_id(engine: LocalPersonalizer) -> None:
    answer = engine.rank(seed_request())
    assert re.fullmatch(r"[0-9a-f]{32}-[A-Za-z0-9]{5}", answer["eventId"])
    assert [s["id"] for s in answer["slots"]] == ["BigHeroPosition", "SmallSidebar"]
    for slot in answer["slots"]:
        assert 0 < slot["probability"] <= 1


def test_each_action_fills_one_slot_and_exclusions_hold(engine: LocalPersonalizer) -> None:
    rng = random.Random(7)
    seen: set[tuple[str, str]] = set()
    for _ in range(600):
        answer = engine.rank(seed_request(rng.choice(TIMES), rng.choice(DEVICES)))
        hero, side = (s["rewardActionId"] for s in answer["slots"])
        assert hero != side
        assert hero != "31-Inch-Monitor-771" and side != "Tennis-Racket-133"
        seen.add((hero, side))
        engine.reward(answer["eventId"], both_rewards(rng.random() < 0.5, rng.random() < 0.5))
    assert len(seen) >= 6  # exploration really varies the page


def test_same_event_id_same_answer_and_nothing_new_logged(engine: LocalPersonalizer) -> None:
    first = engine.rank(seed_request(event_id="retry-1"))
    again = engine.rank(seed_request(event_id="retry-1"))
    assert again == first
    assert len(engine.events()) == 1
    engine.reward("retry-1", both_rewards(1, 0))  # learned: the answer still comes from the log
    assert engine.rank(seed_request(event_id="retry-1")) == first
    with pytest.raises(PersonalizerError) as err:
        engine.rank(seed_request("night", event_id="retry-1"))
    assert err.value.status == 409 and "retry-1" in err.value.message
    assert len(engine.events()) == 1


def test_event_id_seeds_exploration(tmp_path: Path) -> None:
    """Two engines holding the same model rank the same eventId identically."""
    with LocalPersonalizer(tmp_path / "a") as a:
        for i in range(200):
            e = a.rank(seed_request(TIMES[i % 4], DEVICES[i % 3]))["eventId"]
            a.reward(e, both_rewards(i % 2, (i + 1) % 2))
        model = a.export_model()
        b = LocalPersonalizer(tmp_path / "b")
        b.import_model(model)
        answers_a = [a.rank(seed_request(TIMES[i % 4], event_id=f"ev-{i}")) for i in range(40)]
        answers_b = [b.rank(seed_request(TIMES[i % 4], event_id=f"ev-{i}")) for i in range(40)]
        b.close()
    assert answers_a == answers_b
    assert len({tuple(s["rewardActionId"] for s in x["slots"]) for x in answers_a}) > 1


def test_earliest_aggregation_learns_when_every_slot_is_rewarded(engine: LocalPersonalizer) -> None:
    e = engine.rank(seed_request())["eventId"]
    assert engine.reward(e, {"reward": [{"slotId": "SmallSidebar", "value": 0.5}]})["status"] == "pending"
    assert engine.stats()["learned"] == 0
    assert engine.reward(e, {"reward": [{"slotId": "SmallSidebar", "value": -1},
                                        {"slotId": "BigHeroPosition", "value": 1}]})["status"] == "learned"
    assert _labels(engine, e) == [1.0, 0.5]  # earliest value per slot wins
    assert engine.reward(e, {"reward": [{"slotId": "SmallSidebar", "value": 1}]})["status"] == "duplicate"


def test_sum_aggregation_waits_for_the_wait_time(engine: LocalPersonalizer, clock: FakeClock) -> None:
    engine.update_service_configuration({"rewardAggregation": "sum", "rewardWaitTime": "PT1M"})
    e = engine.rank(seed_request())["eventId"]
    engine.reward(e, both_rewards(0.25, 0))
    engine.reward(e, {"reward": [{"slotId": "BigHeroPosition", "value": 0.5}]})
    assert engine.stats()["learned"] == 0
    clock.advance(61)
    assert engine.process_due() == 1
    assert _labels(engine, e) == [0.75, 0.0]


def test_default_reward_after_wait_time(engine: LocalPersonalizer, clock: FakeClock) -> None:
    engine.update_service_configuration({"defaultReward": -0.5, "rewardWaitTime": "PT30S"})
    e = engine.rank(seed_request())["eventId"]
    engine.reward(e, {"reward": [{"slotId": "BigHeroPosition", "value": 1}]})
    clock.advance(29)
    engine.process_due()
    assert _status(engine, e) == "pending"
    clock.advance(2)
    engine.rank(seed_request())  # any call closes what is due
    assert _status(engine, e) == "learned"
    assert _labels(engine, e) == [1.0, -0.5]
    with pytest.raises(PersonalizerError) as err:  # a late reward: logged, answered clearly
        engine.reward(e, {"reward": [{"slotId": "SmallSidebar", "value": 1}]})
    assert err.value.status == 409 and "late" in err.value.message
    assert engine.stats()["rewards"] == 2


def test_deferred_event_is_learned_only_once_activated(engine: LocalPersonalizer, clock: FakeClock) -> None:
    looked_at = engine.rank(seed_request(defer=True))["eventId"]
    answered = engine.rank(seed_request("night", defer=True))["eventId"]
    engine.reward(answered, both_rewards(1, 0))
    assert engine.stats()["learned"] == 0  # rewarded but not active
    assert engine.activate(answered)["status"] == "learned"
    clock.advance(601)
    engine.process_due()
    assert _status(engine, looked_at) == "discarded"
    assert engine.stats()["learned"] == 1 and engine.stats()["discarded"] == 1
    with pytest.raises(PersonalizerError) as err:
        engine.activate(looked_at)
    assert err.value.status == 409
    with pytest.raises(PersonalizerError) as err:
        engine.reward(looked_at, both_rewards(1, 1))
    assert err.value.status == 409 and "never activated" in err.value.message


def test_activation_starts_the_wait(engine: LocalPersonalizer, clock: FakeClock) -> None:
    e = engine.rank(seed_request(defer=True))["eventId"]
    clock.advance(500)
    engine.activate(e)
    engine.reward(e, {"reward": [{"slotId": "BigHeroPosition", "value": 1}]})
    clock.advance(500)
    engine.process_due()
    assert _status(engine, e) == "pending"
    clock.advance(101)
    engine.process_due()
    assert _status(engine, e) == "learned" and _labels(engine, e) == [1.0, 0.0]


def test_apprentice_serves_baselines_and_learns_to_imitate_them(engine: LocalPersonalizer) -> None:
    engine.update_service_configuration({"learningMode": "Apprentice"})
    rng = random.Random(5)
    for i in range(240):
        answer = engine.rank(seed_request(TIMES[i % 4], DEVICES[i % 3], event_id=f"apprentice-{i}"))
        assert [(s["rewardActionId"], s["probability"]) for s in answer["slots"]] == \
            [("Red-Polo-Shirt-432", 1.0), ("XBox-Series X-117", 1.0)]
        engine.reward(answer["eventId"], both_rewards(rng.random() < 0.3, rng.random() < 0.3))
    assert engine.stats()["learned"] == 240
    # Having watched the baselines (and learned that other pages are not them), the learned
    # policy imitates them in every context, the catalog's numeric price notwithstanding.
    baseline = {"BigHeroPosition": "Red-Polo-Shirt-432", "SmallSidebar": "XBox-Series X-117"}
    assert all(page == baseline for page in _page(engine))


def test_apprentice_contrast_pages_are_valid_and_repeatable() -> None:
    from personalizer.engine import apprentice_contrast

    allowed, baselines = [[0, 1, 3], [0, 2, 3]], [0, 3]
    pages = {tuple(apprentice_contrast(allowed, baselines, f"e{i}") or ()) for i in range(50)}
    assert pages == {(1, 0), (1, 2), (3, 0), (3, 2)}  # never a baseline in its own slot, never repeated
    assert apprentice_contrast(allowed, baselines, "e7") == apprentice_contrast(allowed, baselines, "e7")
    assert apprentice_contrast([[0]], [0], "e") is None


def test_logging_only_serves_baselines_and_never_learns(engine: LocalPersonalizer) -> None:
    model = engine.export_model()
    engine.update_service_configuration({"learningMode": "LoggingOnly"})
    e = engine.rank(seed_request())["eventId"]
    engine.reward(e, both_rewards(1, 1))
    assert _status(engine, e) == "logged" and engine.stats()["learned"] == 0
    assert engine.export_model() == model


def test_concurrent_rank_and_reward_lose_nothing(engine: LocalPersonalizer) -> None:
    acknowledged: list[str] = []
    lock = threading.Lock()

    def visitor(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(60):
            e = engine.rank(seed_request(rng.choice(TIMES), rng.choice(DEVICES)))["eventId"]
            engine.reward(e, {"reward": [{"slotId": "BigHeroPosition", "value": rng.random()}]})
            engine.reward(e, {"reward": [{"slotId": "SmallSidebar", "value": rng.random()}]})
            with lock:
                acknowledged.append(e)

    threads = [threading.Thread(target=visitor, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(acknowledged) == 480
    stats = engine.stats()
    assert stats["learned"] == 480 and stats["rewards"] == 960 and stats["pending"] == 0
    assert {e.event_id for e in engine.events()} == set(acknowledged)


def test_configuration_and_policy(engine: LocalPersonalizer) -> None:
    cfg = engine.get_service_configuration()
    assert (cfg["rewardWaitTime"], cfg["defaultReward"], cfg["rewardAggregation"], cfg["explorationPercentage"],
            cfg["learningMode"]) == ("PT10M", 0.0, "earliest", 0.2, "Online")
    engine.update_service_configuration({"explorationPercentage": 0.05})
    assert "--epsilon 0.05" in engine.get_policy()["arguments"]
    for bad in ({"rewardWaitTime": "PT1S"}, {"rewardWaitTime": "ten minutes"}, {"defaultReward": 2},
                {"learningMode": "Offline"}, {"explorationPercentage": 1.5}, {"rewardAggregation": "max"}):
        with pytest.raises(PersonalizerError) as err:
            engine.update_service_configuration(bad)
        assert err.value.status == 400 and err.value.code == "InvalidServiceConfiguration"
    assert engine.get_service_configuration()["explorationPercentage"] == 0.05
    policy = engine.update_policy({"name": "retired", "arguments": "--ccb_explore_adf --epsilon 0.5 -q ::"})
    assert policy == {"name": "retired", "arguments": "--ccb_explore_adf -q :: --epsilon 0.05"}
    assert engine.reset_policy()["arguments"].startswith(DEFAULT_POLICY_ARGUMENTS.split(" --epsilon")[0][:20])


@pytest.mark.parametrize("arguments", [
    "--ccb_explore_adf -i /etc/passwd", "--ccb_explore_adf -f /tmp/model", "--ccb_explore_adf -d data.txt",
    "--ccb_explore_adf --daemon --port 26542", "--ccb_explore_adf --cache_file x", "--cb_explore_adf -q ::",
    "--ccb_explore_adf --cb_type", "--ccb_explore_adf --bit_precision 99", "--ccb_explore_adf 'unclosed",
    "--ccb_explore_adf --readable_model /tmp/r.txt",
])
def test_unsafe_or_broken_policies_are_refused(engine: LocalPersonalizer, arguments: str) -> None:
    before = engine.get_policy()
    with pytest.raises(PersonalizerError) as err:
        engine.update_policy({"name": "bad", "arguments": arguments})
    assert err.value.status == 400 and err.value.code == "InvalidPolicyConfiguration"
    assert engine.get_policy() == before


def test_model_export_import_reset(engine: LocalPersonalizer) -> None:
    for i in range(50):
        e = engine.rank(seed_request(TIMES[i % 4], event_id=f"train-{i}"))["eventId"]
        engine.reward(e, both_rewards(1, 0))
    trained, page = engine.export_model(), _page(engine)
    engine.reset_model()
    fresh = engine.export_model()
    assert len(fresh) < len(trained)  # no learned weights left to save
    engine.import_model(trained)
    assert _page(engine) == page
    for junk in (b"", b"not a model", b"\x00" * 64):
        with pytest.raises(PersonalizerError) as err:
            engine.import_model(junk)
        assert err.value.code == "InvalidModelImportFormat"
    assert _page(engine) == page
    props = engine.model_properties()
    assert props["creationTime"] and props["lastModifiedTime"]


def test_single_slot_rank_lists_every_action(engine: LocalPersonalizer) -> None:
    answer = engine.rank_single({"contextFeatures": [{"time": "night"}], "actions": ACTIONS,
                                 "excludedActions": ["Tennis-Racket-133"], "eventId": "single-1"})
    probs = {r["id"]: r["probability"] for r in answer["ranking"]}
    assert list(probs) == [a["id"] for a in ACTIONS]
    assert probs["Tennis-Racket-133"] == 0 and abs(sum(probs.values()) - 1) < 1e-5
    assert answer["rewardActionId"] in probs and answer["eventId"] == "single-1"
    assert engine.reward_single("single-1", {"value": 1})["status"] == "learned"
    with pytest.raises(PersonalizerError):
        engine.reward_single(engine.rank(seed_request())["eventId"], {"value": 1})  # two slots


def test_restart_replays_to_the_same_model(tmp_path: Path) -> None:
    rng = random.Random(3)
    eng = LocalPersonalizer(tmp_path, checkpoint_every=70)
    for _ in range(200):
        e = eng.rank(seed_request(rng.choice(TIMES), rng.choice(DEVICES)))["eventId"]
        eng.reward(e, both_rewards(rng.random() < 0.3, rng.random() < 0.6))
    pending = eng.rank(seed_request(event_id="open-event"))
    probe = [eng.rank(seed_request(t, d, event_id=f"probe-{t}-{d}")) for t in TIMES for d in DEVICES]
    greedy = _page(eng)
    eng._log.close()  # as if the process died: no final checkpoint
    with LocalPersonalizer(tmp_path) as again:
        assert again.replayed_on_start == 200 - 140  # the tail after the last checkpoint
        assert _page(again) == greedy
        assert [again.rank(seed_request(t, d, event_id=f"probe-{t}-{d}")) for t in TIMES for d in DEVICES] == probe
        assert again.reward("open-event", both_rewards(1, 1))["status"] == "learned"
        assert again.rank(seed_request(event_id="open-event")) == pending


def test_greedy_policy_learns_context_dependent_preferences(tmp_path: Path) -> None:
    """On a small scenario with a fixed seed the learned greedy policy beats random by far."""
    best = {"morning": "Tennis-Racket-133", "afternoon": "Red-Polo-Shirt-432",
            "evening": "XBox-Series X-117", "night": "Red-Polo-Shirt-432"}
    rng = random.Random(11)
    with LocalPersonalizer(tmp_path) as eng:
        for _ in range(1500):
            t = rng.choice(TIMES)
            answer = eng.rank(seed_request(t, rng.choice(DEVICES)))
            hero = answer["slots"][0]["rewardActionId"]
            accepted = rng.random() < (0.8 if hero == best[t] else 0.1)
            eng.reward(answer["eventId"], both_rewards(float(accepted), 0.0))
        hits = sum(eng.greedy(seed_request(t, d))["BigHeroPosition"] == best[t] for t in TIMES for d in DEVICES)
    assert hits >= 11  # of 12 contexts; random would get about a third


def test_one_process_owns_a_data_directory(tmp_path: Path) -> None:
    with LocalPersonalizer(tmp_path):
        with pytest.raises(PersonalizerError) as err:
            LocalPersonalizer(tmp_path)
        assert err.value.status == 503 and "in use" in err.value.message
    LocalPersonalizer(tmp_path).close()  # free again once the owner closed it


def test_catalog_cache_encodes_exactly_like_replay(engine: LocalPersonalizer) -> None:
    """Live ranks reuse a catalog's encoding; replay encodes from scratch: both must agree."""
    from personalizer.vw.encoding import encode_request

    requests = [seed_request(t, d) for t in TIMES for d in DEVICES]
    requests[0]["contextFeatures"].append({"x": 1, "actions": "spoof,\"actions\":"})
    requests[1]["slots"][0]["features"] = []
    for i, req in enumerate(requests * 2):
        answer = engine.rank({**req, "eventId": f"cache-{i}"})
        logged = engine.event(answer["eventId"])
        assert logged is not None
        live = engine._catalogs.encode(logged.request, logged.event_id)
        assert live == encode_request(logged.request, logged.event_id)


def test_a_checkpoint_that_does_not_load_is_rebuilt_from_the_log(tmp_path: Path) -> None:
    with LocalPersonalizer(tmp_path) as eng:
        for i in range(120):
            e = eng.rank(seed_request(TIMES[i % 4], DEVICES[i % 3]))["eventId"]
            eng.reward(e, both_rewards(i % 2, 1))
        page = _page(eng)
    db = sqlite3.connect(tmp_path / "personalizer.sqlite3")
    db.execute("UPDATE checkpoints SET model = ? WHERE reason = 'periodic'", (b"garbage",))
    db.commit()
    db.close()
    with LocalPersonalizer(tmp_path) as again:
        assert again.replayed_on_start == 120 and _page(again) == page


def test_a_failed_start_releases_the_data_directory(tmp_path: Path) -> None:
    with pytest.raises(PersonalizerError):
        LocalPersonalizer(tmp_path, configuration={"rewardWaitTime": "forever"})
    LocalPersonalizer(tmp_path).close()


def test_stats_kept_in_memory_match_the_log(engine: LocalPersonalizer, clock: FakeClock) -> None:
    engine.update_service_configuration({"rewardWaitTime": "PT10S"})
    ids = []
    for i in range(30):
        e = engine.rank(seed_request(TIMES[i % 4], defer=i % 3 == 0))["eventId"]
        ids.append(e)
        if i % 3 == 1:
            engine.reward(e, both_rewards(1, 0))
        elif i % 3 == 2:
            engine.reward(e, {"reward": [{"slotId": "SmallSidebar", "value": 1.0}]})
    engine.update_service_configuration({"learningMode": "LoggingOnly"})
    engine.reward(engine.rank(seed_request())["eventId"], both_rewards(0, 0))
    clock.advance(11)
    engine.process_due()
    with pytest.raises(PersonalizerError):
        engine.reward(ids[2], both_rewards(1, 1))  # late for its hero slot: logged, refused
    stats, truth = engine.stats(), engine._log.counts()
    assert {k: stats[k] for k in ("learned", "logged", "discarded", "rewards")} == \
        {k: truth.get(k, 0) for k in ("learned", "logged", "discarded", "rewards")}
    assert (stats["learned"], stats["logged"], stats["discarded"]) == (20, 1, 10)
    engine.delete_logs()
    assert engine.stats()["learned"] == 0 and engine.stats()["rewards"] == 0
