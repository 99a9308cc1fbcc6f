"""Logged data: events read from the engine's log, encoded once as VW examples (through ``vw.encoding``)
with their weights' ingredients (probabilities, baselines, open actions) for every estimator."""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from ..contract import PersonalizerError, evaluation_time
from ..engine import (
    labeled_example,
)
from ..interface import LocalEngine, Personalizer
from ..vw import encoding
from ..vw.encoding import encode_request
from .constants import _MIN_PROBABILITY
from .estimators import _reward_range

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
    """What every event of one distinct request shares: head lines and the slot bodies without their seed tag."""

    head: list[str]
    untagged: list[str]  # per slot: slot_body(id, features, None); each event adds its own seed tag
    allowed: list[list[int]]
    allowed_sets: list[set[int]]
    index: dict[str, int]
    slot_codes: list[int]
    baselines: list[int]

    def bodies(self, event_id: str) -> list[str]:
        """The slot bodies of one event, exactly as ``encode_request`` builds them."""
        return [encoding.seeded_slot_body(rest, event_id, k) for k, rest in enumerate(self.untagged)]


def _template(request: dict[str, Any], event_id: str, slot_codes: dict[str, int]) -> tuple[_Template, list[str]]:
    head, bodies, allowed, index = encode_request(request, event_id)
    slots = request["slots"]
    untagged = [encoding.slot_body(s["id"], s["features"], None) for s in slots]
    tpl = _Template(head, untagged, allowed, [set(a) for a in allowed], index,
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
            bodies = tpl.bodies(ev.event_id)
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


def _timestamp(value: Any, what: str) -> float:
    """Epoch seconds from epoch numbers, datetimes or ISO-8601 strings (naive means UTC); the
    rules are ``contract.evaluation_time``'s (``EvaluationContract`` reads its times with it)."""
    try:
        return evaluation_time(value, what).timestamp()
    except ValueError as exc:
        raise PersonalizerError("InvalidEvaluationContract", str(exc)) from None


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
