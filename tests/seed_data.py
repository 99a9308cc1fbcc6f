"""The seed quickstart's catalog and slots, as test data (read from ``personalizer/scenarios/seed.json``)."""

from __future__ import annotations

import copy
import json
import textwrap
from typing import Any

from personalizer.simulation import SCENARIO_DIR

# The packaged seed scenario is the one source of the catalog (the dashboard and quickstart load it too).
_SEED = json.loads((SCENARIO_DIR / "seed.json").read_text(encoding="utf-8"))
ACTIONS: list[dict[str, Any]] = _SEED["actions"]
SLOTS: list[dict[str, Any]] = _SEED["slots"]


def seed_request(time: str = "morning", device: str = "mobile", event_id: str | None = None,
                 defer: bool = False) -> dict[str, Any]:
    """A multi-slot rank request as the seed quickstart built it (a fresh copy each call)."""
    req: dict[str, Any] = {
        "contextFeatures": [{"time": time}, {"device": device}],
        "actions": copy.deepcopy(ACTIONS),
        "slots": copy.deepcopy(SLOTS),
        "deferActivation": defer,
    }
    if event_id is not None:
        req["eventId"] = event_id
    return req


def both_rewards(hero: float, sidebar: float) -> dict[str, Any]:
    """A reward body for both seed slots."""
    return {"reward": [{"slotId": "BigHeroPosition", "value": float(hero)},
                       {"slotId": "SmallSidebar", "value": float(sidebar)}]}


#: A process that ranks and rewards seed visitors forever, printing each acknowledged reward
#: ("ack <eventId> <slotId> <value>"): the SIGKILL durability tests kill it and compare with the log.
#: argv: the store (data directory or postgresql:// URL), the tests directory.
DURABILITY_WORKER = textwrap.dedent("""
    import random, sys
    sys.path.insert(0, sys.argv[2])
    from seed_data import seed_request
    from personalizer.engine import LocalPersonalizer
    engine = LocalPersonalizer(sys.argv[1], checkpoint_every=97)
    rng = random.Random(1)
    times, devices = ["morning", "afternoon", "evening", "night"], ["mobile", "tablet", "desktop"]
    while True:
        answer = engine.rank(seed_request(rng.choice(times), rng.choice(devices)))
        hero, side = rng.random() < 0.4, rng.random() < 0.6
        engine.reward(answer["eventId"], {"reward": [{"slotId": "BigHeroPosition", "value": float(hero)}]})
        print("ack", answer["eventId"], "BigHeroPosition", float(hero), flush=True)
        if rng.random() < 0.8:  # some events keep waiting for their second reward
            engine.reward(answer["eventId"], {"reward": [{"slotId": "SmallSidebar", "value": float(side)}]})
            print("ack", answer["eventId"], "SmallSidebar", float(side), flush=True)
""")
