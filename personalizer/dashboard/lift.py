"""Lift over baseline for the dashboard: from the engine's event log, or from a tab's history.

Plain Python (pandas and the estimators; no Streamlit). The numbers are
:func:`personalizer.evaluation.lift_over_baseline`'s: per slot, what the served
policy earned minus an off-policy estimate of each slot's baseline action, with a
paired 95 % interval. The first slot's number is the unbiased headline; later
slots use cascade weights (unbiased, noisier) and carry a caveat wherever shown.

With a remote backend the dashboard cannot read the server's log, so the tab's
history stands in: every event whose slots all have a reward and a probability
(the simulator's visitors, manual visitors answered in every slot).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..evaluation import Lift, LoggedData, LoggedEvent, lift_over_baseline, prepare
from .text import md, plural

SOURCE_LOG = "log"
SOURCE_HISTORY = "history"
#: The caveat for slots after the first, in one sentence.
LATER_SLOTS_CAVEAT = ("The first slot is the unbiased headline. Later slots are filled after it, so their "
                      "estimates re-weight whole pages: still unbiased, but noisier, and only as good as "
                      "each slot's logged probability.")


@dataclass(frozen=True)
class LiftReport:
    """Lift per slot (position order) and what it was computed from."""

    source: str                      # SOURCE_LOG or SOURCE_HISTORY
    events: int                      # events the estimate used
    skipped: int = 0                 # events left out (waiting for rewards, partly answered, no probability)
    lifts: list[Lift] = field(default_factory=list)

    @property
    def headline(self) -> Lift | None:
        """The first slot's lift (the unbiased one), if any slot has data."""
        return next((lift for lift in self.lifts if lift.position == 0), self.lifts[0] if self.lifts else None)


def same_catalog(event: LoggedEvent, catalog: tuple[frozenset[str], tuple[str, ...]]) -> bool:
    """True when a logged event ranked this catalog: the same action ids and the same slots in order."""
    request = event.request or {}
    actions = frozenset(a.get("id") for a in request.get("actions", []))
    slots = tuple(s.get("id") for s in request.get("slots", []))
    return actions == catalog[0] and slots == catalog[1]


def from_events(events: Iterable[LoggedEvent],
                catalog: tuple[frozenset[str], tuple[str, ...]] | None = None) -> LiftReport:
    """Lift from logged events (``engine.events()``): rewarded events count, pending ones are skipped.

    With ``catalog`` (action ids, slot ids in order) only events of that catalog count:
    one experiment never mixes two catalogs.
    """
    if catalog is not None:
        events = [e for e in events if same_catalog(e, catalog)]
    data = prepare(events)
    return LiftReport(SOURCE_LOG, data.events, data.skipped, lift_over_baseline(data) if data.events else [])


def history_data(df: pd.DataFrame) -> LoggedData:
    """A tab's history (one row per event and slot) as the estimators' :class:`LoggedData`.

    Only events whose every slot has a reward and a logged probability are kept;
    ``skipped`` counts the others. VW examples are not built: lift needs none.
    """
    if df.empty:
        ok = pd.Series(dtype=bool)
    else:
        ok = (df["reward"].notna() & df["probability"].notna()).groupby(df["eventId"], sort=False).transform("all")
    keep = df[ok] if len(df) else df
    total_events = int(df["eventId"].nunique()) if len(df) else 0
    event_codes, event_ids = pd.factorize(keep["eventId"], sort=False)
    order = np.argsort(event_codes, kind="stable")  # an event's rows together, slots in ranked order
    keep = keep.iloc[order]
    event_codes = event_codes[order]
    position = keep.groupby("eventId", sort=False).cumcount().to_numpy(dtype=np.int64)
    slot_codes, slot_ids = pd.factorize(keep["slot"], sort=False)
    action_codes, _ = pd.factorize(keep["action"], sort=False)
    starts = np.flatnonzero(position == 0)
    created = keep["time"].iloc[starts]
    created_s = (created.astype("int64").to_numpy() / 1e9) if len(created) else np.zeros(0)
    n = len(event_ids)
    return LoggedData(
        event_ids=[str(e) for e in event_ids], created=np.asarray(created_s, dtype=float), modes=["Online"] * n,
        request_hashes=[""] * n, examples=[], encoded=[], row_start=starts.astype(np.int64),
        event_of_row=np.asarray(event_codes, dtype=np.int64), position=position,
        slot=np.asarray(slot_codes, dtype=np.int64), chosen=np.asarray(action_codes, dtype=np.int64),
        probability=np.maximum(keep["probability"].to_numpy(dtype=float), 1e-6),
        reward=keep["reward"].to_numpy(dtype=float),
        is_baseline=(keep["action"] == keep["baseline"]).to_numpy(dtype=bool),
        open_actions=np.ones(len(keep), dtype=np.int64), slot_ids=[str(s) for s in slot_ids],
        skipped=total_events - n,
    )


