"""The Evaluate page's logic, without Streamlit: time ranges, candidate policies, result tables.

An offline evaluation (:mod:`personalizer.evaluation`) replays the logged events:
what the online policy earned, what each slot's baseline action and a random
page would have earned, and what candidate learning settings (VW arguments)
would have earned had they been serving. Every estimate has a 95 % interval.
The first slot's numbers are the unbiased headline (and pick the best policy);
later slots are shown with cascade weights (unbiased for the whole page,
noisier) and a caveat.

The page reads results from the wire: an evaluation's v1.1 ``Evaluation`` (what
``Evaluations.get`` returns in process and ``PersonalizerClient.get_evaluation`` over
HTTP) becomes an :class:`EvaluationView`, so the embedded engine and a remote server
(an embedded ``serve`` or a scaled-out replica whose trainer ran it) are shown alike.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import pandas as pd

from ..evaluation import MAX_CUSTOM_POLICIES, PRESET_POLICIES

#: Fewer rewarded events than this and the page explains instead of evaluating.
MIN_EVENTS = 50

RANGE_SINCE = "Since last change"      # offered when the current model's start is known
RANGE_ALL = "All logged events"
RANGE_HOUR = "Last hour"
RANGE_DAY = "Last 24 hours"
RANGE_WEEK = "Last 7 days"
RANGE_CUSTOM = "Custom dates"
RANGES = [RANGE_ALL, RANGE_HOUR, RANGE_DAY, RANGE_WEEK, RANGE_CUSTOM]
_RECENT = {RANGE_HOUR: 3600.0, RANGE_DAY: 86400.0, RANGE_WEEK: 7 * 86400.0}

KIND_ONLINE = "Online (served)"
KIND_BASELINE = "Baseline"
KIND_RANDOM = "Random"
KIND_CANDIDATE = "Candidate"
_KINDS = {"Online": KIND_ONLINE, "Baseline": KIND_BASELINE, "Random": KIND_RANDOM}
#: Colors of the estimate chart, by kind (the app's blue for what was served).
KIND_COLORS = {KIND_ONLINE: "#2563eb", KIND_BASELINE: "#6b7280", KIND_RANDOM: "#9ca3af", KIND_CANDIDATE: "#d97706"}
WEIGHTING_FIRST = "conditional"
WEIGHTING_LATER = "cascade"

_NAMED = re.compile(r"^\s*([^-\s][^:]*?)\s*:\s+(-.*)$")


# ---------------------------------------------------------------- results as the wire tells them

def _number(value: Any) -> float:
    """A wire number (JSON null for a non-finite one) as a float, NaN when absent."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


def _pair(value: Any) -> tuple[float, float]:
    """A wire interval ``[low, high]`` (nulls for unknown bounds) as floats, NaN where unknown."""
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return _number(value[0]), _number(value[1])
    return math.nan, math.nan


@dataclass(frozen=True)
class EstimateView:
    """One policy's estimate for one slot (or the headline): a ``PolicyResultSummary`` with this server's
    extensions (every estimator's interval, the DR estimate, the effective number of events)."""

    value: float                      # SNIPS
    interval: tuple[float, float]     # the headline interval (Cressie-Read; Gaussian for a later slot's conditional)
    events: int
    support: float                    # share of events where the policy could have shown what was shown
    gaussian: tuple[float, float]     # SNIPS, delta method
    bernstein: tuple[float, float]
    dr: float
    dr_interval: tuple[float, float]
    effective_events: float           # Kish; NaN from a server that does not tell

    @classmethod
    def from_summary(cls, summary: Mapping[str, Any]) -> EstimateView:
        """The estimate of one wire summary (``totalSummary``, a slot's or its ``cascade``)."""
        return cls(value=_number(summary.get("averageReward")), interval=_pair(summary.get("interval")),
                   events=int(summary.get("events") or 0),
                   support=_number(summary.get("nonZeroProbability")),
                   gaussian=_pair(summary.get("snipsInterval")), bernstein=_pair(summary.get("bernsteinInterval")),
                   dr=_number(summary.get("drAverageReward")), dr_interval=_pair(summary.get("drInterval")),
                   effective_events=_number(summary.get("effectiveEvents")))


@dataclass(frozen=True)
class PolicyView:
    """One evaluated policy: the headline (every event's first slot), and per slot both weightings."""

    name: str
    source: str                       # Online | Baseline | Random | Custom | OfflineExperimentation
    arguments: str
    headline: EstimateView
    conditional: dict[str, EstimateView] = field(default_factory=dict)
    cascade: dict[str, EstimateView] = field(default_factory=dict)

    def estimate(self, slot: str, *, weighting: str = WEIGHTING_FIRST) -> EstimateView:
        """The estimate for ``slot`` with ``weighting`` (conditional or cascade)."""
        return (self.cascade if weighting == WEIGHTING_LATER else self.conditional)[slot]


