"""Simulated visitors through a backend, appended to a tab's history chunk by chunk.

The run is split into chunks (default 100 visitors): after each chunk its rows
join the history and the progress callback fires. Streamlit can stop a script
only at a Streamlit call, i.e. in the callback, between chunks, so an
interrupted run (the person clicks elsewhere) keeps every visitor the backend
already learned from in the history. A drifting profile switches at the same
visitor as one uninterrupted :func:`simulation.simulate` run would.
"""

from __future__ import annotations

import math
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..evaluation import Lift
from ..simulation import Backend, OracleBackend, Scenario, simulate
from .history import History
from .lift import from_history

MIN_VISITORS = 10
MAX_VISITORS = 10_000
CHUNK = 100
ORACLE_VISITORS = 2_000

Progress = Callable[[int, int, float], None]


@dataclass
class SimulationResult:
    """What a run did: visitors, time, and accept rates against the references."""

    profile: str
    visitors: int
    seconds: float
    accept_rate: float
    first_rate: float
    last_rate: float
    oracle_rate: float
    baseline_rate: float
    exploring_oracle_rate: float = math.nan   # the oracle exploring as often as the backend does
    epsilon: float = 0.0                      # that exploration share
    lift: Lift | None = None                  # personalized vs each slot's baseline, first slot, over this run
    experiment: int | None = None             # the experiment the run belongs to

    @property
    def per_second(self) -> float:
        """Visitors per second (backend, history and progress included)."""
        return self.visitors / self.seconds if self.seconds > 0 else math.inf


def _phases(profile: Scenario) -> tuple[Scenario, Scenario | None]:
    """The profile without drift, and (if it drifts) the profile that takes over, as drift-free scenarios."""
    if profile.drift is None:
        return profile, None
    data = profile.to_dict()
    data.pop("drift")
    before = Scenario.from_dict(data)
    data["preferences"] = profile.drift["preferences"]
    return before, Scenario.from_dict(data)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def run_simulation(backend: Backend, profile: Scenario, visitors: int, history: History, *,
                   seed: int | None = None, on_progress: Progress | None = None,
                   chunk: int = CHUNK, epsilon: float = 0.0,
                   tags: Mapping[str, Any] | None = None) -> SimulationResult:
    """Play ``visitors`` simulated visitors with ``profile``'s hidden preferences through ``backend``.

    Rows go into ``history`` as ``simulated`` after every chunk; ``on_progress(done,
    total, seconds)`` is called after each chunk. Event ids are fresh per run
    (``sim-<random>-<chunk>-<i>``), so a durable backend never sees one twice.

    Beside the oracle that always shows the best page, an oracle that explores with
    ``epsilon`` (the backend's own exploration share) plays visitors drawn the same way:
    that is the ceiling a learner exploring that often can reach. ``tags`` go on every row.
    """
    if not MIN_VISITORS <= visitors <= MAX_VISITORS:
        raise ValueError(f"visitors must be between {MIN_VISITORS} and {MAX_VISITORS:,}, got {visitors}")
    seed = secrets.randbits(31) if seed is None else seed
    run_id = secrets.token_hex(4)
    before, after = _phases(profile)
    switch = visitors if after is None else math.ceil(float(profile.drift_at or 1.0) * visitors)
    accepted: list[float] = []
    oracle: list[float] = []
    baseline: list[float] = []
    per_visitor: list[float] = []
    first_row = len(history.rows)
    start = time.perf_counter()
    done = 0
    k = 0
    while done < visitors:
        phase = 1 if done >= switch else 0
        limit = visitors if phase == 1 else switch
        size = min(chunk, limit - done)
        truth = after if phase == 1 and after is not None else before
        records = simulate(backend, truth, size, seed + k, event_prefix=f"sim-{run_id}-{k}-")
        for r in records:
            r["phase"] = phase
        if phase == 1 and done == switch and records:
            for r in records[:len(truth.slot_ids)]:
                r["note"] = "Simulated drift: tastes change"
        history.add_simulated(records, profile.name, tags)
        for i in range(0, len(records), len(truth.slot_ids)):
            group = records[i:i + len(truth.slot_ids)]
            per_visitor.append(_mean([g["accepted"] for g in group]))
        accepted.extend(r["accepted"] for r in records)
        oracle.extend(r["oracle_expected"] for r in records)
        baseline.extend(r["baseline_expected"] for r in records)
        done += size
        k += 1
        if on_progress is not None:
            on_progress(done, visitors, time.perf_counter() - start)
    seconds = time.perf_counter() - start
    # The oracle exploring like the backend, over visitors drawn the same way (at least 2,000, so its
    # expected rate is steady; no VW involved, a few milliseconds), drift included.
    exploring = [r["expected"] for r in simulate(OracleBackend(profile, epsilon, seed=seed), profile,
                                                 max(visitors, ORACLE_VISITORS), seed)]
    tenth = max(1, visitors // 10)
    report = from_history(history.frame().iloc[first_row:])
    return SimulationResult(
        profile=profile.name, visitors=visitors, seconds=seconds, accept_rate=_mean(accepted),
        first_rate=_mean(per_visitor[:tenth]), last_rate=_mean(per_visitor[-tenth:]),
        oracle_rate=_mean(oracle), baseline_rate=_mean(baseline), exploring_oracle_rate=_mean(exploring),
        epsilon=epsilon, lift=report.headline, experiment=(tags or {}).get("experiment"),
    )
