"""The event log in one exported shape: ``logs export`` (JSON Lines), the ``logs/events`` listing, the dashboard.

One event becomes one JSON object (:class:`ExportedEvent`): its id and creation time, the
validated rank request, what each slot served with its probability, every reward received
(late ones too, marked), its status, the labels it was learned with and its learning order,
the model that ranked it (PostgreSQL replicas record it) and its mode, deferral and
activation. The same shape comes out of both stores (SQLite and PostgreSQL), of the
command line, of the REST listing and of both backends' ``log_events``, so a tool written
against one reads them all.

Reading is streamed: the command line writes each event as it comes off the store's cursor,
and the listing reads one page (``top`` events, at most :data:`MAX_TOP`) at a time. A listing
position (``after``) is an opaque cursor: the creation time and log sequence of the last event
listed. The log only grows at its end (events are created in the order of their sequence on
SQLite, and sorted by creation time, then sequence, on PostgreSQL), so a cursor stays valid
while new events arrive: the next page starts exactly after it, nothing twice, nothing skipped.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import os
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import IO, Any
from urllib.parse import urlencode

from pydantic import BaseModel, ConfigDict, Field

from .contract import PersonalizerError
from .store import LogPosition, LogRecord

__all__ = ["DEFAULT_TOP", "MAX_TOP", "ExportedEvent", "ExportedReward", "ExportedSlot", "LogEventsPage", "LogPage",
           "export_log", "exported", "exported_json", "iterate_pages", "page_arguments", "page_of", "parse_time"]

#: Events per listing page when ``top`` is not given, and the most one page may hold.
DEFAULT_TOP = 500
MAX_TOP = 5000
_CURSOR_PREFIX = "c1."


class ExportedSlot(BaseModel):
    """What one slot served: the action and the probability it had of being chosen."""

    model_config = ConfigDict(extra="ignore")

    id: str
    rewardActionId: str
    probability: float | None = Field(default=None, description="The chosen action's probability (as ranked).")


class ExportedReward(BaseModel):
    """One reward received for one slot (every call is kept, whatever the aggregation)."""

    model_config = ConfigDict(extra="ignore")

    slotId: str
    value: float
    received: str = Field(description="When it arrived (ISO-8601 UTC).")
    late: bool = Field(description="Arrived after the event closed: logged, answered 409, never learned.")


class ExportedEvent(BaseModel):
    """One logged event, as ``logs export`` writes it and ``GET .../logs/events`` lists it."""

    model_config = ConfigDict(extra="ignore")

    eventId: str
    created: str = Field(description="When it was ranked (ISO-8601 UTC).")
    request: dict[str, Any] = Field(description="The validated multi-slot rank request, as logged.")
    slots: list[ExportedSlot] = Field(description="Each slot's served action and its probability, in slot order.")
    rewards: list[ExportedReward] = Field(description="Every reward received, in arrival order.")
    status: str = Field(description="pending (its reward may still come), learned, logged (not learned: "
                                    "LoggingOnly) or discarded (deferred and never activated).")
    closed: str | None = Field(default=None, description="When it left pending (ISO-8601 UTC).")
    labels: list[float | None] | None = Field(
        default=None, description="Each slot's reward as learned (aggregated, or the default reward).")
    learnSeq: int | None = Field(default=None, description="Its place in the learning order, when learned.")
    modelId: int | None = Field(
        default=None, description="The published model that ranked it (PostgreSQL replicas; null on SQLite).")
    mode: str = Field(description="The learning mode it was ranked in (Online, Apprentice, LoggingOnly).")
    deferred: bool = Field(description="Ranked with deferActivation: learned only once activated.")
    activated: str | None = Field(default=None, description="When a deferred event was activated (ISO-8601 UTC).")


class LogEventsPage(BaseModel):
    """One page of the log listing."""

    model_config = ConfigDict(extra="ignore")

    value: list[ExportedEvent]
    nextLink: str | None = Field(default=None, description="The next page (null: the end of the log for now).")
    cursor: str | None = Field(
        default=None, description="Opaque position after the last event listed: pass it as 'after' later to read "
                                  "only what came since (null: nothing listed yet, read from the start).")


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _iso(ts: float | None) -> str | None:
    """ISO-8601 UTC to the microsecond, truncated (not rounded): an event's own ``created`` given as ``start``
    includes it, and as ``end`` leaves it out."""
    if ts is None:
        return None
    return (_EPOCH + timedelta(microseconds=math.floor(ts * 1_000_000))).isoformat(timespec="microseconds")[:-6] + "Z"


def _rest(record: LogRecord) -> dict[str, Any]:
    """Every field after ``request``, in the shape's order."""
    return {
        "slots": [{"id": s.get("id"), "rewardActionId": s.get("rewardActionId"), "probability": s.get("probability")}
                  for s in record.response.get("slots", [])],
        "rewards": [{"slotId": slot, "value": value, "received": _iso(received), "late": late}
                    for slot, value, received, late in record.rewards],
        "status": record.status,
        "closed": _iso(record.closed),
        "labels": record.labels,
        "learnSeq": record.learn_seq,
        "modelId": record.model_id,
        "mode": record.mode,
        "deferred": record.deferred,
        "activated": _iso(record.activated),
    }