@dataclass(frozen=True)
class EvaluationView:
    """A completed evaluation's results as the page shows them, read from the v1.1 ``Evaluation``."""

    slot_ids: list[str]
    slot_positions: dict[str, int]
    events: int
    deterministic_share: float
    start: float | None
    end: float | None
    optimal_policy: str | None
    policies: list[PolicyView]

    @classmethod
    def from_wire(cls, evaluation: Mapping[str, Any]) -> EvaluationView | None:
        """The results of an evaluation answer; None while it has none (pending, failed, no events)."""
        results = evaluation.get("policyResults") or []
        if not results:
            return None
        policies = []
        slot_ids: list[str] = []
        positions: dict[str, int] = {}
        for item in results:
            conditional, cascade = {}, {}
            for slot in item.get("slots") or []:
                sid = str(slot.get("slotId"))
                if sid not in positions:
                    slot_ids.append(sid)
                    positions[sid] = int(slot.get("position") or 0)
                conditional[sid] = EstimateView.from_summary(slot)
                cascade[sid] = EstimateView.from_summary(slot.get("cascade") or {})
            policies.append(PolicyView(str(item.get("name")), str(item.get("policySource", "Custom")),
                                       str(item.get("arguments") or ""),
                                       EstimateView.from_summary(item.get("totalSummary") or {}),
                                       conditional, cascade))
        if not slot_ids:
            return None
        share = _number(evaluation.get("deterministicShare"))
        return cls(slot_ids=slot_ids, slot_positions=positions, events=int(evaluation.get("events") or 0),
                   deterministic_share=0.0 if math.isnan(share) else share,
                   start=parse_timestamp(evaluation.get("startTime")), end=parse_timestamp(evaluation.get("endTime")),
                   optimal_policy=evaluation.get("optimalPolicy"), policies=policies)



def parse_timestamp(value: Any) -> float | None:
    """Epoch seconds from the engine's ISO-8601 text (``...Z``), None when absent."""
    if value is None:
        return None
    return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()


def log_range(properties: dict[str, Any]) -> tuple[float, float] | None:
    """The event log's (first, last) rank times from ``log_properties()``, or None when it is empty."""
    rng = properties.get("dateRange") or {}
    first, last = parse_timestamp(rng.get("from")), parse_timestamp(rng.get("to"))
    return None if first is None or last is None else (first, last)


def range_choices(since: float | None) -> list[str]:
    """The time ranges to offer: "Since last change" first when the current model's start is known."""
    return ([RANGE_SINCE] if since is not None else []) + RANGES


def time_window(choice: str, covered: tuple[float, float], now: float,
                dates: Sequence[date] | None = None, since: float | None = None) -> tuple[float, float]:
    """[start, end) in epoch seconds for a range choice; ``covered`` is the log's (first, last) time.

    "Since last change" starts at ``since`` (the current model's start). "All logged
    events" spans the whole log (a second of slack either side, so rounding never
    drops the first or last event). Custom dates are whole UTC days, the end day included.
    """
    first, last = covered
    end = max(now, last) + 1.0
    if choice == RANGE_SINCE and since is not None:
        return since, end
    if choice == RANGE_ALL:
        return first - 1.0, end
    if choice in _RECENT:
        return now - _RECENT[choice], end
    if choice == RANGE_CUSTOM:
        picked = [d for d in (dates or ()) if d is not None]
        if not picked:
            return first - 1.0, end
        lo, hi = picked[0], picked[-1]
        start = datetime.combine(lo, time(), tzinfo=UTC).timestamp()
        stop = datetime.combine(hi + timedelta(days=1), time(), tzinfo=UTC).timestamp()
        return start, stop
    raise ValueError(f"unknown time range {choice!r}")


def parse_custom(text: str) -> list[dict[str, str]]:
    """Custom candidates, one a line: ``name: --vw --arguments`` or just the arguments (named Custom 1, 2...).

    Blank lines and lines starting with ``#`` are ignored. The arguments are
    checked when the evaluation is created (Vowpal Wabbit's own checks).
    """
    out: list[dict[str, str]] = []
    for raw in (text or "").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _NAMED.match(line)
        if match:
            out.append({"name": match.group(1).strip(), "arguments": match.group(2).strip()})
        else:
            out.append({"name": f"Custom {sum(p['name'].startswith('Custom ') for p in out) + 1}",
                        "arguments": line})
    return out


