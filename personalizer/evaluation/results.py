"""Evaluation results: per-policy statistics by time bucket, the v1 and 2022 wire shapes, ``evaluate``."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..contract import PersonalizerError
from .constants import _MAX_BUCKETS, BUILTIN_POLICIES, INTERVALS_MINUTES, _iso
from .estimators import (
    _FIELDS,
    _MAX_FIELDS,
    _N,
    _NZ,
    _SD,
    _SD2,
    _SW,
    _SW2,
    _SW2R,
    _SW2R2,
    _SWR,
    _WB,
    _WMAX,
    HEADLINE_INTERVAL,
    Estimate,
    _finite,
    _from_stats,
)
from .logged import (
    LoggedData,
    LoggedEvent,
    _baseline_pairs,
    _cascade,
    _cascade_bound,
    _concatenate_pairs,
    _open_actions,
    _RewardModel,
    prepare,
)
from .replay import CancelFn, ProgressFn, replay

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
