"""A backend's event log as trend rows, read incrementally (plain Python and pandas, no Streamlit).

The Reward trends page charts this tab's history by default; with "All events in
the log" it charts what the backend logged instead, so a fresh tab or a reload is
never an empty page. :class:`LogRows` turns logged events into the history's row
shape (one row per event and slot, :data:`.history.COLUMNS` plus ``catalog`` and
``mode``), so every trends function and chart works on either.

The events come through the one interface's ``log_events`` (the exported shape of
``personalizer.logexport``, one page at a time), so the embedded engine, a ``serve``
and a scaled-out replica are read alike.

Why incremental: a log of 100,000 events takes seconds to read and parse, and the
page reruns on every click. The rows of closed events never change, so each read
resumes from the listing's cursor: after the last event read, or, while some events
are still pending (their rewards may still arrive), from the start of the first page
that held one; a shrunken log (deleted logs) is read again from the start. One
:class:`LogRows` per backend lives in the dashboard's process cache.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import numpy as np
import pandas as pd

from ..contract import PersonalizerError
from ..interface import Personalizer
from .history import COLUMNS

log = logging.getLogger(__name__)

SOURCE_LOG = "log"
#: Extra columns of log rows: which catalog the event ranked, and the learning mode it was served in.
LOG_COLUMNS = [*COLUMNS, "catalog", "mode"]
_NUMERIC = ("visitor", "reward", "probability", "expected", "oracle", "baselineExpected", "experiment")

Catalog = tuple[frozenset[str], tuple[str, ...]]
T = TypeVar("T")
_MISSING = object()
_MEMO_ENTRIES = 64
#: Events per page of the backend's log listing (each page holds the engine's lock for its read).
READ_CHUNK = 5_000


def _context_text(features: Any) -> str:
    """``time=evening, device=mobile`` from a request's contextFeatures (nested values as they are)."""
    parts = []
    for item in features or []:
        if isinstance(item, dict):
            parts.extend(f"{k}={v}" for k, v in item.items())
    return ", ".join(parts)


@dataclass(frozen=True)
class _EventRows:
    """One logged event's trend rows, before they go into columns."""

    seq: int
    created: float
    event_id: str
    catalog: int                     # index into LogRows.catalogs
    mode: str
    context: str
    slots: list[str]
    actions: list[str]
    baselines: list[str]
    probabilities: list[float]
    rewards: list[float]             # NaN while pending (its reward may still arrive)


