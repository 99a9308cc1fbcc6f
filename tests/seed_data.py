"""The seed quickstart's catalog and slots, as test data (read from ``personalizer/scenarios/seed.json``)."""

from __future__ import annotations

import copy
import json
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
