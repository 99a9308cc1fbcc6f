"""Accept rates and chart data from the history frame (pandas only; no Streamlit).

A row counts once it has a reward. Accept rate = mean reward of rewarded rows
(rewards are 1 / 0 here, so it is the share accepted). Learning curves are
rolling means over each slot's rewarded rows, thinned to a few hundred points so
charts stay light with 10,000 visitors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

#: At most this many points per line in the learning-curve chart.
MAX_POINTS = 400

SERIES_LEARNER = "Accept rate"
SERIES_ORACLE = "Oracle, never exploring (expected)"
SERIES_BASELINE = "Baseline (expected)"


@dataclass
class SlotSummary:
    """Per-slot numbers for the metric row."""

    slot: str
    rewarded: int
    accepted: int
    rate: float
    recent: float


@dataclass
class Summary:
    """The metric row of the trends page."""

    events: int
    answered_events: int
    rewarded: int
    accepted: int
    rate: float
    recent: float
    recent_window: int
    simulated: int
    manual: int
    slots: list[SlotSummary] = field(default_factory=list)


def rewarded_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Rows that carry a reward (answered manually or simulated)."""
    return df[df["reward"].notna()]


def _rate(values: pd.Series) -> float:
    return float(values.mean()) if len(values) else math.nan


def summarize(df: pd.DataFrame, recent: int = 50) -> Summary:
    """Events, rewarded slots, accept rate overall and over the last ``recent`` answered events, per slot."""
    done = rewarded_rows(df)
    answered_ids = done["eventId"].drop_duplicates()
    last_ids = set(answered_ids.iloc[-recent:])
    last = done[done["eventId"].isin(last_ids)]
    slots = []
    for slot, rows in done.groupby("slot", sort=False):
        slot_last = rows[rows["eventId"].isin(last_ids)]
        slots.append(SlotSummary(slot=str(slot), rewarded=len(rows), accepted=int((rows["reward"] > 0).sum()),
                                 rate=_rate(rows["reward"]), recent=_rate(slot_last["reward"])))
    order = {s: i for i, s in enumerate(df["slot"].drop_duplicates())}
    slots.sort(key=lambda s: order.get(s.slot, 0))
    events = df.drop_duplicates("eventId")
    return Summary(
        events=len(events), answered_events=len(answered_ids), rewarded=len(done),
        accepted=int((done["reward"] > 0).sum()), rate=_rate(done["reward"]), recent=_rate(last["reward"]),
        recent_window=min(recent, len(answered_ids)),
        simulated=int((events["source"] == "simulated").sum()), manual=int((events["source"] == "manual").sum()),
        slots=slots,
    )


def slot_rates(df: pd.DataFrame) -> pd.DataFrame:
    """Per slot: rewarded, accepted, rejected, accept rate (and oracle / baseline expectations when simulated)."""
    done = rewarded_rows(df)
    if done.empty:
        return pd.DataFrame(columns=["slot", "rewarded", "accepted", "rejected", "rate", "oracle", "baseline"])
    grouped = done.groupby("slot", sort=False)
    out = pd.DataFrame({
        "rewarded": grouped["reward"].size(),
        "accepted": grouped["reward"].apply(lambda s: int((s > 0).sum())),
        "rate": grouped["reward"].mean(),
        "oracle": grouped["oracle"].mean(),
        "baseline": grouped["baselineExpected"].mean(),
    }).reset_index()
    out["rejected"] = out["rewarded"] - out["accepted"]
    return out[["slot", "rewarded", "accepted", "rejected", "rate", "oracle", "baseline"]]


def _thin(frame: pd.DataFrame, limit: int) -> pd.DataFrame:
    if len(frame) <= limit:
        return frame
    keep = np.unique(np.linspace(0, len(frame) - 1, limit).round().astype(int))
    return frame.iloc[keep]


