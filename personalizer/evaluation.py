"""Offline evaluation: what would the baseline, a random page or other learning settings have earned?

Every logged event carries, per slot, the action shown, the probability ``p`` with
which it was chosen and the reward it got. An estimate of a *target* policy ``pi``
re-weights each logged reward by ``w = pi(logged action) / p``:

- **IPS** ``sum(w * r) / n``: unbiased whenever the logging policy gave every action
  the target could pick a positive probability;
- **SNIPS** ``sum(w * r) / sum(w)``: IPS divided by the mean weight (which is 1 in
  expectation); a little biased, far less variance when weights are large. SNIPS is
  the headline value (``averageReward`` / ``expectedReward`` on the wire).

Intervals (``confidence``, default 95 %):

- **Cressie-Read empirical likelihood** (the headline, ``Estimate.interval``): Karampatziakis,
  Langford & Mineiro, "Empirical Likelihood for Contextual Bandits" (NeurIPS 2020), computed
  exactly as Microsoft's ``vw-estimators`` does (``bandits/cressieread``; agreement to 1e-15 is
  a test) but from the bucket statistics below, so any time window costs O(1). One rule for
  every policy, slot and sample size: the interval holds its coverage with a few hundred events
  (where the Gaussian over-claims) and is about as tight as the Gaussian with thousands. It is
  given the largest weight the policy *could* take (1 / the smallest logged probability of the
  rows, or its product along the page for cascade weights) instead of vw-estimators' default
  "unbounded", which makes it 3-44 % narrower at the same coverage (``bench/evaluation.py``).
- **Gaussian** (CLT) for IPS, and by the delta method for SNIPS; ``interval_of("gaussian")``.
- **Empirical Bernstein** (Maurer & Pontil 2009) for IPS: valid for any sample size
  because ``w * r`` is bounded by ``max weight x reward range``; far wider.
- **Doubly robust** (``Estimate.dr``, Gaussian ``dr_interval``): ``sum_a pi(a) rhat(a) +
  w (r - rhat(logged))`` with a reward model read from the log leaving the event out
  (``_RewardModel``); reported beside SNIPS for every policy whose full distribution is known
  (Baseline, Random, replayed candidates): 0.48-0.74x SNIPS's mean squared error on simulator logs.
  The reward range is [0, 1] when every logged reward lies there, else [-1, 1].

Policies evaluated:

- **Online**: what the served policy actually earned (``w = 1``, the realized mean);
- **Baseline**: each slot's ``baselineAction`` (``w = 1[shown == baseline] / p``);
- **Random**: uniform over the slot's allowed actions not taken by an earlier slot of
  the logged page (``w = (1 / open actions) / p``);
- **Custom** VW argument strings, replayed over the log in a fresh workspace with
  progressive validation: for each event in order, the candidate's distribution is
  read *before* it learns that event, so it is only ever judged on events it has
  not seen. The IPS term uses the full distribution: ``pi(logged action) / p * r``.

Multi-slot caveat (say it wherever per-slot numbers are shown)
--------------------------------------------------------------
Slots are filled in order and each action fills one slot, so the engine logs, for
each slot, the probability of its action *given the actions already placed in the
earlier slots*. For the **first slot** that is the plain propensity: every estimate
for the first slot is unbiased, and it is the headline (``totalSummary``, the
overall row, and the choice of ``optimalPolicy``).

For a later slot ``k`` two weightings are reported:

- ``conditional`` (the default per-slot numbers) weights by
  ``pi_k(a_k | logged earlier actions) / p_k``. It estimates what the policy would
  earn in slot ``k`` *if the earlier slots showed what the online policy showed* —
  not what it earns on its own page. When the two differ (e.g. the online policy
  often shows slot ``k``'s baseline action in an earlier slot) it can be far off.
- ``cascade`` multiplies the weights of slots ``1..k``. It is unbiased for the
  policy's own page, but its variance grows with every slot (few events match a
  whole page). ``lift_over_baseline`` uses it for later slots.

Both later-slot weightings need each slot's logged probability to be its true
conditional propensity, i.e. each slot drawn with its own random number. (An engine
that seeds every slot of an event with one tag draws them all with one number, so a
later slot explores exactly when the first does; only first-slot numbers hold then.)

Replay detail: for most exploration algorithms a candidate's distributions are read
from VW's learn call (CCB predicts each slot before it updates on it, and pins
earlier slots to the logged actions), which costs no more than learning; for a
later slot that read comes after the same event's earlier slots were learned.
``exact=True`` (automatic for ``--bag`` and ``--rnd``, whose learn-time scores are
not pre-update) predicts separately first, pinning earlier slots, at about twice
the cost.

Deterministic logs: events served with probability 1 (Apprentice, LoggingOnly, or
0 % exploration) say nothing about actions that were not shown; estimates of
policies that differ from them are then biased (unseen rewards count as 0 in IPS).
``LoggedData.deterministic_share`` reports how many such slots a log holds.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import queue
import re
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from statistics import NormalDist
from typing import Any, Protocol

import numpy as np
from scipy.special import fdtri

from .contract import DEFAULT_EXPLORATION, MIN_PROBABILITY, PersonalizerError, check_text
from .engine import (
    DEFAULT_LEARNER,
    DEFAULT_POLICY_ARGUMENTS,
    RETIRED_POLICY_ARGUMENTS,
    labeled_example,
    policy_arguments,
)
from .interface import LocalEngine, Personalizer
from .policy_history import ChangeNote, estimate_details
from .protocol import iso_utc
from .vw import encoding, trial
from .vw import workspace as vw_workspace
from .vw.arguments import effective_arguments, option_value, parse_arguments
from .vw.encoding import encode_request

__all__ = [
    "APPRENTICE_READY_MATCH_RATE",
    "MAX_CUSTOM_POLICIES",
    "PRESET_POLICIES",
    "Estimate",
    "EvaluationCancelled",
    "EvaluationResult",
    "Evaluations",
    "Lift",
    "LoggedData",
    "PolicyEvaluation",
    "Replayer",
    "apprentice_metrics",
    "estimate",
    "evaluate",
    "lift_over_baseline",
    "prepare",
    "replay",
]

#: Personalizer accepted at most this many custom policies per evaluation.
MAX_CUSTOM_POLICIES = 10
#: Personalizer's guidance: switch Apprentice to Online once the model agrees with the baseline this often.
APPRENTICE_READY_MATCH_RATE = 0.6
#: Names of the policies every evaluation includes; custom policies may not take them.
BUILTIN_POLICIES = ("Online", "Baseline", "Random")
#: Exploration of the "More exploration" and "Less exploration" presets: 0.1 either side of the default.
MORE_EXPLORATION = round(min(1.0, DEFAULT_EXPLORATION + 0.1), 6)
LESS_EXPLORATION = round(max(0.0, DEFAULT_EXPLORATION - 0.1), 6)
#: Learning settings the Evaluate page offers as presets (evaluated exactly as written).
PRESET_POLICIES: dict[str, str] = {
    "Retired service default": RETIRED_POLICY_ARGUMENTS,
    "Project default": DEFAULT_POLICY_ARGUMENTS,
    "More exploration": policy_arguments(DEFAULT_LEARNER, MORE_EXPLORATION),
    "Less exploration": policy_arguments(DEFAULT_LEARNER, LESS_EXPLORATION),
    # Tastes that depend on two context features together (time x device) need context x context x
    # action terms; the default leaves them out because they cost ~5x on large requests.
    "Joint interactions": f"{DEFAULT_POLICY_ARGUMENTS} --cubic @@_",
}
#: Time windows (minutes) the 2022-09-01-preview API aggregates by.
INTERVALS_MINUTES = (5, 60, 360, 720, 1440)
_MAX_BUCKETS = 500
_MIN_PROBABILITY = MIN_PROBABILITY  # the engine's floor for logged probabilities (engine.labeled_example)
#: Evaluation results carry times to the millisecond (as the service sent them).
_iso = partial(iso_utc, timespec="milliseconds")


# ================================================================ statistics

# Sufficient statistics of IPS terms, per (group, time bucket). They add, so buckets
# merge into any window without keeping per-event terms. _WB is the largest weight the
# policy *could* give a row (1 / logged probability, or its cascade product): the
# Cressie-Read interval's wmax. _SD, _SD2: sum and sum of squares of doubly robust terms.
_N, _SW, _SWR, _SW2, _SW2R, _SW2R2, _NZ, _WMAX, _WB, _SD, _SD2 = range(11)
_FIELDS = 11
_MAX_FIELDS = (_WMAX, _WB)  # merged by max, the others by sum

#: Interval kinds ``Estimate.interval_of`` and ``Lift.interval_of`` know.
INTERVAL_KINDS = ("cressie-read", "gaussian", "ips-gaussian", "bernstein", "dr-gaussian")
#: The headline interval kind (see ``Estimate.interval``).
HEADLINE_INTERVAL = "cressie-read"


@dataclass(frozen=True)
class Estimate:
    """One policy's estimated average reward per event (one slot, or the headline) with intervals.

    The headline value is SNIPS; the headline interval (``interval``) is the Cressie-Read
    empirical-likelihood interval, which holds its coverage at every sample size. The
    Gaussian (delta-method SNIPS, and IPS), empirical-Bernstein and doubly robust
    intervals stay available through ``interval_of(kind)``.
    """

    events: int
    ips: float
    snips: float
    ips_interval: tuple[float, float]
    snips_interval: tuple[float, float]
    bernstein_interval: tuple[float, float]
    ips_numerator: float
    snips_denominator: float
    sum_of_squares: float
    nonzero: int
    max_weight: float
    confidence: float
    cressie_read_interval: tuple[float, float] = (math.nan, math.nan)
    dr: float = math.nan           # doubly robust estimate (equals IPS where no reward model applies)
    dr_interval: tuple[float, float] = (math.nan, math.nan)  # Gaussian around DR
    sum_of_weight_squares: float = 0.0
    interval_kind: str = HEADLINE_INTERVAL  # which interval ``interval`` is (see PolicyEvaluation.estimate)

    @property
    def value(self) -> float:
        """The headline value: SNIPS."""
        return self.snips

    @property
    def interval(self) -> tuple[float, float]:
        """The headline interval: Cressie-Read empirical likelihood (``interval_kind``, see ``HEADLINE_INTERVAL``)."""
        return self.interval_of(self.interval_kind)

    def interval_of(self, kind: str = HEADLINE_INTERVAL) -> tuple[float, float]:
        """The interval of ``kind``: cressie-read | gaussian (SNIPS) | ips-gaussian | bernstein | dr-gaussian."""
        intervals = {"cressie-read": self.cressie_read_interval, "gaussian": self.snips_interval,
                     "ips-gaussian": self.ips_interval, "bernstein": self.bernstein_interval,
                     "dr-gaussian": self.dr_interval}
        try:
            return intervals[kind]
        except KeyError:
            raise ValueError(f"interval kind must be one of {list(INTERVAL_KINDS)}") from None

    @property
    def effective_events(self) -> float:
        """Kish effective sample size ``(sum w)^2 / sum w^2``: how many events the estimate really rests on."""
        w2 = self.sum_of_weight_squares
        return self.snips_denominator ** 2 / w2 if w2 > 0 else 0.0

    def summary(self, time_stamp: str | None = None, window: str | None = None) -> dict[str, Any]:
        """A Personalizer ``PolicyResultSummary``; extra fields carry every estimator's interval.

        ``averageReward`` is SNIPS (numerator / snipsEstimatorDenominator), ``confidenceInterval``
        the headline (Cressie-Read) interval's half-width, ``interval`` its bounds (it need not be
        symmetric), ``nonZeroProbability`` the share of events where the policy gave the logged
        action a positive probability, ``sumOfSquares`` the sum of squared IPS terms.
        """
        lo, hi = self.interval
        out: dict[str, Any] = {
            "ipsEstimatorNumerator": self.ips_numerator,
            "ipsEstimatorDenominator": float(self.events),
            "snipsEstimatorDenominator": self.snips_denominator,
            "nonZeroProbability": self.nonzero / self.events if self.events else 0.0,
            "sumOfSquares": self.sum_of_squares,
            "confidenceInterval": _finite((hi - lo) / 2),
            "averageReward": _finite(self.snips),
            "events": self.events,
            "interval": [_finite(lo), _finite(hi)],
            "intervalKind": self.interval_kind,
            "ipsAverageReward": _finite(self.ips),
            "cressieReadInterval": [_finite(v) for v in self.cressie_read_interval],
            "snipsInterval": [_finite(v) for v in self.snips_interval],
            "ipsInterval": [_finite(v) for v in self.ips_interval],
            "bernsteinInterval": [_finite(v) for v in self.bernstein_interval],
            "drAverageReward": _finite(self.dr),
            "drInterval": [_finite(v) for v in self.dr_interval],
        }
        if time_stamp is not None:
            out["timeStamp"] = time_stamp
        if window is not None:
            out["aggregateTimeWindow"] = window
        return out


def _finite(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def _z(confidence: float) -> float:
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def _cressie_read_bound(n: float, sw: float, sww: float, sh: float, swh: float, shh: float,
                        wmin: float, wmax: float, fakes: Sequence[tuple[float, float]], confidence: float) -> float:
    """Lower confidence bound on ``E[h]`` under ``E[w] = 1``: the Cressie-Read (power -2) empirical likelihood.

    Karampatziakis, Langford & Mineiro, "Empirical Likelihood for Contextual Bandits" (NeurIPS 2020),
    as computed by Microsoft's ``vw-estimators`` (``bandits/cressieread.IntervalImpl``), generalised
    from ``h = w r`` to any ``h`` that is linear in ``w`` for the one unseen point the method adds:
    ``fakes`` lists its ``h = c0 + c1 * w`` candidates (the reward extremes); the bound is the worst of
    them at ``w = wmin`` and ``w = wmax``. Sums are over the n events: w, w^2, h, w*h, h^2. The F(1, n)
    quantile calibrates the likelihood-ratio threshold. Returns -inf when no candidate is feasible.
    """
    delta = float(fdtri(1.0, n, confidence))
    unc = wmax if sw < n else wmin
    if math.isinf(unc):
        uncgstar = 1.0 + 1.0 / n
    else:
        a = (unc + sw) / (1.0 + n)
        b = (unc * unc + sww) / (1.0 + n)
        uncgstar = (1.0 + n) * (a - 1.0) ** 2 / (b - a * a) if b > a * a else math.inf
    phi = (-uncgstar - delta) / (2.0 * (1.0 + n))
    tol = 1e-9
    best = math.inf
    for c0, c1 in fakes:
        for wf in (wmin, wmax):
            if math.isinf(wf):
                # The unseen point carries the missing weight mass at vanishing probability:
                # E[h] = c1 + E[h - c1 w] over the n events.
                sg = sh - c1 * sw
                sgg = shh - 2.0 * c1 * swh + c1 * c1 * sww
                x = c1 + sg / n
                y = sg * sg / (n * (1.0 + n)) - sgg / (1.0 + n)
                z = phi + 1.0 / (2.0 * n)
            else:
                hf = c0 + c1 * wf
                m = 1.0 + n
                bw, bww = (wf + sw) / m, (wf * wf + sww) / m
                bh, bwh, bhh = (hf + sh) / m, (wf * hf + swh) / m, (hf * hf + shh) / m
                var_w = bww - bw * bw
                if var_w <= 0:
                    continue
                cov = bwh - bw * bh
                x = bh + (1.0 - bw) * cov / var_w
                y = cov * cov / var_w - (bhh - bh * bh)
                z = phi + 0.5 * (1.0 - bw) ** 2 / var_w
            if abs(y * z) <= tol * tol:
                best = min(best, x - math.sqrt(2.0) * tol)
            elif z <= 0 and y * z >= 0:
                best = min(best, x - math.sqrt(2.0 * y * z))
    return best if math.isfinite(best) else -math.inf


def _cressie_read_value(n: float, sw: float, sww: float, swr: float, swwr: float, swwrr: float,
                        wmax: float, reward_range: tuple[float, float], confidence: float) -> tuple[float, float]:
    """Cressie-Read interval for a policy's value ``E[w r]`` (agrees with vw-estimators' ``cressieread.Interval``)."""
    lo_r, hi_r = reward_range
    wmax = wmax if wmax > 1.0 else math.inf
    lower = _cressie_read_bound(n, sw, sww, swr, swwr, swwrr, 0.0, wmax, [(0.0, lo_r)], confidence)
    upper = -_cressie_read_bound(n, sw, sww, -swr, -swwr, swwrr, 0.0, wmax, [(0.0, -hi_r)], confidence)
    lower = lo_r if not math.isfinite(lower) else lower
    upper = hi_r if not math.isfinite(upper) else upper
    return (min(max(lower, lo_r), hi_r), max(min(upper, hi_r), lo_r))


def _from_stats(s: np.ndarray, confidence: float, reward_range: tuple[float, float],
                interval_kind: str = HEADLINE_INTERVAL) -> Estimate:
    """An Estimate from one vector of sufficient statistics."""
    n = int(round(s[_N]))
    lo_r, hi_r = reward_range
    nan = math.nan
    full = (lo_r, hi_r)
    if n == 0:
        return Estimate(0, nan, nan, full, full, full, 0.0, 0.0, 0.0, 0, 0.0, confidence, full, nan, full,
                        interval_kind=interval_kind)
    sw, swr, sw2, sw2r, sw2r2 = (float(s[i]) for i in (_SW, _SWR, _SW2, _SW2R, _SW2R2))
    sd, sd2 = float(s[_SD]), float(s[_SD2])
    z = _z(confidence)
    ips = swr / n
    snips = swr / sw if sw > 0 else nan
    dr = sd / n

    def clip(a: float, b: float) -> tuple[float, float]:
        return (min(max(a, lo_r), hi_r), max(min(b, hi_r), lo_r))

    if n > 1:
        var = max(sw2r2 - n * ips * ips, 0.0) / (n - 1)
        half = z * math.sqrt(var / n)
        ips_iv = clip(ips - half, ips + half)
        # Empirical Bernstein, two-sided: w*r lies in [min(0, wmax*lo), max(0, wmax*hi)].
        wmax = float(s[_WMAX])
        span = wmax * (max(hi_r, 0.0) - min(lo_r, 0.0))
        log_term = math.log(4.0 / (1.0 - confidence))
        eb = math.sqrt(2.0 * var * log_term / n) + 7.0 * span * log_term / (3.0 * (n - 1))
        bern_iv = clip(ips - eb, ips + eb)
        dr_half = z * math.sqrt(max(sd2 - n * dr * dr, 0.0) / (n - 1) / n)
        dr_iv = clip(dr - dr_half, dr + dr_half)
    else:
        ips_iv = bern_iv = dr_iv = full
    if sw > 0 and n > 1:
        # Delta method: Var(SNIPS) ~ sum (w_i (r_i - V))^2 / (sum w)^2
        v = max(sw2r2 - 2 * snips * sw2r + snips * snips * sw2, 0.0) / (sw * sw)
        half = z * math.sqrt(v * n / (n - 1))
        snips_iv = clip(snips - half, snips + half)
    else:
        snips_iv = full
    bound = float(s[_WB])  # 0: unknown, unbounded
    cr_iv = _cressie_read_value(n, sw, sw2, swr, sw2r, sw2r2, max(bound, float(s[_WMAX])) if bound > 0 else math.inf,
                                reward_range, confidence)
    if math.isfinite(snips):
        # With a handful of weighted events SNIPS can fall outside the likelihood interval (about 3 % of
        # simulated logs, most under 100 events): widen to contain the value shown beside it.
        cr_iv = (min(cr_iv[0], snips), max(cr_iv[1], snips))
    return Estimate(
        events=n, ips=ips, snips=snips, ips_interval=ips_iv, snips_interval=snips_iv, bernstein_interval=bern_iv,
        ips_numerator=swr, snips_denominator=sw, sum_of_squares=sw2r2, nonzero=int(round(s[_NZ])),
        max_weight=float(s[_WMAX]), confidence=confidence, cressie_read_interval=cr_iv, dr=dr, dr_interval=dr_iv,
        sum_of_weight_squares=sw2, interval_kind=interval_kind,
    )


def _stats(w: np.ndarray, r: np.ndarray, bound: np.ndarray | None = None, dr: np.ndarray | None = None) -> np.ndarray:
    wr = w * r
    d = wr if dr is None else dr
    return np.array([len(w), w.sum(), wr.sum(), (w * w).sum(), (w * wr).sum(), (wr * wr).sum(),
                     np.count_nonzero(w), w.max(initial=0.0), 0.0 if bound is None else bound.max(initial=0.0),
                     d.sum(), (d * d).sum()])


def _reward_range(r: np.ndarray) -> tuple[float, float]:
    """[0, 1] when every reward lies there (accept/reject apps), else Personalizer's full [-1, 1]."""
    if len(r) == 0 or (r.min() >= 0.0 and r.max() <= 1.0):
        return (0.0, 1.0)
    return (-1.0, 1.0)


