"""Apprentice metrics: how often the model agrees with the baseline, and what that earns."""

from __future__ import annotations

import json
import math
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

import numpy as np

from .constants import _MIN_PROBABILITY, APPRENTICE_READY_MATCH_RATE
from .estimators import _finite, estimate
from .logged import LoggedEvent, recent_events

# ================================================================ apprentice metrics

class _GreedyEngine(Protocol):
    def greedy(self, request: dict[str, Any]) -> dict[str, str]: ...

    def events(self, start: float | None = None, end: float | None = None) -> Sequence[LoggedEvent]: ...

    def log_properties(self) -> dict[str, Any]: ...


def apprentice_metrics(
    engine: _GreedyEngine,
    events: Iterable[LoggedEvent] | None = None,
    *,
    recent: int = 500,
    modes: Sequence[str] | None = ("Apprentice",),
) -> dict[str, Any]:
    """How often the learned policy's top choice matches the baseline on recent events, and its reward.

    ``events`` default: the engine's log. Only the newest ``recent`` rewarded events of
    ``modes`` count (None: every mode). ``matchRate`` is per slot and overall;
    ``reward`` is the IPS estimate of the greedy policy (``1[greedy == shown] / p * r``):
    with an Apprentice log (baseline shown with probability 1) it is the reward earned
    on events where the model agreed, a lower bound when rewards are >= 0; ``rewardSnips``
    assumes disagreements would have earned the same as agreements. ``ready`` is
    ``matchRate >= APPRENTICE_READY_MATCH_RATE``.
    """
    def keep(ev: LoggedEvent) -> bool:
        return (ev.labels is not None and ev.status not in ("pending", "discarded")
                and (modes is None or ev.mode in modes))

    if events is None:
        window: Sequence[LoggedEvent] = recent_events(engine, max(1, recent), keep)
    else:
        window = deque(filter(keep, events), maxlen=max(1, recent))
    per_slot: dict[str, list[int]] = {}
    matches = total = 0
    w_list: list[float] = []
    r_list: list[float] = []
    cache: dict[str, dict[str, str]] = {}
    for ev in window:
        key = getattr(ev, "request_hash", None) or json.dumps(ev.request, sort_keys=True)
        picks = cache.get(key)
        if picks is None:
            picks = cache[key] = engine.greedy(ev.request)
        for k, (slot_req, slot_resp) in enumerate(zip(ev.request["slots"], ev.response["slots"], strict=True)):
            sid = slot_req["id"]
            hit = picks.get(sid) == slot_req["baselineAction"]
            counts = per_slot.setdefault(sid, [0, 0])
            counts[0] += hit
            counts[1] += 1
            matches += hit
            total += 1
            p = max(float(slot_resp.get("probability") or 1.0), _MIN_PROBABILITY)
            w_list.append((picks.get(sid) == slot_resp["rewardActionId"]) / p)
            labels = ev.labels or []
            r_list.append(float(labels[k]) if k < len(labels) and labels[k] is not None else 0.0)
    est = estimate(w_list, r_list) if total else None
    rate = matches / total if total else math.nan
    return {
        "events": len(window),
        "matchRate": _finite(rate),
        "slots": {s: {"matchRate": c[0] / c[1], "events": c[1]} for s, c in per_slot.items()},
        "reward": _finite(est.ips) if est else None,
        "rewardSnips": _finite(est.snips) if est else None,
        "rewardInterval": [_finite(v) for v in est.ips_interval] if est else None,
        "baselineReward": _finite(float(np.mean(r_list))) if r_list else None,
        "ready": bool(total and rate >= APPRENTICE_READY_MATCH_RATE),
    }
