"""The seed quickstart's catalog and slots, as test data."""

from __future__ import annotations

import copy
from typing import Any

ACTIONS: list[dict[str, Any]] = [
    {"id": "Red-Polo-Shirt-432", "features": [{"onSale": "true", "price": 20, "category": "Clothing"}]},
    {"id": "Tennis-Racket-133", "features": [{"onSale": "false", "price": 70, "category": "Sports"}]},
    {"id": "31-Inch-Monitor-771", "features": [{"onSale": "true", "price": 200, "category": "Electronics"}]},
    {"id": "XBox-Series X-117", "features": [{"onSale": "false", "price": 499, "category": "Electronics"}]},
]
SLOTS: list[dict[str, Any]] = [
    {"id": "BigHeroPosition", "features": [{"size": "large", "position": "left"}],
     "excludedActions": ["31-Inch-Monitor-771"], "baselineAction": "Red-Polo-Shirt-432"},
    {"id": "SmallSidebar", "features": [{"size": "small", "position": "right"}],
     "excludedActions": ["Tennis-Racket-133"], "baselineAction": "XBox-Series X-117"},
]


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