def exported(record: LogRecord) -> dict[str, Any]:
    """The exported shape of one log record (a plain dict: building 100,000 pydantic models would double
    the export's time; ``ExportedEvent.model_validate`` accepts every one of them)."""
    return {"eventId": record.event_id, "created": _iso(record.created), "request": json.loads(record.request_json),
            **_rest(record)}


_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def exported_json(record: LogRecord) -> str:
    """``exported(record)`` as compact JSON text, equal to encoding it, with the request spliced in as the
    log holds it (valid, compact JSON already): decoding and re-encoding it was half an export's time."""
    head = _encode({"eventId": record.event_id, "created": _iso(record.created)})
    return f'{head[:-1]},"request":{record.request_json},{_encode(_rest(record))[1:]}'


@dataclass
class LogPage:
    """One page of the listing as read: the records, where it ended (``cursor``) and whether more were there."""

    records: list[LogRecord]
    cursor: str | None
    more: bool
    #: The listing's arguments (start, end, top) for the link to the next page.
    query: dict[str, Any]

    def relative_link(self) -> str | None:
        """``logs/events?...&after=<cursor>`` when more events were there, else None."""
        if not self.more:
            return None
        return "logs/events?" + urlencode({**{k: v for k, v in self.query.items() if v is not None},
                                           "after": self.cursor})

    def to_dict(self, next_link: str | None) -> dict[str, Any]:
        """``{"value", "nextLink", "cursor"}`` with each event as a dict."""
        return {"value": [exported(r) for r in self.records], "nextLink": next_link, "cursor": self.cursor}

    def to_json(self, next_link: str | None) -> bytes:
        """``to_dict(next_link)`` as JSON bytes, each request spliced in as logged (what the server sends)."""
        value = ",".join(exported_json(r) for r in self.records)
        return f'{{"value":[{value}],"nextLink":{_encode(next_link)},"cursor":{_encode(self.cursor)}}}'.encode()


# ---------------------------------------------------------------- times and cursors

def parse_time(value: str | None, name: str) -> float | None:
    """Epoch seconds of an ISO-8601 time (naive means UTC); None when absent; a 400 BadRequest otherwise."""
    if value is None or value == "":
        return None
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00").replace("z", "+00:00"))
        return (parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)).timestamp()
    except (ValueError, OverflowError, OSError):
        raise PersonalizerError("BadRequest", f"{name} '{value[:64]}' is not an ISO-8601 date-time "
                                              "(e.g. 2026-12-01T00:00:00Z)", 400) from None


