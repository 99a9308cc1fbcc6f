"""The event history of one browser tab: one row per (event, slot).

Rows are plain dicts appended in order; the reward of a manual row is filled
in when the person answers its slot. :meth:`History.frame` gives a pandas
DataFrame for the trends page, rebuilt only when the history changed (a
version counter), so a rerun of a page with 10,000 visitors stays cheap.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

import pandas as pd

#: Column order of the history table (and of its CSV export).
COLUMNS = [
    "visitor", "time", "slot", "action", "reward", "baseline", "probability", "exploration", "context",
    "source", "backend", "scenario", "policy", "experiment", "eventId", "expected", "oracle",
    "baselineExpected", "note",
]
_DTYPES = {
    "visitor": "int64", "probability": "float64", "reward": "float64", "expected": "float64",
    "oracle": "float64", "baselineExpected": "float64", "experiment": "float64",
}
#: Where a row came from, written on every row so a CSV line stands on its own.
TAGS = ("backend", "policy", "experiment")


def _now() -> datetime:
    return datetime.now(UTC)


class History:
    """Rows of ranked events for one tab (``st.session_state``), with O(1) reward updates."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self._where: dict[tuple[str, str], int] = {}
        self.visitors = 0
        self.version = 0
        self._frame: pd.DataFrame | None = None
        self._frame_version = -1

    def __len__(self) -> int:
        return len(self.rows)

    def add_ranked(self, event_id: str, context: str, scenario: str, slots: Iterable[Mapping[str, Any]],
                   source: str = "manual", tags: Mapping[str, Any] | None = None) -> None:
        """Append one row per slot of a freshly ranked event (reward empty until answered).

        Each slot mapping has ``slot``, ``action``, ``baseline``, ``probability`` and
        optionally ``exploration``. ``tags`` (:data:`TAGS`: backend, policy, experiment
        number) say which experiment the rows belong to.
        """
        self.visitors += 1
        now = _now()
        tag = {k: (tags or {}).get(k) for k in TAGS}
        for slot in slots:
            self._where[(event_id, slot["slot"])] = len(self.rows)
            self.rows.append({
                "visitor": self.visitors, "time": now, "eventId": event_id, "context": context,
                "slot": slot["slot"], "action": slot["action"], "baseline": slot["baseline"],
                "probability": slot.get("probability"), "exploration": slot.get("exploration"),
                "reward": None, "source": source, "scenario": scenario,
                "expected": None, "oracle": None, "baselineExpected": None, "note": None, **tag,
            })
        self.version += 1

    def add_simulated(self, records: Iterable[Mapping[str, Any]], scenario: str,
                      tags: Mapping[str, Any] | None = None) -> int:
        """Append simulation records (``simulation.simulate`` output, answered); returns rows added.

        A record with ``note`` (the first visitor after a simulated drift) carries it into its rows.
        """
        now = _now()
        added = 0
        last_event = None
        rows = self.rows
        tag = {k: (tags or {}).get(k) for k in TAGS}
        for r in records:
            if r["eventId"] != last_event:
                self.visitors += 1
                last_event = r["eventId"]
            self._where[(r["eventId"], r["slotId"])] = len(rows)
            rows.append({
                "visitor": self.visitors, "time": now, "eventId": r["eventId"],
                "context": r.get("contextLabel") or ", ".join(f"{k}={v}" for k, v in r["context"].items()),
                "slot": r["slotId"], "action": r["actionId"], "baseline": r["baselineActionId"],
                "probability": r.get("probability"), "exploration": None, "reward": float(r["accepted"]),
                "source": "simulated", "scenario": scenario, "expected": r.get("expected"),
                "oracle": r.get("oracle_expected"), "baselineExpected": r.get("baseline_expected"),
                "note": r.get("note"), **tag,
            })
            added += 1
        if added:
            self.version += 1
        return added

    def discard(self, event_id: str) -> bool:
        """Drop an event nobody answered (a visitor only looked at); False when it has an answer or is unknown.

        The backend drops such an event too (it was ranked with deferred activation
        and is never activated), so neither the trends nor the CSV should count it.
        """
        indexes = sorted(i for (e, _slot), i in self._where.items() if e == event_id)
        if not indexes or any(self.rows[i]["reward"] is not None for i in indexes):
            return False
        number = self.rows[indexes[0]]["visitor"]
        if indexes[0] == len(self.rows) - len(indexes):  # the newest event (the usual case): drop the tail
            del self.rows[indexes[0]:]
            for row_slot in [k for k in self._where if k[0] == event_id]:
                del self._where[row_slot]
        else:
            drop = set(indexes)
            self.rows = [row for i, row in enumerate(self.rows) if i not in drop]
            self._where = {(row["eventId"], row["slot"]): i for i, row in enumerate(self.rows)}
        if number == self.visitors:  # it was the newest visitor: its number is free again
            self.visitors -= 1
        self.version += 1
        return True

    def set_reward(self, event_id: str, slot_id: str, value: float) -> bool:
        """Record the reward sent for a slot; False when the row is not (any longer) in the history."""
        i = self._where.get((event_id, slot_id))
        if i is None:
            return False
        self.rows[i]["reward"] = float(value)
        self.version += 1
        return True

    def clear(self) -> None:
        """Forget every row (the backend keeps what it learned)."""
        self.rows = []
        self._where = {}
        self.visitors = 0
        self.version += 1

    def frame(self) -> pd.DataFrame:
        """The rows as a DataFrame with :data:`COLUMNS` (cached until the history changes)."""
        if self._frame is None or self._frame_version != self.version:
            if self.rows:
                df = pd.DataFrame.from_records(self.rows, columns=COLUMNS)
            else:
                df = pd.DataFrame({c: pd.Series(dtype=_DTYPES.get(c, "object")) for c in COLUMNS})
            for column, dtype in _DTYPES.items():
                df[column] = pd.to_numeric(df[column], errors="coerce").astype(dtype)
            df["time"] = pd.to_datetime(df["time"], utc=True)
            self._frame = df
            self._frame_version = self.version
        return self._frame


def to_csv(frame: pd.DataFrame) -> str:
    """The history as CSV text (ISO times, empty cells for missing values)."""
    return frame.to_csv(index=False, date_format="%Y-%m-%dT%H:%M:%S.%fZ")


def nan_to_none(value: Any) -> Any:
    """None for NaN (pandas' missing float), the value otherwise."""
    return None if isinstance(value, float) and math.isnan(value) else value
