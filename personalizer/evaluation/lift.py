"""Lift over the baseline: paired per-slot estimates of a policy against each slot's baseline action."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .estimators import HEADLINE_INTERVAL, _cressie_read_bound, _finite, _z
from .logged import LoggedData, LoggedEvent, _cascade, _cascade_bound, prepare

# ================================================================ lift over baseline

@dataclass(frozen=True)
class Lift:
    """Online minus baseline for one slot, paired over the same events.

    ``interval`` is the headline: a paired Cressie-Read empirical-likelihood interval for
    ``E[r] - E[w r]`` (see ``_paired_cressie_read``); the paired Gaussian (influence function of
    the SNIPS difference), the IPS Gaussian and the empirical-Bernstein intervals stay available
    through ``interval_of(kind)``. ``verdict`` and ``events_needed`` read the headline interval.
    """

    slot_id: str
    position: int
    events: int
    support: int                  # events whose logged page matched the baseline (weight > 0)
    online: float                 # realized average reward
    baseline: float               # SNIPS estimate of the baseline
    lift: float                   # online - baseline
    interval: tuple[float, float]  # headline: paired Cressie-Read empirical likelihood
    ips_lift: float
    ips_interval: tuple[float, float]
    bernstein_interval: tuple[float, float]
    weighting: str                # conditional | cascade
    enough_data: bool
    reason: str
    confidence: float
    gaussian_interval: tuple[float, float] = (math.nan, math.nan)  # paired, delta method around ``lift``
    minimum_events: int = 0       # events for ``enough_data`` at the current share of baseline support

    @property
    def unbiased(self) -> bool:
        """True for the first slot, or for later slots with cascade weights."""
        return self.position == 0 or self.weighting == "cascade"

    def interval_of(self, kind: str = HEADLINE_INTERVAL) -> tuple[float, float]:
        """The interval of ``kind``: cressie-read (the headline) | gaussian | ips-gaussian | bernstein."""
        intervals = {"cressie-read": self.interval, "gaussian": self.gaussian_interval,
                     "ips-gaussian": self.ips_interval, "bernstein": self.bernstein_interval}
        try:
            return intervals[kind]
        except KeyError:
            raise ValueError(f"interval kind must be one of {list(intervals)}") from None

    @property
    def verdict(self) -> str:
        """``winning`` (the headline interval lies above 0), ``losing`` (below 0) or ``too early``.

        Also ``too early`` while ``enough_data`` is False, whatever the interval says.
        """
        lo, hi = self.interval
        if self.enough_data and lo > 0:
            return "winning"
        if self.enough_data and hi < 0:
            return "losing"
        return "too early"

    @property
    def events_needed(self) -> int | None:
        """For ``too early``: about how many *more* events before the interval can exclude zero.

        Method: an interval's width shrinks like ``1 / sqrt(n)``, so with the current lift
        ``L`` and the distance ``g`` from ``L`` to the interval's end on zero's side, the end
        crosses zero once ``n' = n (g / |L|)^2`` (and at least ``minimum_events``). 0 for a verdict;
        None when the lift is 0 or unknown (no finite answer). Divide by the traffic rate for
        a time: it assumes the lift and the spread of the rewards stay as they are.
        """
        if self.verdict != "too early":
            return 0
        lo, hi = self.interval
        lift = self.lift
        if not (math.isfinite(lift) and math.isfinite(lo) and math.isfinite(hi)) or lift == 0 or self.events == 0:
            return None
        gap = lift - lo if lift > 0 else hi - lift
        target = max(self.events * (gap / abs(lift)) ** 2, self.minimum_events)
        return max(0, math.ceil(target - self.events))

    def to_dict(self) -> dict[str, Any]:
        """camelCase dict for the UI and the API."""
        return {
            "slotId": self.slot_id, "position": self.position, "events": self.events, "support": self.support,
            "online": _finite(self.online), "baseline": _finite(self.baseline), "lift": _finite(self.lift),
            "interval": [_finite(v) for v in self.interval], "intervalKind": HEADLINE_INTERVAL,
            "gaussianInterval": [_finite(v) for v in self.gaussian_interval],
            "ipsLift": _finite(self.ips_lift),
            "ipsInterval": [_finite(v) for v in self.ips_interval],
            "bernsteinInterval": [_finite(v) for v in self.bernstein_interval],
            "weighting": self.weighting, "unbiased": self.unbiased, "enoughData": self.enough_data,
            "reason": self.reason, "confidence": self.confidence, "verdict": self.verdict,
            "eventsNeeded": self.events_needed,
        }


def _paired_cressie_read(w: np.ndarray, r: np.ndarray, wmax: float, reward_range: tuple[float, float],
                         confidence: float) -> tuple[float, float]:
    """Cressie-Read interval for the paired lift ``E[r] - E[w r] = E[r (1 - w)]`` under ``E[w] = 1``.

    The same empirical-likelihood construction as a policy's value (``_cressie_read_bound``), with
    ``h = r (1 - w)``: the online side (weight 1) and the baseline side (weight w) are two moments of
    one reweighting of the same events, so the pairing is exact. The unseen point the method adds
    takes either reward extreme; the bound is the worst case.
    """
    lo_r, hi_r = reward_range
    full = (lo_r - hi_r, hi_r - lo_r)
    n = float(len(w))
    if n < 2:
        return full
    h = r * (1.0 - w)
    sums = (n, float(w.sum()), float((w * w).sum()))
    sh, swh, shh = float(h.sum()), float((w * h).sum()), float((h * h).sum())
    wmax = wmax if wmax > 1.0 else math.inf
    lower = _cressie_read_bound(*sums, sh, swh, shh, 0.0, wmax, [(lo_r, -lo_r), (hi_r, -hi_r)], confidence)
    upper = -_cressie_read_bound(*sums, -sh, -swh, shh, 0.0, wmax, [(-lo_r, lo_r), (-hi_r, hi_r)], confidence)
    lower = full[0] if not math.isfinite(lower) else lower
    upper = full[1] if not math.isfinite(upper) else upper
    return (min(max(lower, full[0]), full[1]), max(min(upper, full[1]), full[0]))


def lift_over_baseline(
    events: Iterable[LoggedEvent] | LoggedData,
    *,
    confidence: float = 0.95,
    min_events: int = 100,
    min_support: int = 20,
    weighting: str = "auto",
) -> list[Lift]:
    """Per slot (in position order): how much the served policy beat each slot's baseline action.

    ``weighting``: ``auto`` (conditional for the first slot, where it is exact; cascade
    for later slots, unbiased), ``conditional`` or ``cascade``. ``enough_data`` is False
    (with a ``reason`` the UI can show) below ``min_events`` events or ``min_support``
    events whose logged page matched the baseline.
    """
    if weighting not in ("auto", "conditional", "cascade"):
        raise ValueError("weighting must be auto, conditional or cascade")
    data = events if isinstance(events, LoggedData) else prepare(events)
    w_cond = data.is_baseline / data.probability
    w_casc = _cascade(data, w_cond)
    bound_cond = 1.0 / data.probability
    bound_casc = _cascade_bound(data)
    out: list[Lift] = []
    order = []
    for code, sid in enumerate(data.slot_ids):
        pos = data.position[data.slot == code]
        order.append((int(np.bincount(pos).argmax()), code, sid))
    for position, code, sid in sorted(order):
        rows = np.flatnonzero(data.slot == code)
        kind = weighting if weighting != "auto" else ("conditional" if position == 0 else "cascade")
        w = (w_cond if kind == "conditional" else w_casc)[rows]
        wmax = float((bound_cond if kind == "conditional" else bound_casc)[rows].max(initial=0.0))
        out.append(_lift(sid, position, kind, w, data.reward[rows], wmax, data.reward_range, confidence,
                         min_events, min_support))
    return out


def _lift(sid: str, position: int, kind: str, w: np.ndarray, r: np.ndarray, wmax: float,
          reward_range: tuple[float, float], confidence: float, min_events: int, min_support: int) -> Lift:
    """One slot's Lift from its rows' baseline weights and rewards."""
    lo_r, hi_r = reward_range
    z = _z(confidence)
    log_term = math.log(4.0 / (1.0 - confidence))
    full = (lo_r - hi_r, hi_r - lo_r)  # a difference of two values in the reward range

    def clip(iv: tuple[float, float]) -> tuple[float, float]:
        return (max(iv[0], full[0]), min(iv[1], full[1]))

    n = len(w)
    support = int(np.count_nonzero(w))
    nan = math.nan
    online = float(r.mean()) if n else nan
    sw = float(w.sum())
    base = float((w * r).sum() / sw) if sw > 0 else nan
    lift = online - base
    if n > 1 and sw > 0:
        wbar = sw / n
        infl = (r - online) - w * (r - base) / wbar
        half = z * math.sqrt(float((infl * infl).sum()) / (n * (n - 1)))
        gaussian = (lift - half, lift + half)
    else:
        gaussian = full
    d = r * (1.0 - w)
    ips_lift = float(d.mean()) if n else nan
    if n > 1:
        var = float(d.var(ddof=1))
        half = z * math.sqrt(var / n)
        ips_iv = (ips_lift - half, ips_lift + half)
        wmax_seen = float(w.max(initial=0.0))
        corners = [a * (1.0 - b) for a in (lo_r, hi_r) for b in (0.0, wmax_seen)]
        span = max(corners) - min(corners)
        eb = math.sqrt(2.0 * var * log_term / n) + 7.0 * span * log_term / (3.0 * (n - 1))
        bern = (ips_lift - eb, ips_lift + eb)
    else:
        ips_iv = bern = full
    cressie_read = _paired_cressie_read(w, r, max(wmax, float(w.max(initial=0.0))), reward_range, confidence)
    if math.isfinite(lift):  # contain the lift shown beside it (see _from_stats)
        cressie_read = (min(cressie_read[0], lift), max(cressie_read[1], lift))
    minimum = max(min_events, math.ceil(n * min_support / support) if support else min_events)
    if n < min_events:
        enough, reason = False, f"needs at least {min_events} events with rewards (has {n})"
    elif support < min_support:
        enough, reason = False, (f"needs at least {min_support} events that showed the baseline "
                                 f"{'page' if kind == 'cascade' and position else 'action'} (has {support})")
    else:
        enough, reason = True, ""
    return Lift(sid, position, n, support, online, base, lift, cressie_read, ips_lift, clip(ips_iv), clip(bern),
                kind, enough, reason, confidence, clip(gaussian), minimum if not enough else 0)