class LogRows:
    """Trend rows of one backend's log, kept up to date by :meth:`refresh` (thread-safe).

    ``backend``: anything with the interface's ``log_events`` and ``stats`` (the embedded engine,
    a ``PersonalizerClient``).
    """

    def __init__(self, backend: Personalizer) -> None:
        self._backend = backend
        self._lock = threading.Lock()
        self._reset()

    def _reset(self) -> None:
        self.catalogs: list[Catalog] = []
        self._catalog_index: dict[Catalog, int] = {}
        # Closed events' rows go into columns page by page (one small frame per page read): 100,000
        # row objects kept alive made every garbage collection walk them, and that was most of a read.
        self._closed_chunks: list[pd.DataFrame] = []
        self._closed_total = 0                 # closed events read
        self._closed_ids: set[str] = set()
        self._pending: list[_EventRows] = []
        self._numbers: dict[str, int] = {}  # pending events' numbers: kept when they close
        self._next_number = 1
        self._ids: list[str] = []             # event id of each number (number n at index n - 1)
        self._resume: str | None = None       # listing cursor the next read starts after (None: the start)
        self._read = False
        self._seen_total = 0
        self.version = 0                      # bumps whenever the rows change
        self._frame: pd.DataFrame | None = None
        self._frame_version = -1
        self._closed_frame: pd.DataFrame | None = None
        self._chunks_in_frame = 0
        self._memo: dict[tuple, Any] = {}

    def _catalog(self, request: dict[str, Any]) -> int:
        key = (frozenset(a.get("id") for a in request.get("actions", [])),
               tuple(s.get("id") for s in request.get("slots", [])))
        index = self._catalog_index.get(key)
        if index is None:
            index = self._catalog_index[key] = len(self.catalogs)
            self.catalogs.append(key)
        return index

    def _number(self, event_id: str, pending: bool) -> int:
        """The event's number in log order (the frame's integer ``eventId``), stable while it is pending."""
        number = self._numbers.pop(event_id, None)
        if number is None:
            number = self._next_number
            self._next_number += 1
            self._ids.append(event_id)
        if pending:
            self._numbers[event_id] = number
        return number

    def _rows_of(self, ev: dict[str, Any]) -> _EventRows:
        """Rows of one exported event (``logexport.ExportedEvent``)."""
        request = ev.get("request") or {}
        served = ev.get("slots") or []
        asked = {s.get("id"): s for s in request.get("slots", [])}
        status = ev.get("status")
        closed = status not in ("pending", "discarded") and ev.get("labels") is not None
        labels = ev.get("labels") or []
        rewards = [float(labels[k]) if closed and k < len(labels) and labels[k] is not None else
                   (0.0 if closed else float("nan")) for k in range(len(served))]
        return _EventRows(
            seq=self._number(ev["eventId"], status == "pending"), created=parse_time(ev.get("created")) or 0.0,
            event_id=ev["eventId"], catalog=self._catalog(request), mode=str(ev.get("mode")),
            context=_context_text(request.get("contextFeatures")),
            slots=[s.get("id") for s in served], actions=[s.get("rewardActionId") for s in served],
            baselines=[(asked.get(s.get("id")) or {}).get("baselineAction") for s in served],
            probabilities=[float(s["probability"]) if s.get("probability") is not None else float("nan")
                           for s in served],
            rewards=rewards,
        )

    def _logged_total(self) -> int:
        stats = self._backend.stats()
        return int(stats.get("learned", 0)) + int(stats.get("logged", 0)) + int(stats.get("pending", 0))

    @property
    def cold(self) -> bool:
        """True until the first read (the one that may take seconds on a large log)."""
        return not self._read

    def refresh(self, progress: Callable[[float], None] | None = None) -> int:
        """Read what the log gained since the last call; returns :attr:`version`.

        ``progress(share)`` is told how far a long (first) read got, after each page.
        """
        with self._lock, _collection_paused():
            total = self._logged_total()
            if total < self._seen_total:  # logs were deleted: read it all again
                self._reset()
            if self._read and total == self._seen_total and not self._pending:
                return self.version  # nothing new can be there (closed events never change)
            changed = False
            pending: list[_EventRows] = []
            after, pages, read = self._resume, 0, 0
            resume, resume_set = None, False
            while True:
                page = self._backend.log_events(after=after, top=READ_CHUNK)
                pages += 1
                closed: list[_EventRows] = []
                for ev in page.get("value", []):
                    read += 1
                    status = ev.get("status")
                    if status == "discarded" or ev.get("eventId") in self._closed_ids:
                        continue  # discarded: deferred and never activated, nobody saw it
                    rows = self._rows_of(ev)
                    if status == "pending":
                        pending.append(rows)
                        if not resume_set:  # re-read from this page's start next time: its reward may come
                            resume, resume_set = after, True
                    else:
                        closed.append(rows)
                        self._closed_ids.add(rows.event_id)
                if closed:
                    self._closed_chunks.append(_to_frame(closed, first_visitor=self._closed_total + 1))
                    self._closed_total += len(closed)
                    changed = True
                after = page.get("cursor") or after
                more = bool(page.get("nextLink")) and bool(page.get("value"))
                if progress is not None and (more or pages > 1):
                    progress(1.0 if not more else min(0.99, read / max(total, 1)))
                if not more:
                    break
            self._resume = resume if resume_set else after
            self._read = True
            if pending != self._pending:
                changed = True
            for gone in {p.event_id for p in self._pending} - {p.event_id for p in pending} - self._closed_ids:
                self._numbers.pop(gone, None)  # left the log while pending (deleted logs)
            self._pending = pending
            self._seen_total = total
            if changed:
                self.version += 1
                self._memo = {}
            return self.version

    def frame(self) -> pd.DataFrame:
        """Every row: closed events in the order they were read (rank order, an event whose reward came
        late where it closed), then the pending ones. Rebuilt only when :attr:`version` moved, and then
        only the new events' rows are built (appended to the frame of the earlier ones)."""
        with self._lock:
            if self._frame is not None and self._frame_version == self.version:
                return self._frame
            fresh = self._closed_chunks[self._chunks_in_frame:]
            if fresh or self._closed_frame is None:
                parts = [f for f in ([self._closed_frame] if self._closed_frame is not None else []) + fresh if len(f)]
                self._closed_frame = pd.concat(parts, ignore_index=True) if parts else _to_frame([])
                self._chunks_in_frame = len(self._closed_chunks)
            pending = sorted(self._pending, key=lambda r: r.seq)
            self._frame = self._closed_frame if not pending else pd.concat(
                [self._closed_frame, _to_frame(pending, first_visitor=self._closed_total + 1)], ignore_index=True)
            self._frame_version = self.version
            return self._frame

    def with_event_ids(self, frame: pd.DataFrame) -> pd.DataFrame:
        """``frame`` (rows of :meth:`frame`) with the events' ids in ``eventId`` instead of their numbers (the CSV)."""
        with self._lock:
            ids = np.asarray(self._ids, dtype=object)
        out = frame.copy()
        out["eventId"] = ids[frame["eventId"].to_numpy(dtype=np.int64) - 1] if len(frame) else frame["eventId"]
        return out

    def memo(self, key: tuple, compute: Callable[[], T]) -> T:
        """``compute()`` once per ``key`` while the log stays as it is, shared by every tab (a reload is cheap).

        Results of older versions are dropped as the log grows.
        """
        with self._lock:
            version = self.version
            hit = self._memo.get(key, _MISSING)
        if hit is not _MISSING:
            return hit  # type: ignore[return-value]
        value = compute()
        with self._lock:
            if self.version == version:
                if len(self._memo) >= _MEMO_ENTRIES:
                    self._memo.pop(next(iter(self._memo)))
                self._memo[key] = value
        return value

    def catalog_number(self, catalog: Catalog) -> int | None:
        """The ``catalog`` column's value for a catalog (None when the log holds none of its events)."""
        with self._lock:
            return self._catalog_index.get((frozenset(catalog[0]), tuple(catalog[1])))