def estimate(weights: Sequence[float] | np.ndarray, rewards: Sequence[float] | np.ndarray, *,
             confidence: float = 0.95, reward_range: tuple[float, float] | None = None,
             max_weight: float | None = None, dr_terms: Sequence[float] | np.ndarray | None = None) -> Estimate:
    """IPS and SNIPS with Cressie-Read, Gaussian and empirical-Bernstein intervals from per-event weights and rewards.

    ``weights[i] = pi(logged action) / logged probability``; ``rewards`` in ``reward_range``
    (inferred when not given: [0, 1] if every reward lies there, else [-1, 1]). ``max_weight``:
    the largest weight the policy could give any event (e.g. 1 / the smallest logging
    probability); None: unbounded, vw-estimators' default, a little wider. ``dr_terms``:
    per-event doubly robust terms (default: the IPS terms ``w * r``).
    """
    w = np.asarray(weights, dtype=float)
    r = np.asarray(rewards, dtype=float)
    if w.shape != r.shape or w.ndim != 1:
        raise ValueError("weights and rewards must be 1-D arrays of the same length")
    if np.any(w < 0):
        raise ValueError("weights must be >= 0")
    d = None if dr_terms is None else np.asarray(dr_terms, dtype=float)
    if d is not None and d.shape != w.shape:
        raise ValueError("dr_terms must have one entry per event")
    bound = None if max_weight is None else np.array([float(max_weight)])
    return _from_stats(_stats(w, r, bound, d), confidence, reward_range or _reward_range(r))