def learning_curves(df: pd.DataFrame, window: int = 50, limit: int = MAX_POINTS) -> pd.DataFrame:
    """Long frame ``slot, n, series, value``: rolling accept rate per slot over its rewarded rows.

    For simulated rows, the oracle's and the baseline's expected accept rates over
    the same rolling window ride along as reference series (NaN for manual rows, so
    the reference lines break where people answered).
    """
    done = rewarded_rows(df)
    parts = []
    window = max(1, int(window))
    for slot, rows in done.groupby("slot", sort=False):
        # Skip the first few, wildly noisy points of a long curve; keep short manual ones whole.
        min_periods = max(1, min(window // 5, len(rows) // 2))
        n = np.arange(1, len(rows) + 1)
        curve = pd.DataFrame({
            "slot": str(slot), "n": n,
            SERIES_LEARNER: rows["reward"].rolling(window, min_periods=min_periods).mean().to_numpy(),
        })
        simulated = rows["oracle"].notna()
        if simulated.any():
            for series, column in ((SERIES_ORACLE, "oracle"), (SERIES_BASELINE, "baselineExpected")):
                values = rows[column].rolling(window, min_periods=min_periods).mean().to_numpy()
                curve[series] = np.where(simulated.to_numpy(), values, np.nan)
        parts.append(_thin(curve, limit))
    if not parts:
        return pd.DataFrame(columns=["slot", "n", "series", "value"])
    wide = pd.concat(parts, ignore_index=True)
    long = wide.melt(id_vars=["slot", "n"], var_name="series", value_name="value")
    return long.dropna(subset=["value"]).reset_index(drop=True)


def action_mix(df: pd.DataFrame) -> pd.DataFrame:
    """Per slot and action: times shown, share of the slot's rows, accepted and accept rate (rewarded rows)."""
    if df.empty:
        return pd.DataFrame(columns=["slot", "action", "shown", "share", "rewarded", "accepted", "rate"])
    shown = df.groupby(["slot", "action"], sort=False).size().rename("shown")
    done = rewarded_rows(df)
    grouped = done.groupby(["slot", "action"], sort=False)["reward"]
    out = pd.concat([shown, grouped.size().rename("rewarded"), grouped.sum().rename("accepted"),
                     grouped.mean().rename("rate")], axis=1).reset_index()
    out[["rewarded", "accepted"]] = out[["rewarded", "accepted"]].fillna(0).astype(int)
    out["share"] = out["shown"] / out.groupby("slot")["shown"].transform("sum")
    return out[["slot", "action", "shown", "share", "rewarded", "accepted", "rate"]]


def default_window(df: pd.DataFrame, choices: list[int]) -> int:
    """A rolling window that suits the history: about a twelfth of the busiest slot's rewarded rows."""
    done = rewarded_rows(df)
    busiest = int(done.groupby("slot").size().max()) if not done.empty else 0
    fitting = [w for w in sorted(choices) if w <= max(busiest // 12, 1)]
    return fitting[-1] if fitting else min(choices)


def has_simulated(df: pd.DataFrame) -> bool:
    """True when any row came from the simulator (reference lines are meaningful)."""
    return bool((df["source"] == "simulated").any())


def in_experiments(df: pd.DataFrame, numbers: list[int]) -> pd.DataFrame:
    """The rows of these experiments (by number), in history order."""
    return df[df["experiment"].isin(numbers)]


def markers(df: pd.DataFrame, reasons: dict[int, str], window: int = 1) -> pd.DataFrame:
    """Where each experiment after the first, and each simulated drift, begins on every slot's curve.

    Long frame ``slot, n, label``: ``n`` is the position among that slot's rewarded rows
    (the curves' x), ``label`` the reason in words (``reasons`` by experiment number).
    """
    done = rewarded_rows(df)
    out = []
    for slot, rows in done.groupby("slot", sort=False):
        n = np.arange(1, len(rows) + 1)
        experiment = rows["experiment"].to_numpy()
        changed = np.flatnonzero(experiment[1:] != experiment[:-1]) + 1
        for i in changed:
            out.append({"slot": str(slot), "n": int(n[i]), "label": reasons.get(int(experiment[i]), "Change")})
        notes = rows["note"].to_numpy()
        for i in np.flatnonzero(pd.notna(notes)):
            out.append({"slot": str(slot), "n": int(n[i]), "label": str(notes[i])})
    return pd.DataFrame(out, columns=["slot", "n", "label"])


def top_actions(mix: pd.DataFrame, limit: int = 8, other: str = "Other actions") -> pd.DataFrame:
    """:func:`action_mix` with only the ``limit`` most shown actions (over all slots) kept by name.

    50 actions in 6 slots would need 50 colors and a legend no phone can show; the
    few that matter stay, the long tail becomes one "other" band per slot.
    """
    if mix.empty:
        return mix
    totals = mix.groupby("action", sort=False)["shown"].sum().sort_values(ascending=False, kind="stable")
    if len(totals) <= limit + 1:  # folding one action into "other" would hide it for nothing
        return mix
    kept = set(totals.index[:limit])
    keep = mix[mix["action"].isin(kept)]
    rest = mix[~mix["action"].isin(kept)]
    folded = rest.groupby("slot", sort=False).agg(shown=("shown", "sum"), share=("share", "sum"),
                                                  rewarded=("rewarded", "sum"),
                                                  accepted=("accepted", "sum")).reset_index()
    folded["action"] = other
    folded["rate"] = folded["accepted"] / folded["rewarded"].where(folded["rewarded"] > 0)
    return pd.concat([keep, folded[keep.columns]], ignore_index=True)