@contextlib.contextmanager
def _collection_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off while a read builds pages of nested dicts (requests, rewards).

    They hold no cycles and die with their page, but each page's thousands of containers survive enough
    young collections to trigger full ones, each walking every object of the process: measured, that
    was more than half of a cold read of 100,000 events. Reference counting still frees everything; the
    collector is switched back on (if it was on) as soon as the read ends.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _to_frame(events: list[_EventRows], first_visitor: int = 1) -> pd.DataFrame:
    """Columns built with numpy (one pass per column).

    ``eventId`` holds the event's number in log order (an integer: grouping 200,000 rows by it is
    several times faster than by the id text; ``LogRows.with_event_ids`` puts the ids back);
    ``visitor`` numbers events from ``first_visitor``.
    """
    if not events:
        frame = pd.DataFrame({c: pd.Series(dtype="float64" if c in _NUMERIC else "object") for c in LOG_COLUMNS})
        frame["visitor"] = frame["visitor"].astype("int64")
        frame["catalog"] = frame["catalog"].astype("int64")
        frame["eventId"] = frame["eventId"].astype("int64")
        frame["time"] = pd.to_datetime(frame["time"], utc=True)
        return frame
    counts = np.fromiter((len(e.slots) for e in events), dtype=np.int64, count=len(events))

    def per_event(values: list[Any] | np.ndarray) -> np.ndarray:
        return np.repeat(np.asarray(values, dtype=object), counts)

    def per_slot(values: Callable[[_EventRows], list[Any]], dtype: Any = object) -> np.ndarray:
        flat: list[Any] = []
        for e in events:
            flat.extend(values(e))
        return np.array(flat, dtype=dtype)

    created = np.repeat(np.fromiter((e.created for e in events), dtype=float, count=len(events)), counts)
    n = int(counts.sum())
    frame = pd.DataFrame({
        "visitor": np.repeat(np.arange(first_visitor, first_visitor + len(events), dtype=np.int64), counts),
        "time": pd.to_datetime(created, unit="s", utc=True),
        "slot": per_slot(lambda e: e.slots), "action": per_slot(lambda e: e.actions),
        "reward": per_slot(lambda e: e.rewards, float), "baseline": per_slot(lambda e: e.baselines),
        "probability": per_slot(lambda e: e.probabilities, float), "exploration": np.full(n, None, dtype=object),
        "context": per_event([e.context for e in events]), "source": np.full(n, SOURCE_LOG, dtype=object),
        "backend": np.full(n, None, dtype=object), "scenario": np.full(n, None, dtype=object),
        "policy": np.full(n, None, dtype=object), "experiment": np.full(n, np.nan),
        "eventId": np.repeat(np.fromiter((e.seq for e in events), dtype=np.int64, count=len(events)), counts),
        "expected": np.full(n, np.nan), "oracle": np.full(n, np.nan), "baselineExpected": np.full(n, np.nan),
        "note": np.full(n, None, dtype=object),
        "catalog": np.repeat(np.fromiter((e.catalog for e in events), dtype=np.int64, count=len(events)), counts),
        "mode": per_event([e.mode for e in events]),
    })
    return frame[LOG_COLUMNS]


