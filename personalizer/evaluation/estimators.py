"""Estimators: IPS/SNIPS/DR estimates with Cressie-Read, Gaussian and Bernstein intervals, and the
sufficient statistics they share.

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

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np
from scipy.special import fdtri

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
        action a positive probability, ``sumOfSquares`` the sum of squared IPS terms,
        ``effectiveEvents`` the Kish effective number of events (a remote dashboard shows it).
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
            "effectiveEvents": _finite(self.effective_events),
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