def encode_cursor(position: LogPosition) -> str:
    """The opaque cursor of a log position (creation time and sequence of the last event listed)."""
    text = f"{position[0]!r}:{position[1]}"
    return _CURSOR_PREFIX + base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> LogPosition | None:
    """The log position of a cursor this module made; a 400 BadRequest for anything else."""
    if cursor is None or cursor == "":
        return None
    bad = PersonalizerError("BadRequest", f"after '{cursor[:64]}' is not a cursor of this log's listing "
                                          "(pass the 'cursor' of an earlier page, or nothing to start)", 400)
    if not cursor.startswith(_CURSOR_PREFIX) or len(cursor) > 128:
        raise bad
    body = cursor[len(_CURSOR_PREFIX):]
    try:
        created_text, seq_text = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)).decode().split(":")
        created, seq = float(created_text), int(seq_text)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise bad from None
    if not math.isfinite(created) or seq < 0:
        raise bad
    return created, seq


def page_arguments(start: str | None, end: str | None, after: str | None,
                   top: int | None) -> tuple[float | None, float | None, LogPosition | None, int]:
    """Validated listing arguments (a 400 BadRequest names the first bad one); nothing is read before."""
    lo, hi = parse_time(start, "start"), parse_time(end, "end")
    if lo is not None and hi is not None and hi < lo:
        raise PersonalizerError("BadRequest", f"end '{end}' is before start '{start}'", 400)
    size = DEFAULT_TOP if top is None else top
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= MAX_TOP:
        raise PersonalizerError("BadRequest", f"top must be an integer from 1 to {MAX_TOP}, not '{top}'", 400)
    return lo, hi, decode_cursor(after), size


def page_of(records: list[LogRecord], size: int, after: str | None, query: dict[str, Any]) -> LogPage:
    """The page of up to ``size + 1`` records read after ``after`` (the extra one only says there is more)."""
    listed = records[:size]
    cursor = encode_cursor((listed[-1].created, listed[-1].seq)) if listed else (after or None)
    return LogPage(listed, cursor, len(records) > size, {**query, "top": size})


def iterate_pages(list_page: Callable[..., dict[str, Any]], start: str | None = None, end: str | None = None,
                  after: str | None = None, top: int | None = None) -> Iterator[dict[str, Any]]:
    """Every event of a listing, page after page (``list_page`` is a backend's ``log_events``)."""
    while True:
        page = list_page(start=start, end=end, after=after, top=top)
        yield from page.get("value", [])
        if not page.get("nextLink") or not page.get("value"):
            return
        after = page.get("cursor")


# ---------------------------------------------------------------- the command line's export

def _records(location: str | os.PathLike[str] | None, start: float | None,
             end: float | None) -> tuple[Generator[LogRecord, None, None], Callable[[], None]]:
    """A plain reader of the store ``location`` names (no ownership taken, nothing written), and its closer."""
    from .eventstore import default_location, is_postgres_url
    from .settings import load_settings

    if location is None:
        location = default_location() or load_settings().home
    if is_postgres_url(location):
        from . import pgstore

        conn = pgstore.open_reader(str(location))
        return pgstore.export_rows(conn, start, end), conn.close
    from . import store

    db = store.open_reader(location)
    return store.export_rows(db, start, end), db.close


def export_log(out: IO[str], location: str | os.PathLike[str] | None = None, start: float | None = None,
               end: float | None = None) -> int:
    """Write every event of the log ranked in [start, end) to ``out`` as JSON Lines, in log order;
    returns how many. ``location``: a data directory or a ``postgresql://`` URL (default: as ``serve``)."""
    records, close = _records(location, start, end)
    try:
        return write_lines(records, out)
    finally:
        records.close()  # the cursor first, then its connection
        close()


def write_lines(records: Iterable[LogRecord], out: IO[str]) -> int:
    """One compact JSON object per line per record; returns how many."""
    n = 0
    for record in records:
        out.write(exported_json(record))
        out.write("\n")
        n += 1
    return n