# ================================================================ logged data

class LoggedEvent(Protocol):
    """What evaluation reads from an event (``store.StoredEvent`` has it all)."""

    event_id: str
    created: float
    request: dict[str, Any]
    response: dict[str, Any]
    mode: str
    status: str
    labels: list[float | None] | None


@dataclass
class LoggedData:
    """Logged events prepared once: VW examples and per-(event, slot) arrays every policy reuses.

    Row arrays have one entry per (event, slot), events in log order and slots in
    request order, so an event's rows are contiguous from ``row_start[event]``.
    """

    event_ids: list[str]
    created: np.ndarray            # per event, epoch seconds
    modes: list[str]
    request_hashes: list[str]
    examples: list[str]            # labeled CCB example text per event (engine encoding, lines joined)
    encoded: list[tuple[list[str], list[str], list[list[int]]]]  # head, slot bodies, allowed
    row_start: np.ndarray          # per event
    event_of_row: np.ndarray
    position: np.ndarray           # slot position in its request
    slot: np.ndarray               # code into slot_ids
    chosen: np.ndarray             # action index shown
    probability: np.ndarray        # logged probability (floored like the engine's learning)
    reward: np.ndarray
    is_baseline: np.ndarray        # shown == the slot's baselineAction
    open_actions: np.ndarray       # allowed actions not shown in an earlier slot of the event
    slot_ids: list[str]
    skipped: int = 0               # events without rewards or probabilities
    # Per row: the action index of the slot's baselineAction (empty when the source has none).
    baseline: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    @property
    def events(self) -> int:
        """Number of events."""
        return len(self.event_ids)

    @property
    def reward_range(self) -> tuple[float, float]:
        """Reward range used by bounded intervals."""
        return _reward_range(self.reward)

    @property
    def deterministic_share(self) -> float:
        """Share of logged slots served with probability 1 (no exploration: Apprentice, LoggingOnly...)."""
        return float(np.mean(self.probability >= 1.0 - 1e-9)) if len(self.probability) else 0.0

    @property
    def first_slot(self) -> str | None:
        """Slot id most often in the first position (the headline slot)."""
        firsts = self.slot[self.position == 0]
        return self.slot_ids[int(np.bincount(firsts).argmax())] if len(firsts) else None


@dataclass
class _Template:
    """What every event of one distinct request shares: head lines, slot bodies minus the seed tag."""

    head: list[str]
    # Per slot: (text before the escaped event id in the tag, text after it, body without the tag).
    # None: the bodies are not "tag + untagged body", so encode_request builds every event's bodies.
    parts: list[tuple[str, str, str]] | None
    allowed: list[list[int]]
    allowed_sets: list[set[int]]
    index: dict[str, int]
    slot_codes: list[int]
    baselines: list[int]
    checked: bool = False          # verified against encode_request for a second event id

    def bodies(self, request: dict[str, Any], event_id: str) -> list[str]:
        if self.parts is None:
            return encode_request(request, event_id)[1]
        eid = encoding.escape(event_id)
        out = [f"{before}{eid}{after}{rest}" for before, after, rest in self.parts]
        if not self.checked:
            self.checked = True
            if out != encode_request(request, event_id)[1]:
                self.parts = None
                return encode_request(request, event_id)[1]
        return out


def _template(request: dict[str, Any], event_id: str, slot_codes: dict[str, int]) -> tuple[_Template, list[str]]:
    head, bodies, allowed, index = encode_request(request, event_id)
    slots = request["slots"]
    # Only the slot bodies differ between events of one request: they carry the event's seed
    # tag. Split each into tag and untagged body once; checked against encode_request on the next event.
    eid = encoding.escape(event_id)
    parts: list[tuple[str, str, str]] | None = []
    for slot, body in zip(slots, bodies, strict=True):
        rest = encoding.slot_body(slot["id"], slot["features"], None)
        tag = body[: len(body) - len(rest)]
        if not body.endswith(rest) or tag.count(eid) != 1:
            parts = None
            break
        before, _, after = tag.partition(eid)
        parts.append((before, after, rest))
    tpl = _Template(head, parts, allowed, [set(a) for a in allowed], index,
                    [slot_codes.setdefault(s["id"], len(slot_codes)) for s in slots],
                    [index[s["baselineAction"]] for s in slots])
    return tpl, bodies


def prepare(events: Iterable[LoggedEvent]) -> LoggedData:
    """Encode logged events once (exactly as the engine does) for every estimator and replay.

    Events without rewards yet (pending) or without logged probabilities are skipped.
    Events repeating a request share its encoding (only the seed tag differs).
    """
    event_ids: list[str] = []
    created: list[float] = []
    modes: list[str] = []
    hashes: list[str] = []
    examples: list[str] = []
    encoded: list[tuple[list[str], list[str], list[list[int]]]] = []
    row_start: list[int] = []
    ev_col: list[int] = []
    pos_col: list[int] = []
    slot_col: list[int] = []
    chosen_col: list[int] = []
    p_col: list[float] = []
    r_col: list[float] = []
    base_col: list[bool] = []
    baseline_col: list[int] = []
    open_col: list[int] = []
    slot_codes: dict[str, int] = {}
    templates: dict[str, _Template] = {}
    skipped = 0
    for ev in events:
        if ev.labels is None or ev.status in ("pending", "discarded"):
            skipped += 1
            continue
        slots = ev.response.get("slots") or []
        if len(slots) != len(ev.request["slots"]) or any(s.get("probability") is None for s in slots):
            skipped += 1
            continue
        key = getattr(ev, "request_hash", None) or json.dumps(ev.request, sort_keys=True)
        tpl = templates.get(key)
        if tpl is None:
            tpl, bodies = _template(ev.request, ev.event_id, slot_codes)
            templates[key] = tpl
        else:
            bodies = tpl.bodies(ev.request, ev.event_id)
        index = tpl.index
        chosen = [index[s["rewardActionId"]] for s in slots]
        probs = [max(float(s["probability"]), _MIN_PROBABILITY) for s in slots]
        labels = ev.labels
        rewards = [float(labels[k]) if k < len(labels) and labels[k] is not None else 0.0
                   for k in range(len(slots))]
        examples.append("\n".join(labeled_example(tpl.head, bodies, tpl.allowed, chosen, probs, rewards, ev.mode)))
        encoded.append((tpl.head, bodies, tpl.allowed))
        i = len(event_ids)
        event_ids.append(ev.event_id)
        created.append(float(ev.created))
        modes.append(ev.mode)
        hashes.append(key)
        row_start.append(len(ev_col))
        for k, c in enumerate(chosen):
            ev_col.append(i)
            pos_col.append(k)
            slot_col.append(tpl.slot_codes[k])
            chosen_col.append(c)
            base_col.append(c == tpl.baselines[k])
            baseline_col.append(tpl.baselines[k])
            allowed_k = tpl.allowed_sets[k]
            open_col.append(len(allowed_k) - sum(1 for e in chosen[:k] if e in allowed_k))
        p_col.extend(probs)
        r_col.extend(rewards)
    return LoggedData(
        event_ids=event_ids, created=np.asarray(created, dtype=float), modes=modes, request_hashes=hashes,
        examples=examples, encoded=encoded, row_start=np.asarray(row_start, dtype=np.int64),
        event_of_row=np.asarray(ev_col, dtype=np.int64), position=np.asarray(pos_col, dtype=np.int64),
        slot=np.asarray(slot_col, dtype=np.int64), chosen=np.asarray(chosen_col, dtype=np.int64),
        probability=np.asarray(p_col, dtype=float), reward=np.asarray(r_col, dtype=float),
        is_baseline=np.asarray(base_col, dtype=bool), open_actions=np.asarray(open_col, dtype=np.int64),
        slot_ids=list(slot_codes), skipped=skipped, baseline=np.asarray(baseline_col, dtype=np.int64),
    )


def _cascade(data: LoggedData, w: np.ndarray) -> np.ndarray:
    """Per row: the product of the event's weights up to and including this slot."""
    out = w.copy()
    if len(w):
        for k in range(1, int(data.position.max()) + 1):
            rows = np.flatnonzero(data.position == k)
            out[rows] *= out[rows - 1]  # an event's rows are contiguous, in slot order
    return out


def _cascade_bound(data: LoggedData) -> np.ndarray:
    """Per row: the largest weight any policy could give it (1 / p, multiplied along the page for cascade)."""
    return _cascade(data, 1.0 / data.probability)