def candidate_policies(presets: Sequence[str], custom_text: str = "") -> list[dict[str, str]]:
    """Chosen presets (as written in :data:`PRESET_POLICIES`) followed by the custom lines.

    ValueError when nothing is chosen or more than ``MAX_CUSTOM_POLICIES`` are.
    """
    chosen = [{"name": name, "arguments": PRESET_POLICIES[name]} for name in presets if name in PRESET_POLICIES]
    chosen += parse_custom(custom_text)
    if not chosen:
        raise ValueError("Choose at least one candidate policy (a preset or a line of VW arguments).")
    if len(chosen) > MAX_CUSTOM_POLICIES:
        raise ValueError(f"At most {MAX_CUSTOM_POLICIES} candidate policies per evaluation; {len(chosen)} chosen.")
    return chosen


def weighting_for(result: EvaluationView, slot: str) -> str:
    """Conditional weights for the first slot (exact there), cascade for later slots (unbiased for the page)."""
    return WEIGHTING_FIRST if result.slot_positions.get(slot, 0) == 0 else WEIGHTING_LATER


def headline_slot(result: EvaluationView) -> str:
    """The first slot (the unbiased headline)."""
    return min(result.slot_ids, key=lambda s: (result.slot_positions.get(s, 0), result.slot_ids.index(s)))


def slot_order(result: EvaluationView) -> list[str]:
    """Slot ids in page order."""
    return sorted(result.slot_ids, key=lambda s: (result.slot_positions.get(s, 0), result.slot_ids.index(s)))


def _num(x: float | None) -> float:
    return math.nan if x is None or not math.isfinite(x) else float(x)


def result_frame(result: EvaluationView, slot: str | None = None) -> pd.DataFrame:
    """One row per policy for one slot (default: the headline): estimate, interval, difference to online.

    Columns: policy, kind, estimate, low, high, vsOnline (accept-rate points),
    support (share of events that inform the estimate), events, arguments, best.
    """
    first = headline_slot(result)
    slot = slot or first
    weighting = weighting_for(result, slot)
    best = result.optimal_policy
    rows = []
    online = math.nan
    for p in result.policies:
        # The headline group (every event's first slot) is what picks the optimal policy.
        est = p.headline if slot == first else p.estimate(slot, weighting=weighting)
        if p.source == "Online":
            online = _num(est.value)
        rows.append({
            "policy": p.name, "kind": _KINDS.get(p.source, KIND_CANDIDATE), "estimate": _num(est.value),
            "low": _num(est.interval[0]), "high": _num(est.interval[1]),
            "support": est.support, "events": est.events,
            "arguments": p.arguments or "", "best": p.name == best,
        })
    frame = pd.DataFrame(rows, columns=["policy", "kind", "estimate", "low", "high", "vsOnline", "support",
                                        "events", "arguments", "best"])
    frame["vsOnline"] = (frame["estimate"] - online) * 100
    return frame


def interval_details(result: EvaluationView, slot: str | None = None) -> pd.DataFrame:
    """Every interval the evaluation computed, per policy, for the details table (percent, 95 %).

    The headline is Cressie-Read empirical likelihood; the SNIPS Gaussian, the empirical
    Bernstein and the doubly robust (DR) estimate with its Gaussian interval stay
    available for comparison. ``effective`` is the Kish effective number of events the
    estimate rests on: when it is small, the Gaussian interval is the one to distrust.
    """
    first = headline_slot(result)
    slot = slot or first
    weighting = weighting_for(result, slot)

    def text(iv: tuple[float, float]) -> str:
        lo, hi = iv
        return "—" if not (math.isfinite(lo) and math.isfinite(hi)) else f"{lo * 100:.1f} – {hi * 100:.1f}"

    rows = []
    for p in result.policies:
        est = p.headline if slot == first else p.estimate(slot, weighting=weighting)
        rows.append({
            "policy": p.name, "snips": _num(est.value) * 100, "headline": text(est.interval),
            "gaussian": text(est.gaussian), "bernstein": text(est.bernstein),
            "dr": _num(est.dr) * 100, "drInterval": text(est.dr_interval),
            "effective": _num(est.effective_events),
        })
    return pd.DataFrame(rows, columns=["policy", "snips", "headline", "gaussian", "bernstein", "dr", "drInterval",
                                       "effective"])


def table_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """:func:`result_frame` for the results table: percentages as numbers 0..100, the interval as text."""

    def interval(lo: float, hi: float) -> str:
        return "—" if not (math.isfinite(lo) and math.isfinite(hi)) else f"{lo * 100:.1f} – {hi * 100:.1f}%"

    return pd.DataFrame({
        "policy": frame["policy"], "estimate": frame["estimate"] * 100,
        "interval": [interval(lo, hi) for lo, hi in zip(frame["low"], frame["high"], strict=True)],
        "vsOnline": frame["vsOnline"].round(1) + 0.0,  # + 0.0: a live twin of online reads "+0.0", not "-0.0"
        "support": frame["support"] * 100, "best": frame["best"],
        "arguments": frame["arguments"],
    })


