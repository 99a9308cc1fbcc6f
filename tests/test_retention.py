"""logRetentionDays: exactly the closed events older than the setting go (with their rewards), on both
stores; pending events and learned events a restart would still replay stay; -1 keeps everything."""

from __future__ import annotations

from pathlib import Path

import pytest
from seed_data import seed_request
from timing import FakeClock

from personalizer.engine import LocalPersonalizer

DAY = 86400.0
BOTH = {"reward": [{"slotId": "BigHeroPosition", "value": 1.0}, {"slotId": "SmallSidebar", "value": 0.0}]}


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> str | Path:
    return request.getfixturevalue("pg_url") if request.param == "postgresql" else tmp_path / "data"


def _learned(engine: LocalPersonalizer, n: int) -> list[str]:
    ids = []
    for _ in range(n):
        event = engine.rank(seed_request("morning", "mobile"))["eventId"]
        engine.reward(event, BOTH)
        ids.append(event)
    return ids


def test_exactly_the_events_older_than_the_setting_go(store: str | Path, clock: FakeClock) -> None:
    with LocalPersonalizer(store, clock=clock, configuration={"logRetentionDays": 2}) as engine:
        old = _learned(engine, 5)
        waited = engine.rank(seed_request("night", "tablet"))["eventId"]  # closes at its wait time, default reward
        clock.advance(1.5 * DAY)
        kept = _learned(engine, 3)  # the first rank here closes `waited`
        pending = engine.rank(seed_request("night", "tablet"))["eventId"]
        clock.advance(0.6 * DAY)  # the first six are now 2.1 days old, the next four 0.6
        engine.checkpoint()
        assert engine.event(waited).status == "learned" and engine.event(old[0]).status == "learned"
        assert engine.enforce_retention() == 6
        remaining = {e.event_id for e in engine.events()}
        assert remaining == {*kept, pending} and engine.event(waited) is None and engine.event(old[0]) is None
        assert engine.stats()["rewards"] == 2 * len(kept)
        assert engine.enforce_retention() == 0  # nothing more is due


def test_a_pending_event_stays_whatever_its_age(store: str | Path, clock: FakeClock) -> None:
    with LocalPersonalizer(store, clock=clock, configuration={"logRetentionDays": 0}) as engine:
        event = engine.rank(seed_request("night", "tablet"))
        clock.advance(1.0)
        engine.checkpoint()
        assert engine.enforce_retention() == 0 and engine.event(event["eventId"]).status == "pending"


def test_learned_events_after_the_newest_checkpoint_stay(store: str | Path, clock: FakeClock) -> None:
    with LocalPersonalizer(store, clock=clock, configuration={"logRetentionDays": 1}) as engine:
        engine.checkpoint()
        events = _learned(engine, 4)  # learned after the checkpoint: a restart replays them
        clock.advance(3 * DAY)
        assert engine.enforce_retention() == 0
        engine.checkpoint()
        assert engine.enforce_retention() == 4 and not {e.event_id for e in engine.events()} & set(events)


def test_minus_one_keeps_everything(store: str | Path, clock: FakeClock) -> None:
    with LocalPersonalizer(store, clock=clock, configuration={"logRetentionDays": -1}) as engine:
        events = _learned(engine, 3)
        clock.advance(1000 * DAY)
        engine.checkpoint()
        assert engine.enforce_retention() == 0 and {e.event_id for e in engine.events()} == set(events)
