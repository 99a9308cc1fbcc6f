"""What ``app.py`` does between the sidebar and the page: settle this run's experiment.

Streamlit-facing (reads the session through :mod:`.state`). The experiment is
decided once per run, before the page draws, so every page of the run counts
the same rows (see :mod:`.experiments`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from ..contract import PersonalizerError
from . import state
from .experiments import Experiment, catalog_key
from .sidebar import UPLOAD

log = logging.getLogger(__name__)


def _call(method: Callable[[], dict[str, Any]], what: str) -> dict[str, Any]:
    """A backend call the experiment needs, or {} when the backend refuses it."""
    try:
        answer = method()
    except PersonalizerError as exc:  # a server without that route: the experiment just knows less
        log.info("%s unavailable: %s", what, exc.code)
        return {}
    return answer if isinstance(answer, dict) else {}


def backend_label() -> str:
    """This tab's backend in words: ``Embedded engine`` or ``Remote http://host:port``."""
    choice = state.backend_choice()
    return f"Remote {choice.endpoint}" if choice.remote else "Embedded engine"


def settle_experiment() -> Experiment | None:
    """The experiment of this run (a new one when backend, scenario, policy or model changed); None without one."""
    scenario = state.scenario()
    if scenario is None:
        return None
    try:
        backend = state.backend()
    except PersonalizerError:
        return None
    try:
        policy = str(_call(backend.get_policy, "policy").get("name") or "")
        model = str(_call(backend.model_properties, "model properties").get("creationTime") or "")
        learned = _call(backend.stats, "stats").get("learned")
    except OSError:  # unreachable: the page says so itself
        return None
    book = state.experiments()
    experiment = book.observe(backend_label(), catalog_key(scenario), scenario.name, policy, model,
                              int(learned) if isinstance(learned, (int, float)) else None)
    state.set_new_catalog(state.value(state.SCENARIO_WIDGET) == UPLOAD and not _seen(experiment))
    return experiment


def _seen(experiment: Experiment) -> bool:
    """True when this tab answered a visitor of this catalog on this backend with this model."""
    same = [e.number for e in state.experiments().items
            if e.same_series(experiment) and e.model == experiment.model]
    df = state.history().frame()
    return bool((df["experiment"].isin(same) & df["reward"].notna()).any())


def tags(experiment: Experiment | None) -> dict[str, Any]:
    """The history tags for rows about to join ``experiment`` (which is marked as used)."""
    if experiment is None:
        return {"backend": backend_label()}
    state.experiments().mark_used(experiment)
    return {"backend": experiment.backend, "policy": experiment.policy, "experiment": experiment.number}