class _RewardModel:
    """A reward model for doubly robust estimates, read from the log itself (leave one event out).

    ``predict(rows, actions)`` is the mean reward of ``action`` in the row's slot and request
    (context) over every *other* event, shrunk towards the same action's mean in that slot over
    every request, itself shrunk towards the slot's mean. The row's own event never counts, so a
    prediction does not depend on the reward it is paired with, and the DR term stays
    (conditionally) unbiased whatever the model's quality: a poor model only costs variance.
    Leaving one out instead of reading only earlier events (progressive) gives the early events
    as good a model as the late ones; measured on simulator logs it is what lets DR beat SNIPS.

    Why not the replayed VW learner's own scores: CCB predictions expose the post-exploration
    probabilities only; per-action costs are not part of VW's Python interface for CCB.
    """

    SHRINK = 0.5  # pseudo-events of the coarser level in each finer mean (chosen on simulator logs)

    def __init__(self, data: LoggedData) -> None:
        self.data = data
        _, ctx_of_event = np.unique(np.asarray(data.request_hashes, dtype=object).astype(str), return_inverse=True)
        self.ctx = ctx_of_event.astype(np.int64)[data.event_of_row] if len(data.event_of_row) else data.event_of_row
        self.slots = max(len(data.slot_ids), 1)
        self.actions = int(data.chosen.max(initial=0)) + 64  # headroom: queried actions may never have been shown
        lo_r, hi_r = data.reward_range
        self.prior = (lo_r + hi_r) / 2
        self.tables = [self._table(k) for k in self._keys(np.arange(len(data.chosen)), data.chosen)]

    def _keys(self, rows: np.ndarray, actions: np.ndarray) -> list[np.ndarray]:
        s = self.data.slot[rows]
        return [s, s * self.actions + actions, (self.ctx[rows] * self.slots + s) * self.actions + actions]

    def _table(self, key: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        cells, inverse = np.unique(key, return_inverse=True)
        return (cells, np.bincount(inverse, weights=self.data.reward, minlength=len(cells)),
                np.bincount(inverse, minlength=len(cells)).astype(float))

    def predict(self, rows: np.ndarray, actions: np.ndarray) -> np.ndarray:
        """Predicted reward of ``actions[i]`` at row ``rows[i]`` from every other event."""
        estimate = np.full(len(rows), self.prior)
        if not len(rows):
            return estimate
        # The row's own event is in a cell only through the row itself (one action per slot).
        own = self.data.chosen[rows] == actions
        own_reward = np.where(own, self.data.reward[rows], 0.0)
        for level, (key, (cells, sums, counts)) in enumerate(zip(self._keys(rows, actions), self.tables, strict=True)):
            at = np.minimum(np.searchsorted(cells, key), len(cells) - 1)
            found = cells[at] == key
            # The slot level (0) holds the own row whatever the action.
            mine = np.ones(len(rows), dtype=bool) if level == 0 else own
            r_own = self.data.reward[rows] if level == 0 else own_reward
            total = np.where(found, sums[at], 0.0) - np.where(mine, r_own, 0.0)
            count = np.where(found, counts[at], 0.0) - mine
            estimate = (total + self.SHRINK * estimate) / (count + self.SHRINK)
        return estimate

    def dr_terms(self, w: np.ndarray, rows: np.ndarray, actions: np.ndarray, probs: np.ndarray) -> np.ndarray:
        """Per row: ``sum_a pi(a) rhat(a) + w (r - rhat(logged))`` given the policy's (row, action, pi) triples."""
        n = len(self.data.chosen)
        direct = np.bincount(rows, weights=probs * self.predict(rows, actions), minlength=n)
        logged = self.predict(np.arange(n), self.data.chosen)
        return direct + w * (self.data.reward - logged)


def _open_actions(data: LoggedData) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row, action, 1 / open) for each allowed action not shown in an earlier slot: the Random policy."""
    # Events of one request template share its allowed lists (the same objects): group by them.
    groups: dict[int, list[int]] = {}
    for i, encoded in enumerate(data.encoded):
        groups.setdefault(id(encoded[2]), []).append(i)
    parts = []
    for members in groups.values():
        allowed = data.encoded[members[0]][2]
        starts = data.row_start[np.asarray(members, dtype=np.int64)]
        for k, allowed_k in enumerate(allowed):
            rows = starts + k
            actions = np.asarray(allowed_k, dtype=np.int64)
            is_open = np.ones((len(rows), len(actions)), dtype=bool)
            for j in range(1, k + 1):
                is_open &= actions[None, :] != data.chosen[rows - j][:, None]
            hit_row, hit_action = np.nonzero(is_open)
            share = 1.0 / np.maximum(is_open.sum(axis=1), 1)
            parts.append((rows[hit_row], actions[hit_action], share[hit_row]))
    if not parts:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), np.zeros(0)
    return tuple(np.concatenate([p[f] for p in parts]) for f in range(3))  # type: ignore[return-value]


def _baseline_pairs(data: LoggedData) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row, baseline action, 1) where the baseline is still open (not shown in an earlier slot)."""
    n = len(data.chosen)
    open_ = np.ones(n, dtype=bool)
    for k in range(1, int(data.position.max(initial=0)) + 1):
        rows = np.flatnonzero(data.position == k)
        for j in range(1, k + 1):
            open_[rows] &= data.chosen[rows - j] != data.baseline[rows]
    rows = np.flatnonzero(open_)
    return rows, data.baseline[rows], np.ones(len(rows))


def _distribution_pairs(data: LoggedData, distributions: Sequence[Any], first_event: int = 0,
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row, action, probability) triples of a replayed policy's per-slot distributions.

    ``distributions``: per event from ``first_event`` on, each slot's [(action, probability), ...].
    """
    per_slot = list(itertools.chain.from_iterable(distributions))  # rows in order: events, then slots
    first_row = int(data.row_start[first_event]) if first_event < data.events else len(data.chosen)
    if first_row + len(per_slot) > len(data.chosen):
        raise ValueError("the replay's distributions do not match the log's rows")
    counts = np.array(list(map(len, per_slot)), dtype=np.int64)
    chain = itertools.chain.from_iterable
    pairs = np.fromiter(chain(chain(per_slot)), dtype=float).reshape(-1, 2)  # flat (action, probability) stream
    rows = np.repeat(np.arange(first_row, first_row + len(per_slot), dtype=np.int64), counts)
    return rows, pairs[:, 0].astype(np.int64), pairs[:, 1]


def _concatenate_pairs(chunks: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if not chunks:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), np.zeros(0)
    return tuple(np.concatenate([c[f] for c in chunks]) for f in range(3))  # type: ignore[return-value]


# ================================================================ replay of candidate policies

ProgressFn = Callable[[int, int], None]
CancelFn = Callable[[], bool]


def _needs_exact(tokens: Sequence[str]) -> bool:
    """Exploration algorithms whose learn-time scores are not the pre-update distribution."""
    return "--bag" in tokens or "--rnd" in tokens


class Replayer:
    """A candidate policy replaying the log in its own fresh workspace, a range of events at a time.

    ``run(lo, hi)`` must cover the events in order (0..n); ``pi`` fills as it goes.
    ``replay`` is the one-call form; benchmarks interleave ranges with other work.
    """

    def __init__(self, data: LoggedData, arguments: str, *, exact: bool | None = None,
                 keep_distributions: bool = False) -> None:
        tokens = parse_arguments(arguments)
        self.exact = _needs_exact(tokens) if exact is None else exact
        self.data = data
        self.vw = vw_workspace.build(tokens)
        self.pi = np.zeros(len(data.chosen))
        # With keep_distributions, per event: each slot's full distribution [(action, probability), ...]
        # (the DR direct term needs it); ``replay`` compacts them chunk by chunk.
        self.keep_distributions = keep_distributions
        self.distributions: list[Any] = [()] * data.events
        self._chosen = data.chosen.tolist()
        self._starts = data.row_start.tolist()

    def run(self, lo: int, hi: int) -> None:
        """Replay events ``lo..hi-1``: read each slot's distribution, then learn the event."""
        vw, pi, chosen, starts, data = self.vw, self.pi, self._chosen, self._starts, self.data
        learn, predict = vw_workspace.learn_scores, vw_workspace.predict
        if self.exact:
            slot_line = encoding.slot_line
            for i in range(lo, hi):
                head, bodies, allowed = data.encoded[i]
                r0 = starts[i]
                picks = chosen[r0: r0 + len(bodies)]
                dists = []
                for k in range(len(bodies)):
                    lines = list(head)
                    lines.extend(slot_line(bodies[j], [picks[j]]) for j in range(k))
                    lines.append(slot_line(bodies[k], allowed[k]))
                    dists.append(predict(vw, lines)[k])
                    pi[r0 + k] = _prob_of(dists[k], picks[k])
                if self.keep_distributions:
                    self.distributions[i] = dists
                learn(vw, data.examples[i])
            return
        examples = data.examples
        for i in range(lo, hi):
            scores = learn(vw, examples[i])  # CCB predicts each slot before it learns it: progressive validation
            if self.keep_distributions:
                self.distributions[i] = scores
            r0 = starts[i]
            for k, dist in enumerate(scores):
                c = chosen[r0 + k]
                for a, p in dist:
                    if a == c:
                        pi[r0 + k] = p
                        break

    def close(self, keep_model: bool = False) -> bytes | None:
        """Finish the workspace; returns the trained model with ``keep_model``."""
        try:
            return vw_workspace.save(self.vw) if keep_model else None
        finally:
            vw_workspace.finish(self.vw)