def in_scope(frame: pd.DataFrame, catalog: int | None, since: float | None = None) -> pd.DataFrame:
    """One catalog's rows (None: no rows), from ``since`` (epoch seconds) on when given."""
    if catalog is None:
        return frame.iloc[0:0]
    keep = frame["catalog"].to_numpy() == catalog
    if since is not None:
        keep &= (frame["time"] >= pd.Timestamp(since, unit="s", tz="UTC")).to_numpy()
    return frame[keep]


def parse_time(value: Any) -> float | None:
    """Epoch seconds from an ISO time (``model_properties().creationTime``), None when absent or unreadable."""
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return (parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)).timestamp()


def policy_change_times(backend: Personalizer) -> list[tuple[float, str]]:
    """``(time, label)`` of each recorded policy change, oldest first; [] when the backend cannot list them.

    Reads ``policy_history()`` (a list of changes, newest first; an older server's
    ``{"value": [...]}`` also read), each change with its ``time`` (ISO; ``created``
    epoch seconds also read), ``action`` and, when told, ``after.name``.
    """
    try:
        answer: Any = backend.policy_history()
    except (PersonalizerError, OSError) as exc:  # e.g. a server without the route: the curves stand alone
        log.info("no policy changes to mark: %r", exc)
        return []
    changes = answer.get("value", []) if isinstance(answer, dict) else answer
    out = []
    for change in changes or []:
        if not isinstance(change, dict):
            continue
        when = change.get("created", change.get("time", change.get("creationTime")))
        at = float(when) if isinstance(when, (int, float)) else parse_time(when)
        if at is None:
            continue
        name = (change.get("after") or {}).get("name") if isinstance(change.get("after"), dict) else None
        verb = "Rolled back to" if change.get("action") == "rollback" else "Policy:"
        out.append((at, f"{verb} {name}" if name else "Policy changed"))
    return sorted(out)


def time_markers(df: pd.DataFrame, marks: list[tuple[float, str]]) -> pd.DataFrame:
    """Rules at times (``(epoch, label)``) as ``slot, n, label`` on each slot's curve of rewarded rows."""
    done = df[df["reward"].notna()]
    out = []
    if not marks or done.empty:
        return pd.DataFrame(out, columns=["slot", "n", "label"])
    for slot, rows in done.groupby("slot", sort=False):
        times = rows["time"].astype("int64").to_numpy() / 1e9
        for at, label in marks:
            i = int(np.searchsorted(times, at))
            if 0 < i < len(times):
                out.append({"slot": str(slot), "n": i + 1, "label": label})
    return pd.DataFrame(out, columns=["slot", "n", "label"])