def best_candidate(result: EvaluationView) -> str | None:
    """The candidate to apply: the best headline estimate among online and candidates; None if online wins."""
    best = result.optimal_policy
    return None if best is None or best == "Online" else best


def candidates(result: EvaluationView) -> list[str]:
    """Names of the replayed candidate policies (the ones that can be applied)."""
    return [p.name for p in result.policies if p.source not in _KINDS]


def range_label(start: float | None, end: float | None) -> str:
    """``2026-11-29 10:02 – 11:40 UTC`` for a time range."""
    if start is None or end is None:
        return "all logged events"
    a = datetime.fromtimestamp(start, UTC)
    b = datetime.fromtimestamp(end, UTC)
    if a.date() == b.date():
        return f"{a:%Y-%m-%d %H:%M} – {b:%H:%M} UTC"
    return f"{a:%Y-%m-%d %H:%M} – {b:%Y-%m-%d %H:%M} UTC"


def _split(arguments: str) -> tuple[list[str], float | None]:
    """VW arguments without ``--epsilon`` and its value, and that value (None when absent)."""
    tokens = (arguments or "").split()
    out: list[str] = []
    epsilon = None
    i = 0
    while i < len(tokens):
        if tokens[i] == "--epsilon" and i + 1 < len(tokens):
            try:
                epsilon = float(tokens[i + 1])
            except ValueError:
                epsilon = None
            i += 2
            continue
        out.append(tokens[i])
        i += 1
    return out, epsilon


def same_policy(candidate: str, live: str) -> bool:
    """True when a candidate's arguments are what the engine runs (the same learning settings and exploration).

    The engine rewrites ``--epsilon`` with its exploration setting, so a candidate
    without one matches on the rest alone.
    """
    rest_c, eps_c = _split(candidate)
    rest_l, eps_l = _split(live)
    return rest_c == rest_l and (eps_c is None or eps_l is None or math.isclose(eps_c, eps_l))


def live_candidate(result: EvaluationView, live: dict[str, Any]) -> str | None:
    """The evaluated candidate the engine runs now (by name, else by arguments), or None."""
    names = candidates(result)
    if live.get("name") in names:
        return str(live["name"])
    arguments = {p.name: p.arguments or "" for p in result.policies}
    return next((n for n in names if same_policy(arguments[n], str(live.get("arguments", "")))), None)


def describe_arguments(arguments: str) -> str:
    """Learning settings in words: ``explores 10 % of the time, learning rate 1, …`` (the rest as-is)."""
    rest, epsilon = _split(arguments)
    words: list[str] = []
    if epsilon is not None:
        words.append(f"explores {epsilon:.0%} of the time")
    i = 0
    while i < len(rest):
        tok, nxt = rest[i], rest[i + 1] if i + 1 < len(rest) else ""
        if tok in ("-l", "--learning_rate"):
            words.append(f"learning rate {nxt}")
        elif tok == "--power_t":
            words.append("a constant learning rate" if nxt in ("0", "0.0") else f"learning-rate decay {nxt}")
        elif tok == "--cb_type":
            words.append({"mtr": "learns from the shown action's reward (MTR)", "ips": "inverse-propensity updates",
                          "dr": "doubly robust updates", "dm": "direct-method updates"}.get(nxt, f"{nxt} updates"))
        elif tok in ("-q", "--quadratic"):
            words.append("pairs of features" if nxt == "::" else f"feature pairs {nxt}")
        elif tok == "--cubic":
            words.append("context × context × action combinations" if nxt == "@@_" else f"feature triples {nxt}")
        else:
            i += 1
            continue
        i += 2
    return ", ".join(words) if words else "its own settings"


def log_grew(covered: tuple[float, float] | None, result_end: float | None, created: str | None) -> str | None:
    """Why an evaluation's results are stale (events logged after it was made), in words; None when current."""
    made = parse_timestamp(created) if created else None
    if covered is None or made is None:
        return None
    last = covered[1]
    # The evaluation read the log when it was made (its time is kept to the second): anything later is missing.
    if last >= made + 1.0:
        when = datetime.fromtimestamp(made, UTC)
        newest = datetime.fromtimestamp(last, UTC)
        return f"It was computed at {when:%H:%M:%S} UTC; the log has events up to {newest:%H:%M:%S} UTC."
    return None