def replay(data: LoggedData, arguments: str, *, exact: bool | None = None, progress: ProgressFn | None = None,
           cancel: CancelFn | None = None, keep_model: bool = False,
           distributions: list[Any] | None = None) -> tuple[np.ndarray, bytes | None]:
    """Replay a candidate policy over the log in a fresh VW workspace (progressive validation).

    Returns ``pi`` (per row: the candidate's probability of the logged action, given the
    logged earlier slots, before learning that event) and, with ``keep_model``, the
    trained model. Raises PersonalizerError(InvalidPolicyConfiguration) for bad arguments,
    EvaluationCancelled when ``cancel()`` returns True (checked about every 1 % of events).
    ``distributions``, when given, receives the candidate's full distributions (for DR) as
    (row, action, probability) arrays, one tuple per chunk of events.
    """
    replayer = Replayer(data, arguments, exact=exact, keep_distributions=distributions is not None)
    total = data.events
    step = max(1, min(5000, total // 100))
    try:
        for lo in range(0, total, step):
            hi = min(lo + step, total)
            replayer.run(lo, hi)
            if distributions is not None:
                # Compact arrays per chunk: VW's Python lists would cost ~800 bytes an event.
                distributions.append(_distribution_pairs(data, replayer.distributions[lo:hi], lo))
                replayer.distributions[lo:hi] = [()] * (hi - lo)
            _tick(hi, total, progress, cancel)
    except BaseException:
        replayer.close()
        raise
    return replayer.pi, replayer.close(keep_model)


class EvaluationCancelled(Exception):
    """Raised by ``replay`` / ``evaluate`` when ``cancel()`` returned True."""


def _tick(done: int, total: int, progress: ProgressFn | None, cancel: CancelFn | None) -> None:
    if cancel is not None and cancel():
        raise EvaluationCancelled
    if progress is not None:
        progress(done, total)


def _prob_of(dist: Sequence[tuple[int, float]], action: int) -> float:
    for a, p in dist:
        if a == action:
            return float(p)
    return 0.0


# ================================================================ evaluation results

@dataclass
class PolicyEvaluation:
    """Estimates for one policy: per group (headline + each slot), per time bucket, both weightings.

    ``stats[weighting]`` has shape (fields, groups, buckets); group 0 is the headline
    (every event's first slot), group ``1 + j`` is ``slot_ids[j]``.
    """

    name: str
    source: str                    # Online | Baseline | Random | Custom | OfflineExperimentation
    arguments: str | None
    stats: dict[str, np.ndarray]   # "conditional" / "cascade"
    result: EvaluationResult = field(repr=False)
    model: bytes | None = field(default=None, repr=False)

    def estimate(self, slot: str | None = None, *, weighting: str = "conditional",
                 start: float | None = None, end: float | None = None) -> Estimate:
        """Estimate for ``slot`` (None: the headline first slot) over buckets in [start, end).

        The headline interval is Cressie-Read, except for a later slot's ``conditional`` weights:
        they are no importance weights of any policy's page (their mean is not 1), which the
        likelihood interval assumes, so it reads as the Gaussian (SNIPS) interval there.
        Cascade weights (the unbiased later-slot numbers) keep Cressie-Read.
        """
        g = self.result.group(slot)
        lo, hi = self.result.bucket_range(start, end)
        later = bool(slot) and self.result.slot_positions.get(slot or "", 0) > 0
        kind = "gaussian" if weighting == "conditional" and later else HEADLINE_INTERVAL
        return _from_stats(_merge(self.stats[weighting][:, g, lo:hi]), self.result.confidence,
                           self.result.reward_range, kind)

    @property
    def headline(self) -> Estimate:
        """The first slot's estimate (unbiased for multi-slot)."""
        return self.estimate()

    def slots(self, weighting: str = "conditional") -> dict[str, Estimate]:
        """Per-slot estimates, in slot order."""
        return {s: self.estimate(s, weighting=weighting) for s in self.result.slot_ids}


def _merge(s: np.ndarray) -> np.ndarray:
    """Merge statistics over the last axis (sums, and max for the max weight)."""
    out = s.sum(axis=-1)
    for f in _MAX_FIELDS:
        out[f] = s[f].max(axis=-1, initial=0.0)
    return out


@dataclass
class EvaluationResult:
    """The outcome of ``evaluate``: policies, time buckets and what the log held."""

    slot_ids: list[str]
    slot_positions: dict[str, int]
    bucket_start: float
    bucket_seconds: float
    buckets: int
    confidence: float
    reward_range: tuple[float, float]
    events: int
    skipped: int
    deterministic_share: float
    start: float | None = None
    end: float | None = None
    policies: list[PolicyEvaluation] = field(default_factory=list)

    # ---------------------------------------------------------------- lookup
    def group(self, slot: str | None) -> int:
        """Statistics group of a slot id (None or "": the headline)."""
        if not slot:
            return 0
        try:
            return 1 + self.slot_ids.index(slot)
        except ValueError:
            raise KeyError(f"no slot '{slot}' in the evaluated events") from None

    def bucket_range(self, start: float | None, end: float | None) -> tuple[int, int]:
        """Indices [lo, hi) of the buckets that overlap [start, end)."""
        lo = 0 if start is None else max(0, math.floor((start - self.bucket_start) / self.bucket_seconds + 1e-9))
        hi = self.buckets if end is None else min(
            self.buckets, max(0, math.ceil((end - self.bucket_start) / self.bucket_seconds - 1e-9)))
        return lo, max(lo, hi)

    def policy(self, name: str) -> PolicyEvaluation:
        """The result of the policy named ``name``."""
        for p in self.policies:
            if p.name == name:
                return p
        raise KeyError(name)

    @property
    def optimal_policy(self) -> str | None:
        """The applicable policy (Online or a custom one) with the best headline SNIPS estimate."""
        best: tuple[float, int] | None = None
        name = None
        for i, p in enumerate(self.policies):
            if p.source in ("Online", "Custom", "OfflineExperimentation"):
                v = p.headline.snips
                if math.isfinite(v) and (best is None or (v, -i) > best):
                    best, name = (v, -i), p.name
        return name

    # ---------------------------------------------------------------- wire shapes
    def window_label(self) -> str:
        """The bucket width as an ISO-8601 duration (PT5M, PT1H, P1D...)."""
        return _duration(self.bucket_seconds)

    def policy_results(self) -> list[dict[str, Any]]:
        """v1.1-preview.1 ``PolicyResult`` list: summary per time bucket, totalSummary = headline.

        Extra field ``slots``: per-slot total summaries with both weightings.
        """
        out = []
        window = self.window_label()
        for p in self.policies:
            cond = p.stats["conditional"]
            summary = []
            for b in range(self.buckets):
                s = cond[:, 0, b]
                if s[_N] == 0:
                    continue
                ts = _iso(self.bucket_start + (b + 1) * self.bucket_seconds)
                summary.append(_from_stats(s, self.confidence, self.reward_range).summary(ts, window))
            total = p.headline.summary(_iso(self.end) if self.end is not None else None)
            slots = []
            for sid in self.slot_ids:
                c = p.estimate(sid).summary()
                c.update(slotId=sid, position=self.slot_positions[sid],
                         cascade=p.estimate(sid, weighting="cascade").summary())
                slots.append(c)
            out.append({"name": p.name, "arguments": p.arguments or "", "policySource": p.source,
                        "summary": summary, "totalSummary": total, "slots": slots})
        return out

    def policy_results_2022(self, interval_minutes: int | None = None, start: float | None = None,
                            end: float | None = None, window: str = "Expanding") -> list[dict[str, Any]]:
        """2022-09-01-preview ``PolicyResult`` rows: the headline (slotId "") and one per slot.

        ``timeseries`` holds one point per ``interval_minutes`` (5, 60, 360, 720 or 1440;
        default: the finest available) within [start, end): cumulative from ``start``
        (``Expanding``) or per interval (``Rolling``). A later slot's row uses cascade weights
        (unbiased for the policy's own page) with the Cressie-Read interval; the first slot's
        weights are the same either way.
        """
        step = self._step(interval_minutes)
        lo, hi = self.bucket_range(start, end)
        rows = []
        for p in self.policies:
            for sid in [None, *self.slot_ids]:
                weighting = "cascade" if sid and self.slot_positions.get(sid, 0) > 0 else "conditional"
                g = self.group(sid)
                s = p.stats[weighting][:, g, lo:hi]
                total = _from_stats(_merge(s), self.confidence, self.reward_range)
                data = []
                for a in range(0, hi - lo, step):
                    b = min(a + step, hi - lo)
                    part = s[:, :b] if window.lower() == "expanding" else s[:, a:b]
                    e = _from_stats(_merge(part), self.confidence, self.reward_range)
                    if part[_N].sum() == 0:
                        continue
                    data.append({"timeStamp": _iso(self.bucket_start + (lo + b) * self.bucket_seconds),
                                 "expectedReward": _finite(e.snips),
                                 "confidenceInterval": [_finite(v) for v in e.interval]})
                rows.append({
                    "name": p.name, "slotId": sid or "", "arguments": p.arguments or "", "policySource": p.source,
                    "summary": {"expectedReward": _finite(total.snips),
                                "confidenceInterval": [_finite(v) for v in total.interval],
                                "events": total.events},
                    "timeseries": {"data": data},
                })
        return rows

    def _step(self, interval_minutes: int | None) -> int:
        if interval_minutes is None:
            return 1
        if interval_minutes not in INTERVALS_MINUTES:
            raise PersonalizerError("BadRequest", f"intervalInMinutes must be one of {list(INTERVALS_MINUTES)}")
        return max(1, round(interval_minutes * 60 / self.bucket_seconds))

    # ---------------------------------------------------------------- persistence
    def to_json(self) -> dict[str, Any]:
        """Plain JSON (statistics as nested lists; models are not kept)."""
        return {
            "slotIds": self.slot_ids, "slotPositions": self.slot_positions, "bucketStart": self.bucket_start,
            "bucketSeconds": self.bucket_seconds, "buckets": self.buckets, "confidence": self.confidence,
            "rewardRange": list(self.reward_range), "events": self.events, "skipped": self.skipped,
            "deterministicShare": self.deterministic_share, "start": self.start, "end": self.end,
            "policies": [{"name": p.name, "source": p.source, "arguments": p.arguments,
                          "stats": {k: v.tolist() for k, v in p.stats.items()}} for p in self.policies],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EvaluationResult:
        """Inverse of ``to_json``."""
        res = cls(slot_ids=data["slotIds"], slot_positions=data["slotPositions"], bucket_start=data["bucketStart"],
                  bucket_seconds=data["bucketSeconds"], buckets=data["buckets"], confidence=data["confidence"],
                  reward_range=tuple(data["rewardRange"]), events=data["events"], skipped=data["skipped"],
                  deterministic_share=data["deterministicShare"], start=data.get("start"), end=data.get("end"))
        for p in data["policies"]:
            stats = {k: _upgrade_stats(np.asarray(v, dtype=float).reshape(-1, len(res.slot_ids) + 1, res.buckets))
                     for k, v in p["stats"].items()}
            res.policies.append(PolicyEvaluation(p["name"], p["source"], p["arguments"], stats, res))
        return res


def _upgrade_stats(s: np.ndarray) -> np.ndarray:
    """Statistics saved before the weight bound and DR fields: unknown bound (0), DR = IPS."""
    if s.shape[0] == _FIELDS:
        return s
    out = np.zeros((_FIELDS, *s.shape[1:]))
    out[: s.shape[0]] = s
    out[_WB] = 0.0
    out[_SD], out[_SD2] = s[_SWR], s[_SW2R2]
    return out


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    if s % 86400 == 0:
        return f"P{s // 86400}D"
    if s % 3600 == 0:
        return f"PT{s // 3600}H"
    if s % 60 == 0:
        return f"PT{s // 60}M"
    return f"PT{s}S"


def _bucket_seconds(first: float, last: float) -> float:
    """The finest 2022-API interval that keeps the number of buckets small."""
    span = max(last - first, 1.0)
    for minutes in INTERVALS_MINUTES:
        if span / (minutes * 60) <= _MAX_BUCKETS:
            return minutes * 60.0
    return math.ceil(span / _MAX_BUCKETS / 86400) * 86400.0


def _policy_stats(data: LoggedData, w: np.ndarray, groups: int, bucket: np.ndarray, buckets: int,
                  bound: np.ndarray, dr: np.ndarray | None = None) -> np.ndarray:
    """Sufficient statistics (fields, groups, buckets) of weights ``w`` over the data's rows.

    ``bound``: per row, the largest weight the policy could have given it; ``dr``: per row,
    the doubly robust term (default: the IPS term).
    """
    r = data.reward
    # Every row counts in its slot's group; first-position rows also in the headline group 0.
    first = np.flatnonzero(data.position == 0)
    rows = np.concatenate([first, np.arange(len(w))])
    gidx = np.concatenate([np.zeros(len(first), dtype=np.int64), data.slot + 1])
    idx = gidx * buckets + bucket[rows]
    ww, rr = w[rows], r[rows]
    wr = ww * rr
    dd = wr if dr is None else dr[rows]
    size = groups * buckets
    out = np.zeros((_FIELDS, size))
    for f, vals in ((_N, None), (_SW, ww), (_SWR, wr), (_SW2, ww * ww), (_SW2R, ww * wr), (_SW2R2, wr * wr),
                    (_NZ, (ww > 0).astype(float)), (_SD, dd), (_SD2, dd * dd)):
        out[f] = np.bincount(idx, weights=vals, minlength=size)
    np.maximum.at(out[_WMAX], idx, ww)
    np.maximum.at(out[_WB], idx, bound[rows])
    return out.reshape(_FIELDS, groups, buckets)


def evaluate(
    events: Iterable[LoggedEvent] | LoggedData,
    policies: Sequence[dict[str, str]] = (),
    *,
    online_arguments: str | None = None,
    include: Sequence[str] = BUILTIN_POLICIES,
    confidence: float = 0.95,
    bucket_seconds: float | None = None,
    start: float | None = None,
    end: float | None = None,
    exact: bool | None = None,
    keep_models: bool = False,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
) -> EvaluationResult:
    """Estimate the built-in policies (``include``) and replay each ``{"name", "arguments"}`` policy.

    A policy dict may carry ``"source"`` (default ``Custom``). ``progress(done, total)``
    counts events replayed over all candidates; ``cancel()`` returning True aborts.
    """
    data = events if isinstance(events, LoggedData) else prepare(events)
    if data.events == 0:
        raise PersonalizerError("NoLogsExistInDateRange", "no rewarded events in the date range", 400)
    first, last = float(data.created.min()), float(data.created.max())
    width = bucket_seconds or _bucket_seconds(first, last)
    origin = math.floor(first / width) * width
    bucket_of_event = np.floor((data.created - origin) / width).astype(np.int64)
    buckets = int(bucket_of_event.max()) + 1
    bucket = bucket_of_event[data.event_of_row]
    groups = len(data.slot_ids) + 1
    positions: dict[str, int] = {}
    for code, sid in enumerate(data.slot_ids):
        pos = data.position[data.slot == code]
        positions[sid] = int(np.bincount(pos).argmax())
    result = EvaluationResult(
        slot_ids=list(data.slot_ids), slot_positions=positions, bucket_start=origin, bucket_seconds=width,
        buckets=buckets, confidence=confidence, reward_range=data.reward_range, events=data.events,
        skipped=data.skipped, deterministic_share=data.deterministic_share, start=start, end=end,
    )

    bound = 1.0 / data.probability
    cascade_bound = _cascade_bound(data)
    model = _RewardModel(data) if data.encoded and len(data.baseline) == len(data.chosen) else None

    def add(name: str, source: str, arguments: str | None, pi: np.ndarray, trained: bytes | None = None,
            pairs: Callable[[], tuple[np.ndarray, np.ndarray, np.ndarray]] | None = None) -> None:
        w = pi / data.probability
        dr = model.dr_terms(w, *pairs()) if model is not None and pairs is not None else None
        stats = {"conditional": _policy_stats(data, w, groups, bucket, buckets, bound, dr),
                 # DR is per slot (conditional); whole-page cascade terms stay IPS.
                 "cascade": _policy_stats(data, _cascade(data, w), groups, bucket, buckets, cascade_bound)}
        result.policies.append(PolicyEvaluation(name, source, arguments, stats, result, trained))

    if "Online" in include:
        add("Online", "Online", online_arguments, data.probability.copy())  # w = 1: what was earned
    if "Baseline" in include:
        add("Baseline", "Baseline", None, data.is_baseline.astype(float), pairs=lambda: _baseline_pairs(data))
    if "Random" in include:
        add("Random", "Random", None, 1.0 / np.maximum(data.open_actions, 1), pairs=lambda: _open_actions(data))
    total = data.events * len(policies)
    for j, pol in enumerate(policies):
        offset = j * data.events

        def step(done: int, _n: int, offset: int = offset) -> None:
            if progress is not None:
                progress(offset + done, total)

        chunks: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        pi, trained = replay(data, pol["arguments"], exact=exact, progress=step, cancel=cancel,
                             keep_model=keep_models, distributions=chunks)
        add(pol["name"], pol.get("source", "Custom"), pol["arguments"], pi, trained,
            pairs=lambda c=chunks: _concatenate_pairs(c))
    return result


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


def _log_range(engine: Personalizer) -> tuple[float, float] | None:
    rng = engine.log_properties().get("dateRange")
    if not rng or rng.get("from") is None:
        return None
    return _timestamp(rng["from"], "from"), _timestamp(rng["to"], "to")


def _engine_events(engine: LocalEngine, start: float | None = None, end: float | None = None,
                   chunk: int = 2000) -> Iterator[LoggedEvent]:
    """Stream an engine's events ranked in [start, end) in time windows of about ``chunk`` events.

    ``engine.events`` holds the engine's lock while it reads; reading a big range in one
    call would stall rank and reward for seconds, so the range is read window by window
    (the window adapts to the traffic). Events come in time order.
    """
    rng = _log_range(engine)
    if rng is None:
        return
    # dateRange is ISO text (microseconds): widen it a little so rounding never drops an event.
    lo = max(start if start is not None else -math.inf, rng[0] - 1e-3)
    hi = min(end if end is not None else math.inf, rng[1] + 1e-3)
    width = max((hi - lo) / 64, 1.0)
    t = lo
    while t < hi:
        stop = min(t + width, hi)
        batch = engine.events(t, stop)
        if len(batch) > 2 * chunk and width > 1e-3:
            width /= 4  # too many at once: read this window again, smaller
            continue
        yield from batch
        t = stop
        if len(batch) < chunk // 2:
            width *= 2


def recent_events(engine: LocalEngine, n: int, keep: Callable[[LoggedEvent], bool]) -> list[LoggedEvent]:
    """The newest ``n`` events passing ``keep``, oldest first, reading back from the log's end."""
    rng = _log_range(engine)
    if rng is None:
        return []
    first, hi = rng[0] - 1e-3, rng[1] + 1e-3
    width = 600.0
    found: list[list[LoggedEvent]] = []
    count = 0
    while count < n and hi > first:
        lo = max(hi - width, first)
        batch = [e for e in engine.events(lo, hi) if keep(e)]
        found.append(batch)
        count += len(batch)
        hi = lo
        width *= 2
    out = [e for batch in reversed(found) for e in batch]
    return out[-n:]


# ================================================================ evaluations manager

_STATUS_V1 = {"notSubmitted": "notSubmitted", "pending": "pending", "running": "pending",
              "succeeded": "completed", "failed": "failed", "optimalPolicyApplied": "optimalPolicyApplied",
              "onlinePolicyRetained": "onlinePolicyRetained"}
_STATUS_2022 = {"notSubmitted": "NotSubmitted", "pending": "Running", "running": "Running",
                "succeeded": "Succeeded", "failed": "Failed", "optimalPolicyApplied": "OptimalPolicyApplied",
                "onlinePolicyRetained": "OnlinePolicyRetained"}
API_V1 = "v1.1-preview.1"
API_2022 = "2022-09-01-preview"
_ID_OK = re.compile(r"^[^\x00-\x1f/\\?#]{1,256}$")


@dataclass
class _Record:
    id: str
    name: str
    start: float
    end: float
    policies: list[dict[str, str]]
    online_policy: dict[str, str]
    created: float
    evaluation_type: str = "Manual"
    offline_experimentation: bool = False
    status: str = "notSubmitted"
    message: str = ""
    progress: float = 0.0
    result: EvaluationResult | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)


def _timestamp(value: Any, what: str) -> float:
    """Epoch seconds from epoch numbers, datetimes or ISO-8601 strings (naive means UTC)."""
    if isinstance(value, bool):
        raise PersonalizerError("InvalidEvaluationContract", f"{what} must be a date-time")
    if isinstance(value, (int, float)):
        # Epoch seconds a datetime can show (years 1..9999); 1e308 or a huge int is a 400, not an overflow.
        if not _MIN_EPOCH <= value <= _MAX_EPOCH:
            raise PersonalizerError("InvalidEvaluationContract", f"{what} is outside the years 1..9999")
        return float(value)
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(check_text(value, what).strip())
        except ValueError:
            raise PersonalizerError("InvalidEvaluationContract",
                                    f"{what} '{value[:64]!a}' is not an ISO-8601 date-time") from None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        try:
            return value.timestamp()
        except (OverflowError, ValueError, OSError):
            raise PersonalizerError("InvalidEvaluationContract", f"{what} is outside the years 1..9999") from None
    raise PersonalizerError("InvalidEvaluationContract", f"{what} is required (an ISO-8601 date-time)")


_evaluations_log = logging.getLogger(__name__)
_MIN_EPOCH = datetime(1, 1, 2, tzinfo=UTC).timestamp()
_MAX_EPOCH = datetime(9999, 12, 30, tzinfo=UTC).timestamp()


class Evaluations:
    """Offline evaluations of an engine's log, run one at a time on a background thread.

    Thread-safe. Results live in memory and, with ``persist`` (default), in the engine's
    SQLite database, one row per evaluation (``engine.records("evaluation")``), so the log,
    the model and the evaluations are one store with one backup; evaluations interrupted
    by a restart run again. A stored record that cannot be loaded or shown is left out of
    the listing (logged once) and can still be deleted by its id. An ``evaluations.json``
    written by earlier versions is imported once and renamed ``evaluations.json.migrated``.
    ``events`` overrides where events come from: ``events(start, end) -> iterable``.
    """

    def __init__(self, engine: LocalEngine, *, persist: bool = True,
                 events: Callable[[float, float], Iterable[LoggedEvent]] | None = None,
                 clock: Callable[[], float] | None = None) -> None:
        self._engine = engine
        self._events = events or (lambda start, end: _engine_events(engine, start, end))
        self._clock = clock or time.time
        self._lock = threading.RLock()
        self._records: dict[str, _Record] = {}
        self._models: dict[tuple[str, str], bytes] = {}
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._worker: threading.Thread | None = None
        self._closed = False
        self._store: LocalEngine | None = engine if persist else None
        self._unreadable: set[str] = set()  # stored ids that failed to load or render (logged once each)
        self._load()

    # ---------------------------------------------------------------- API
    def create(self, evaluation_id: str | None, name: str, start: Any, end: Any,
               policies: Sequence[dict[str, str]] = (), *, enable_offline_experimentation: bool = False,
               evaluation_type: str = "Manual") -> dict[str, Any]:
        """Validate and queue an evaluation; returns it (status ``pending``). ``evaluation_id`` None: generated.

        Policies are evaluated as written, except that one without ``--epsilon`` explores
        at the engine's ``explorationPercentage``, as the engine would run it once applied
        (its result's ``arguments`` show what was evaluated).
        """
        evaluation_id = evaluation_id if evaluation_id is not None else uuid.uuid4().hex
        if not isinstance(evaluation_id, str) or not _ID_OK.match(evaluation_id):
            raise PersonalizerError("InvalidEvaluationContract",
                                    "evaluation id must be 1..256 characters without '/', '\\', '?', '#' or controls")
        if not isinstance(name, str) or not name.strip() or len(name) > 256:
            raise PersonalizerError("InvalidEvaluationContract", "name must be a non-empty string of <= 256 characters")
        try:  # a name that cannot be encoded could never be stored or listed
            check_text(name, "name")
        except ValueError as exc:
            raise PersonalizerError("InvalidEvaluationContract", str(exc)) from None
        t0 = _timestamp(start, "startTime")
        t1 = _timestamp(end, "endTime")
        if t1 <= t0:
            raise PersonalizerError("InvalidEvaluationContract", "endTime must be after startTime")
        clean = self._check_policies(policies, self._exploration())
        if enable_offline_experimentation:
            taken = {p["name"].casefold() for p in clean}
            clean += [{"name": n, "arguments": a, "source": "OfflineExperimentation"}
                      for n, a in PRESET_POLICIES.items() if n.casefold() not in taken]
        with self._lock:
            if evaluation_id in self._records:
                raise PersonalizerError("EvaluationAlreadyExists", f"evaluation '{evaluation_id}' already exists", 409)
        if not self._has_events(t0, t1):
            raise PersonalizerError("NoLogsExistInDateRange",
                                    f"no rewarded events between {_iso(t0)} and {_iso(t1)}", 400)
        online = self._online_policy()
        with self._lock:
            if evaluation_id in self._records:
                raise PersonalizerError("EvaluationAlreadyExists", f"evaluation '{evaluation_id}' already exists", 409)
            rec = _Record(evaluation_id, name, t0, t1, clean, online, self._clock(), evaluation_type,
                          enable_offline_experimentation, status="pending")
            self._save(rec)  # first: a failed write (a full disk) leaves no half-created evaluation
            self._records[evaluation_id] = rec
            self._submit(evaluation_id)
            return self._render(rec, API_V1)

    def get(self, evaluation_id: str, *, api_version: str = API_V1, interval_minutes: int | None = None,
            start: Any = None, end: Any = None, window: str = "Expanding") -> dict[str, Any]:
        """The evaluation in the shape of ``api_version`` (v1.1-preview.1 or 2022-09-01-preview)."""
        # Checked here, not only when results exist: a bad query is a 400 while the evaluation runs too.
        if interval_minutes is not None and interval_minutes not in INTERVALS_MINUTES:
            raise PersonalizerError("BadRequest", f"intervalInMinutes must be one of {list(INTERVALS_MINUTES)}")
        if not isinstance(window, str) or window.lower() not in ("expanding", "rolling"):
            raise PersonalizerError("BadRequest", "window must be Expanding or Rolling")
        with self._lock:
            rec = self._get(evaluation_id)
            return self._render(rec, api_version, interval_minutes,
                                None if start is None else _timestamp(start, "startTime"),
                                None if end is None else _timestamp(end, "endTime"), window)

    def list(self, *, api_version: str = API_V1) -> list[dict[str, Any]]:
        """Every evaluation, oldest first (2022 shape: details without results)."""
        with self._lock:
            recs = sorted(self._records.values(), key=lambda r: r.created)
            shown = []
            for rec in recs:
                if rec.id in self._unreadable:
                    continue
                try:
                    item = self._details(rec) if api_version == API_2022 else self._render(rec, api_version)
                    _check_encodable(item)
                except Exception as exc:  # one bad record must not break the listing of the others
                    self._set_aside(rec.id, exc)
                    continue
                shown.append(item)
            return shown

    def delete(self, evaluation_id: str) -> None:
        """Delete an evaluation; a running one is cancelled."""
        with self._lock:
            if evaluation_id in self._unreadable and evaluation_id not in self._records:
                if self._store is not None:
                    self._store.delete_record("evaluation", evaluation_id)
                self._unreadable.discard(evaluation_id)
                return
            rec = self._get(evaluation_id)
            if self._store is not None:
                self._store.delete_record("evaluation", evaluation_id)
            rec.cancel.set()
            del self._records[evaluation_id]
            self._unreadable.discard(evaluation_id)
            for key in [k for k in self._models if k[0] == evaluation_id]:
                del self._models[key]

    def result(self, evaluation_id: str) -> EvaluationResult | None:
        """The Python result object (None until the evaluation succeeded)."""
        with self._lock:
            return self._get(evaluation_id).result

    def wait(self, evaluation_id: str, timeout: float | None = None) -> dict[str, Any]:
        """Block until the evaluation finished (or ``timeout``); returns it."""
        with self._lock:
            rec = self._get(evaluation_id)
        rec.done.wait(timeout)
        return self.get(evaluation_id)

    def policy(self, evaluation_id: str, policy_name: str) -> dict[str, str]:
        """``{"name", "arguments"}`` of a policy of a finished evaluation (for applyFromEvaluation)."""
        with self._lock:
            rec = self._get(evaluation_id)
            if rec.result is None:
                raise PersonalizerError("EvaluationModelNotFound",
                                        f"evaluation '{evaluation_id}' has no results (status {rec.status})", 404)
            if policy_name == "Online":
                return dict(rec.online_policy)
            try:
                p = rec.result.policy(policy_name)
            except KeyError:
                raise PersonalizerError("LearningSettingsNotFound",
                                        f"evaluation '{evaluation_id}' has no policy '{policy_name}'", 404) from None
            if p.arguments is None:
                raise PersonalizerError("LearningSettingsNotFound",
                                        f"policy '{policy_name}' is a reference policy, not learning settings", 400)
            return {"name": p.name, "arguments": p.arguments}

    def apply(self, evaluation_id: str, policy_name: str | None = None, *, with_model: bool = True,
              who: str = "api") -> dict[str, Any]:
        """applyFromEvaluation: make a policy of the evaluation (default: its optimal one) the engine's.

        Sets the learning settings, and the exploration percentage to the policy's own
        ``--epsilon`` so the engine runs what was evaluated; with ``with_model`` the model
        the replay trained is imported (while this process still holds it), else the
        model starts fresh. Choosing ``Online`` keeps the current settings.
        The change is recorded in the engine's policy history with the evaluation's id and
        the policy's estimated lift over the online policy; ``who``: auto | person | api.
        Returns the engine's policy.
        """
        with self._lock:
            rec = self._get(evaluation_id)
            if rec.result is None:
                raise PersonalizerError("EvaluationModelNotFound",
                                        f"evaluation '{evaluation_id}' has no results (status {rec.status})", 404)
            name = policy_name or rec.result.optimal_policy or "Online"
            chosen = self.policy(evaluation_id, name)
            model = self._models.get((evaluation_id, name)) if with_model else None
            details = estimate_details(rec.result, name)
        if name == "Online":
            status = "onlinePolicyRetained"
        else:
            epsilon = option_value(parse_arguments(chosen["arguments"]), "--epsilon")
            note = ChangeNote(who, "auto" if who == "auto" else "evaluation", evaluation_id,
                              None if details is None else {"estimate": details})
            self._engine.update_policy(chosen, exploration_percentage=None if epsilon is None else float(epsilon),
                                       note=note)
            if model is not None:
                self._engine.import_model(model)
            status = "optimalPolicyApplied"
        with self._lock:
            if evaluation_id in self._records:
                self._records[evaluation_id].status = status
                self._save_quietly(self._records[evaluation_id])
        return self._engine.get_policy()

    def close(self) -> None:
        """Stop the worker (a running evaluation is cancelled and will run again on restart)."""
        with self._lock:
            self._closed = True
            for rec in self._records.values():
                if rec.status in ("pending", "running"):
                    rec.cancel.set()
            worker = self._worker
        self._queue.put(None)
        if worker is not None:
            worker.join(timeout=30)

    def __enter__(self) -> Evaluations:
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()

    # ---------------------------------------------------------------- validation
    def _exploration(self) -> float:
        return float(self._engine.get_service_configuration().get("explorationPercentage", DEFAULT_EXPLORATION))

    def _check_policies(self, policies: Sequence[dict[str, str]], exploration: float | None) -> list[dict[str, str]]:
        if policies is None:
            policies = []
        if not isinstance(policies, (list, tuple)):
            raise PersonalizerError("InvalidEvaluationContract", "policies must be a list of {name, arguments}")
        if len(policies) > MAX_CUSTOM_POLICIES:
            raise PersonalizerError("InvalidEvaluationContract",
                                    f"at most {MAX_CUSTOM_POLICIES} policies per evaluation, got {len(policies)}")
        seen: set[str] = {n.casefold() for n in BUILTIN_POLICIES}
        clean = []
        for i, p in enumerate(policies):
            if not isinstance(p, dict):
                raise PersonalizerError("InvalidEvaluationContract", f"policies[{i}] must be an object")
            name, args = p.get("name"), p.get("arguments")
            if not isinstance(name, str) or not name.strip() or len(name) > 256:
                raise PersonalizerError("InvalidPolicyContract", f"policies[{i}].name must be 1..256 characters")
            if not isinstance(args, str) or len(args) > 1024:
                raise PersonalizerError("InvalidPolicyContract",
                                        f"policies[{i}].arguments must be a string of <= 1024 characters")
            if name.casefold() in seen:
                why = " (a built-in policy name)" if name.casefold() in {n.casefold() for n in BUILTIN_POLICIES} else ""
                raise PersonalizerError("DuplicateCustomPolicyNames", f"policy name '{name}' is used twice{why}")
            seen.add(name.casefold())
            tokens = parse_arguments(args)
            if "--epsilon" not in tokens and exploration is not None:
                args = effective_arguments(args, exploration)
            # VW's own checks, and crashes or freezes in a child process, not in the server.
            trial.trial_policy(" ".join(parse_arguments(args)))
            clean.append({"name": name, "arguments": args, "source": "Custom"})
        return clean

    def _has_events(self, start: float, end: float) -> bool:
        events = iter(self._events(start, end))
        try:
            return any(ev.labels is not None and ev.status not in ("pending", "discarded") for ev in events)
        finally:
            close = getattr(events, "close", None)
            if close is not None:
                close()  # a generator reading the log releases its connection now

    def _online_policy(self) -> dict[str, str]:
        return dict(self._engine.get_policy())

    def _get(self, evaluation_id: str) -> _Record:
        rec = self._records.get(evaluation_id)
        if rec is None:
            raise PersonalizerError("EvaluationNotFound", f"no evaluation '{evaluation_id}'", 404)
        return rec

    # ---------------------------------------------------------------- worker
    def _submit(self, evaluation_id: str) -> None:
        if self._closed:
            return
        if self._worker is None or not self._worker.is_alive():
            self._worker = threading.Thread(target=self._work, name="personalizer-evaluations", daemon=True)
            self._worker.start()
        self._queue.put(evaluation_id)

    def _work(self) -> None:
        while True:
            evaluation_id = self._queue.get()
            if evaluation_id is None:
                return
            with self._lock:
                rec = self._records.get(evaluation_id)
                if rec is None or rec.status != "pending" or rec.cancel.is_set():
                    continue
                rec.status = "running"
            self._run(rec)

    def _run(self, rec: _Record) -> None:
        def progress(done: int, total: int) -> None:
            rec.progress = 0.1 + 0.9 * done / total if total else 1.0

        try:
            data = prepare(self._events(rec.start, rec.end))
            rec.progress = 0.1
            policies = [{"name": p["name"], "arguments": p["arguments"], "source": p.get("source", "Custom")}
                        for p in rec.policies]
            result = evaluate(data, policies, online_arguments=rec.online_policy.get("arguments"),
                              start=rec.start, end=rec.end, keep_models=True, progress=progress,
                              cancel=rec.cancel.is_set)
        except EvaluationCancelled:
            rec.done.set()
            return
        except PersonalizerError as exc:
            self._finish(rec, "failed", f"{exc.code}: {exc.message}")
            return
        except Exception as exc:  # a background job must record, not raise
            self._finish(rec, "failed", f"{type(exc).__name__}: {exc}")
            return
        with self._lock:
            for p in result.policies:
                if p.model is not None and rec.id in self._records:
                    self._models[(rec.id, p.name)] = p.model
                p.model = None
        rec.result = result
        self._finish(rec, "succeeded", "")

    def _finish(self, rec: _Record, status: str, message: str) -> None:
        with self._lock:
            rec.status = status
            rec.message = message
            rec.progress = 1.0
            if rec.id in self._records:
                self._save_quietly(rec)
        rec.done.set()

    # ---------------------------------------------------------------- rendering
    def _render(self, rec: _Record, api_version: str, interval_minutes: int | None = None,
                start: float | None = None, end: float | None = None, window: str = "Expanding") -> dict[str, Any]:
        if api_version == API_2022:
            out = self._details(rec)
            out["optimalPolicy"] = rec.result.optimal_policy if rec.result else None
            out["description"] = rec.message or _describe(rec)
            if rec.result is not None:
                s = rec.start if start is None else start
                e = rec.end if end is None else end
                out["content"] = {
                    "startTime": _iso(s), "endTime": _iso(e),
                    "intervalInMinutes": interval_minutes or int(rec.result.bucket_seconds // 60),
                    "value": rec.result.policy_results_2022(interval_minutes, s, e, window),
                }
            return out
        if api_version != API_V1:
            raise PersonalizerError("BadRequest", f"unknown api version '{api_version}'")
        res = rec.result
        return {
            "id": rec.id, "name": rec.name, "startTime": _iso(rec.start), "endTime": _iso(rec.end), "jobId": rec.id,
            "status": _STATUS_V1[rec.status], "policyResults": res.policy_results() if res else [],
            "featureImportance": [], "evaluationType": rec.evaluation_type,
            "optimalPolicy": res.optimal_policy if res else None, "creationTime": _iso(rec.created),
            # Extensions (clients ignore unknown fields):
            "progress": round(rec.progress, 4), "message": rec.message or _describe(rec),
            "events": res.events if res else None,
            "deterministicShare": res.deterministic_share if res else None,
        }

    def _details(self, rec: _Record) -> dict[str, Any]:
        return {"id": rec.id, "name": rec.name, "startTime": _iso(rec.start), "endTime": _iso(rec.end),
                "creationTime": _iso(rec.created), "status": _STATUS_2022[rec.status],
                "evaluationType": rec.evaluation_type, "progress": round(rec.progress, 4)}

    # ---------------------------------------------------------------- persistence
    def _save(self, rec: _Record) -> None:
        """Write one evaluation's row (raises the store's error, e.g. 507 on a full disk)."""
        if self._store is not None:
            self._store.save_record("evaluation", rec.id, rec.created, json.dumps(_record_item(rec)))

    def _save_quietly(self, rec: _Record) -> None:
        """Write a status change the caller cannot undo; a failed write is logged (a restart re-runs it)."""
        try:
            self._save(rec)
        except PersonalizerError as exc:
            _evaluations_log.warning("evaluation %s: saving its status failed: %s", ascii(rec.id), exc.message)

    def _set_aside(self, evaluation_id: str, exc: BaseException) -> None:
        if evaluation_id not in self._unreadable:
            self._unreadable.add(evaluation_id)
            _evaluations_log.warning("evaluation %s cannot be loaded or shown and is left out of the listing "
                                     "(delete it by its id): %s", ascii(evaluation_id), ascii(str(exc))[:300])

    def _load(self) -> None:
        if self._store is None:
            return
        self._import_json_file()
        rerun = []
        for evaluation_id, text in self._store.records("evaluation"):
            try:
                item = json.loads(text)
                _check_encodable(item)
                rec = _record_from_item(item)
                if rec.id != evaluation_id:
                    raise ValueError(f"the record's id {ascii(rec.id)} differs from its row's")
            except Exception as exc:  # one bad record must not stop the others from loading
                self._set_aside(evaluation_id, exc)
                continue
            if rec.result is None and rec.status in ("pending", "running", "notSubmitted"):
                rec.status = "pending"  # interrupted by a restart: run again
                rerun.append(rec.id)
            self._records[rec.id] = rec
        for evaluation_id in rerun:
            self._submit(evaluation_id)

    def _import_json_file(self) -> None:
        """Move evaluations from the ``evaluations.json`` of earlier versions into the database, once."""
        path = Path(self._engine.home) / "evaluations.json"
        if self._store is None or not path.exists():
            return
        try:
            items = json.loads(path.read_text(encoding="utf-8")).get("evaluations", [])
        except (OSError, ValueError, AttributeError) as exc:  # keep it aside, start without it
            _evaluations_log.warning("%s is unreadable and was not imported: %s", path, exc)
            path.replace(path.with_name(path.name + ".unreadable"))
            return
        known = {evaluation_id for evaluation_id, _ in self._store.records("evaluation")}
        for item in items:
            try:
                if item["id"] not in known:
                    self._store.save_record("evaluation", str(item["id"]), float(item["created"]), json.dumps(item))
            except (KeyError, TypeError, ValueError) as exc:
                _evaluations_log.warning("an evaluation in %s was not imported: %s", path, exc)
        path.replace(path.with_name(path.name + ".migrated"))


def _record_item(rec: _Record) -> dict[str, Any]:
    """An evaluation as stored: JSON-ready, without its threading state."""
    return {
        "id": rec.id, "name": rec.name, "start": rec.start, "end": rec.end, "policies": rec.policies,
        "onlinePolicy": rec.online_policy, "created": rec.created, "evaluationType": rec.evaluation_type,
        "offlineExperimentation": rec.offline_experimentation, "status": rec.status,
        "message": rec.message, "result": rec.result.to_json() if rec.result else None,
    }


def _record_from_item(item: dict[str, Any]) -> _Record:
    """The inverse of ``_record_item``; raises on anything malformed."""
    rec = _Record(item["id"], item["name"], item["start"], item["end"], item["policies"],
                  item["onlinePolicy"], item["created"], item.get("evaluationType", "Manual"),
                  item.get("offlineExperimentation", False), item["status"], item.get("message", ""))
    if item.get("result"):
        rec.result = EvaluationResult.from_json(item["result"])
        rec.progress = 1.0
        rec.done.set()
    elif rec.status not in ("pending", "running", "notSubmitted"):
        rec.done.set()
    return rec


def _check_encodable(item: Any) -> None:
    """Raise unless ``item`` serializes to UTF-8 JSON (a lone surrogate in a string does not)."""
    json.dumps(item, ensure_ascii=False).encode("utf-8")


def _describe(rec: _Record) -> str:
    if rec.status in ("pending", "running") or rec.result is None:
        return ""
    res = rec.result
    notes = [f"{res.events} events"]
    if len(res.slot_ids) > 1:
        notes.append("totals are the first slot (unbiased); later slots' per-slot numbers are conditional on the "
                     "online policy's earlier choices (see 'cascade' for the unbiased, noisier variant)")
    if res.deterministic_share > 0:
        notes.append(f"{res.deterministic_share:.0%} of logged slots had no exploration (probability 1): "
                     "estimates for policies that differ there are biased")
    return "; ".join(notes)

