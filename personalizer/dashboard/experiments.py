"""Experiments: which rows of a tab's history belong together (plain Python, no Streamlit).

An experiment is one backend + one scenario (catalog and hidden preferences) +
one model (the span since the last reset or policy change). Every number on the
Reward trends, Simulator and Evaluate pages is computed over one experiment, so
visitors answered on another backend, another catalog or by a model that has
since been reset never mix into it. Each history row carries its experiment's
number; switching any of the three starts a new experiment, and the old ones stay
selectable.

The "whole log" view joins the experiments of one backend and one catalog (a
scenario switch that keeps the catalog, a reset, a policy change), with a
labelled rule on the curves where each began.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime

from ..simulation import Scenario


def catalog_key(scenario: Scenario) -> str:
    """A short fingerprint of what a rank request contains: context options, actions, slots."""
    canonical = json.dumps([scenario.context_options, scenario.actions, scenario.slots], sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Experiment:
    """One experiment of a tab: where it ran, on what, with which model, and why it began."""

    number: int
    backend: str                 # "Embedded engine" or "Remote http://host:port"
    catalog: str                 # catalog_key of the scenario
    scenario: str                # scenario name
    policy: str                  # the backend's policy name ("" when it does not say)
    model: str                   # the model's creation time as the backend reports it ("" when unknown)
    reason: str                  # why it began, in words ("Model reset", "Scenario switched to seed-joint")
    learned_base: int | None = None  # the backend's "learned" count when it began (None: not told)
    started: datetime = field(default_factory=lambda: datetime.now(UTC))

    def same_series(self, other: Experiment) -> bool:
        """True when both ran on the same backend and catalog (their curves can be drawn as one)."""
        return self.backend == other.backend and self.catalog == other.catalog

    @property
    def label(self) -> str:
        """How a selector names it: ``#3 · Remote http://… · seed-joint · since 20:14:05 UTC (model reset)``."""
        return (f"#{self.number} · {self.backend} · {self.scenario} · since {self.started:%H:%M:%S} UTC "
                f"({self.reason[:1].lower() + self.reason[1:]})")


def _why(old: Experiment | None, backend: str, catalog: str, scenario: str, policy: str, model: str) -> str:
    """Why a new experiment starts, in words, from what changed."""
    if old is None:
        return "First visitor of this tab"
    if old.backend != backend:
        return f"Backend switched to {backend}"
    if old.catalog != catalog:
        return f"Catalog switched to {scenario}"
    if old.scenario != scenario:
        return f"Scenario switched to {scenario}"
    if old.policy != policy:
        return f"Policy applied: {policy}" if policy else "Policy changed"
    return "Model reset"


class Experiments:
    """The experiments of one tab, oldest first; :meth:`current` is the one new rows join."""

    def __init__(self) -> None:
        self.items: list[Experiment] = []
        self._current: Experiment | None = None
        self.used: set[int] = set()  # experiments that got rows (their backend's model learned from them)

    def mark_used(self, experiment: Experiment) -> None:
        """Note that rows were added to ``experiment``."""
        self.used.add(experiment.number)

    def observe(self, backend: str, catalog: str, scenario: str, policy: str, model: str,
                learned: int | None = None) -> Experiment:
        """The experiment for these settings: the current one when nothing changed, else a new one."""
        cur = self._current
        if cur is not None and (cur.backend, cur.catalog, cur.scenario, cur.policy, cur.model) == (
                backend, catalog, scenario, policy, model):
            return cur
        key = (backend, catalog, scenario, policy, model)
        for i in range(len(self.items) - 1, -1, -1):
            past = self.items[i]
            if (past.backend, past.catalog, past.scenario, past.policy, past.model) == key:
                # Back on a backend after working elsewhere (or only looking): the same experiment goes
                # on, since this tab taught that model nothing in between.
                if all(e.backend != backend or e.number not in self.used for e in self.items[i + 1:]):
                    self._current = past
                    return past
                break
        # Otherwise a new experiment, even when going back to earlier settings on the same backend
        # (its model learned from other visitors in between).
        new = Experiment(len(self.items) + 1, backend, catalog, scenario, policy, model,
                         _why(cur, backend, catalog, scenario, policy, model),
                         learned_base=self._learned_base(backend, model, learned))
        self.items.append(new)
        self._current = new
        return new

    def _learned_base(self, backend: str, model: str, learned: int | None) -> int | None:
        """The backend's "learned" count when this model started, if this tab saw it start.

        Known when an earlier experiment on the same backend had another model (a reset
        or a policy change seen from here): then the count at that moment. The same model
        seen before keeps its base; a model first met already trained has none.
        """
        same_model = [e for e in self.items if e.backend == backend and e.model == model]
        if same_model:
            return same_model[0].learned_base
        if model and any(e.backend == backend and e.model and e.model != model for e in self.items):
            return learned
        return None

    @property
    def current(self) -> Experiment | None:
        """The experiment of the last :meth:`observe`."""
        return self._current

    def get(self, number: int) -> Experiment | None:
        """An experiment by number."""
        return self.items[number - 1] if 1 <= number <= len(self.items) else None

    def series(self, experiment: Experiment) -> list[Experiment]:
        """Every experiment on the same backend and catalog, oldest first (the "whole log" view)."""
        return [e for e in self.items if e.same_series(experiment)]