def from_history(df: pd.DataFrame) -> LiftReport:
    """Lift from a tab's history (the remote backend's stand-in for the server's log)."""
    data = history_data(df)
    return LiftReport(SOURCE_HISTORY, data.events, data.skipped, lift_over_baseline(data) if data.events else [])


def points(value: float, digits: int = 1, sign: bool = True) -> str:
    """An accept-rate difference in points: ``0.381`` -> ``+38.1``."""
    return "—" if not math.isfinite(value) else f"{value * 100:{'+' if sign else ''}.{digits}f}"


WINNING = "winning"
TOO_EARLY = "too early"
LOSING = "losing"


def verdict(lift: Lift) -> tuple[str, int | None]:
    """The verdict word for a lift and, while it is too early, about how many more events would settle it.

    Both come from the evaluation package (``Lift.verdict`` and ``Lift.events_needed``,
    read from the headline Cressie-Read interval), so the dashboard and the API never
    disagree. None instead of a count when no number of events would settle it.
    """
    word = lift.verdict
    return word, (lift.events_needed or None) if word == TOO_EARLY else None


def sentence(lift: Lift) -> str:
    """The headline in Markdown: "Personalized 62 % vs without personalization 33 %: +29 pts (95 % CI 27–32)"."""
    if not lift.enough_data:
        return f"Not enough data yet: {md(lift.reason)}."
    lo, hi = lift.interval
    return (f"Personalized **{percent(lift.online)}** vs without personalization **{percent(lift.baseline)}**: "
            f"**{points(lift.lift, 0)} pts** (95 % CI {_bound(lo)}{' to ' if lo < 0 else '–'}{_bound(hi)}), "
            f"n = {lift.events:,}")


def _bound(value: float) -> str:
    """An interval bound in points without a plus sign; a true minus sign for negatives (``−8``)."""
    return points(value, 0, sign=False).replace("-", "−")


def percent(value: float) -> str:
    """``0.621`` -> ``62 %`` (an em dash when not finite)."""
    return "—" if not math.isfinite(value) else f"{value * 100:.0f} %"


def lift_frame(lifts: list[Lift]) -> pd.DataFrame:
    """One row per slot for a chart: slot, position, lift, low, high, online, baseline, enough."""
    rows = [{"slot": lift.slot_id, "position": lift.position, "lift": lift.lift, "low": lift.interval[0],
             "high": lift.interval[1], "online": lift.online, "baseline": lift.baseline,
             "events": lift.events, "support": lift.support, "enough": lift.enough_data} for lift in lifts]
    return pd.DataFrame(rows, columns=["slot", "position", "lift", "low", "high", "online", "baseline", "events",
                                       "support", "enough"])


def apprentice_text(metrics: dict) -> str:
    """One line on how closely the model imitates the baselines while in Apprentice mode.

    ``metrics`` is :func:`personalizer.evaluation.apprentice_metrics`' answer. A match
    rate of 60-80 % on recent events was Personalizer's signal that the model is ready
    to go online.
    """
    events = int(metrics.get("events") or 0)
    rate = metrics.get("matchRate")
    if not events or rate is None or (isinstance(rate, float) and math.isnan(rate)):
        return "Apprentice: no rewarded Apprentice events yet to compare the model with the baselines."
    ready = "ready to go online" if metrics.get("ready") else "not ready to go online yet"
    return (f"Apprentice: the model's top pick matches the baseline in {rate:.0%} of the last "
            f"{plural(events, 'event')} — {ready} (60-80 % is the usual signal).")
