"""What one browser tab keeps in ``st.session_state``, behind small accessors.

Each tab (a Streamlit session) has its own history, current visitor, messages
and simulator result; the backend is shared (see :mod:`.backend`). ``app.py``
puts this run's backend and scenario here before the page runs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import streamlit as st

from ..interface import Personalizer
from ..simulation import Scenario
from .backend import BackendChoice, default_choice, open_backend
from .experiments import Experiment, Experiments
from .history import History
from .insight import WhyLines
from .labels import Labels
from .ranking import RankedEvent
from .remote import ConnectionCheck
from .simulator import SimulationResult

_HISTORY = "studio.history"
_EVENT = "studio.event"
_NEW_VISITOR = "studio.new_visitor"
_FLASH = "studio.flash"
_CHOICE = "studio.backend_choice"
_SCENARIO = "studio.scenario"
_SIM_RESULT = "studio.sim_result"
_CONFIRM_RESET = "studio.confirm_reset"
_CHECK = "studio.connection_check"
_EVALUATION = "studio.evaluation"
_EXPERIMENTS = "studio.experiments"
_LABELS = "studio.labels"
_CONFIG = "studio.config"
_SCENARIO_PROBLEM = "studio.scenario_problem"
_SIM_VISITORS = "studio.sim_visitors"
_APPLIED = "studio.applied"
_NEW_CATALOG = "studio.new_catalog"
_WHY = "studio.why"                               # (eventId, {slot id: WhyLines}) of the visitor on screen
_IMPORTANCE_JOB = "studio.importance_job"         # the feature-importance report the tab shows
_TREND_REPORT = "studio.trend_report"             # the callable "Download report" serves
_TREND_VIEW = "studio.trend_view"                 # the person's pick survives leaving the page (widgets do not)
_ROLLBACK_MESSAGE = "studio.policy_history.message"  # the last rollback's outcome, shown once
_APP_RUN = "studio.app_run"                       # set while app.py runs (see .routing)

# Keys of widgets whose value a page also seeds or reads outside the widget call.
SCENARIO_WIDGET = "scenario-choice"               # the sidebar's scenario (session.py asks if it is an upload)
SIM_VISITORS_WIDGET = "sim-visitors"
EVALUATION_PICK_WIDGET = "eval-pick"
IMPORTANCE_PICK_WIDGET = "why-report"
TREND_EXPERIMENT_WIDGET = "trend-experiment"
TREND_CURRENT = "trend-current"                   # the current experiment when the pick above was made
TREND_VIEW_WIDGET = "trend-view"


def history() -> History:
    """This tab's event history (created on first use)."""
    if _HISTORY not in st.session_state:
        st.session_state[_HISTORY] = History()
    return st.session_state[_HISTORY]


def backend_choice() -> BackendChoice:
    """This tab's backend choice (the embedded engine unless changed)."""
    if _CHOICE not in st.session_state:
        st.session_state[_CHOICE] = default_choice()
    return st.session_state[_CHOICE]


def set_backend_choice(choice: BackendChoice) -> None:
    """Switch this tab to another backend (its visitor and connection check belong to the old one: drop them)."""
    if st.session_state.get(_CHOICE) != choice:
        st.session_state[_EVENT] = None
        st.session_state.pop(_CHECK, None)
    st.session_state[_CHOICE] = choice  # also when equal: the key's source may have changed


def connection_check() -> ConnectionCheck | None:
    """The last "Test connection" result of this tab (for the current backend)."""
    return st.session_state.get(_CHECK)


def set_connection_check(check: ConnectionCheck | None) -> None:
    """Remember (or forget) a "Test connection" result."""
    st.session_state[_CHECK] = check


def backend() -> Personalizer:
    """The shared backend instance for this tab's choice."""
    return open_backend(backend_choice())


def set_scenario(scenario: Scenario | None) -> None:
    """The scenario this run uses (set by the sidebar)."""
    st.session_state[_SCENARIO] = scenario


def scenario() -> Scenario | None:
    """The scenario chosen in the sidebar, or None while an upload is missing or invalid."""
    return st.session_state.get(_SCENARIO)


def current_event() -> RankedEvent | None:
    """The visitor shown on the rank page."""
    return st.session_state.get(_EVENT)


def set_event(event: RankedEvent | None) -> None:
    """Show another visitor (None: rank a new one on the next run of the rank page)."""
    st.session_state[_EVENT] = event


def request_new_visitor() -> None:
    """Callback of "Next visitor": rank a new event on this run."""
    st.session_state[_NEW_VISITOR] = True


def take_new_visitor_request() -> bool:
    """True once after "Next visitor" was clicked."""
    return bool(st.session_state.pop(_NEW_VISITOR, False))


def flash(kind: str, text: str) -> None:
    """Queue a message (``error``, ``warning``, ``success``, ``info``) for the next draw of the page."""
    st.session_state.setdefault(_FLASH, []).append((kind, text))


def take_flashes() -> list[tuple[str, str]]:
    """The queued messages, once."""
    return st.session_state.pop(_FLASH, [])


def simulation_result() -> SimulationResult | None:
    """The last simulator run of this tab."""
    return st.session_state.get(_SIM_RESULT)


def set_simulation_result(result: SimulationResult | None) -> None:
    """Remember the last simulator run (shown on the simulator page)."""
    st.session_state[_SIM_RESULT] = result


def confirming_reset() -> bool:
    """True while the "Reset model" confirmation is open."""
    return bool(st.session_state.get(_CONFIRM_RESET))


def set_confirming_reset(value: bool) -> None:
    """Open or close the "Reset model" confirmation."""
    st.session_state[_CONFIRM_RESET] = value


def evaluation_id() -> str | None:
    """The offline evaluation the Evaluate page shows in this tab."""
    return st.session_state.get(_EVALUATION)


def set_evaluation_id(evaluation_id: str | None) -> None:
    """Show another evaluation on the Evaluate page."""
    st.session_state[_EVALUATION] = evaluation_id


def experiments() -> Experiments:
    """This tab's experiments (created on first use)."""
    if _EXPERIMENTS not in st.session_state:
        st.session_state[_EXPERIMENTS] = Experiments()
    return st.session_state[_EXPERIMENTS]


def experiment() -> Experiment | None:
    """The experiment new rows of this run join (set by ``app.py`` before the page runs)."""
    return experiments().current


def labels() -> Labels:
    """Display names of the sidebar's scenario (ids when it has none)."""
    return st.session_state.get(_LABELS) or Labels()


def set_labels(value: Labels) -> None:
    """Display names of this run's scenario (set by the sidebar)."""
    st.session_state[_LABELS] = value


def service_config() -> dict[str, Any] | None:
    """The backend's service configuration as the sidebar read it on this run (None: not offered)."""
    return st.session_state.get(_CONFIG)


def set_service_config(config: dict[str, Any] | None) -> None:
    """Remember this run's service configuration (the rank page compares the learning mode with it)."""
    st.session_state[_CONFIG] = config


def scenario_problem() -> str | None:
    """Why the sidebar has no scenario (an upload's problems, all of them), or None."""
    return st.session_state.get(_SCENARIO_PROBLEM)


def set_scenario_problem(text: str | None) -> None:
    """Set (or clear) why there is no scenario; the pages show it in the main area."""
    st.session_state[_SCENARIO_PROBLEM] = text


def sim_visitors(default: int) -> int:
    """The simulator's visitor count as last entered in this tab (kept across pages)."""
    return int(st.session_state.get(_SIM_VISITORS, default))


def set_sim_visitors(value: int) -> None:
    """Remember the simulator's visitor count for this tab."""
    st.session_state[_SIM_VISITORS] = int(value)


def applied_policy() -> dict[str, Any] | None:
    """The last policy applied from the Evaluate page in this tab: name, arguments, the sentence shown."""
    return st.session_state.get(_APPLIED)


def set_applied_policy(value: dict[str, Any] | None) -> None:
    """Remember what "Apply" installed (its arguments go behind a details toggle)."""
    st.session_state[_APPLIED] = value


def new_catalog() -> bool:
    """True while the model has learned nothing from the sidebar's catalog (set by ``app.py``)."""
    return bool(st.session_state.get(_NEW_CATALOG))


def set_new_catalog(value: bool) -> None:
    """Mark whether the model has seen the current catalog."""
    st.session_state[_NEW_CATALOG] = value


def explanations(event_id: str) -> dict[str, WhyLines] | None:
    """Why each slot of visitor ``event_id`` got its action, when this tab asked already."""
    cached = st.session_state.get(_WHY)
    return cached[1] if cached is not None and cached[0] == event_id else None


def set_explanations(event_id: str, whys: dict[str, WhyLines]) -> None:
    """Remember the explanations of the visitor on screen (asked once per visitor)."""
    st.session_state[_WHY] = (event_id, whys)


def importance_job() -> str | None:
    """The feature-importance report the What-drives page shows in this tab (its id)."""
    return st.session_state.get(_IMPORTANCE_JOB)


def set_importance_job(job_id: str | None) -> None:
    """Show another feature-importance report (None: none picked yet)."""
    st.session_state[_IMPORTANCE_JOB] = job_id


def set_trend_report(document: Callable[[], str] | None) -> None:
    """The callable that renders the trends view on screen as one HTML report (None: nothing to report)."""
    st.session_state[_TREND_REPORT] = document


def trend_view_choice() -> str | None:
    """The trends view (tab or log) the person picked last in this tab, if any."""
    return st.session_state.get(_TREND_VIEW)


def set_trend_view_choice(view: str | None) -> None:
    """Remember the person's trends view across pages."""
    st.session_state[_TREND_VIEW] = view


def set_rollback_message(kind: str, text: str) -> None:
    """The outcome of a policy rollback (``success`` or ``error``), shown once next to the buttons."""
    st.session_state[_ROLLBACK_MESSAGE] = (kind, text)


def take_rollback_message() -> tuple[str, str] | None:
    """The last rollback's outcome, once."""
    return st.session_state.pop(_ROLLBACK_MESSAGE, None)


def app_run() -> bool:
    """True while ``app.py`` runs this script run (a page run on its own finds it unset)."""
    return bool(st.session_state.get(_APP_RUN))


def set_app_run(running: bool) -> None:
    """Mark (or unmark) this script run as going through ``app.py``."""
    if running:
        st.session_state[_APP_RUN] = True
    else:
        st.session_state.pop(_APP_RUN, None)


# ---------------------------------------------------------------- widget values
# Widgets keep their values under their own ``key=`` in the session; the sidebar and
# pages read and seed them through these, so every session access goes through here.

def value(key: str, default: Any = None) -> Any:
    """The value kept under ``key`` (a widget's key or a cache), or ``default``."""
    return st.session_state.get(key, default)


def has_value(key: str) -> bool:
    """Whether anything is kept under ``key`` yet."""
    return key in st.session_state


def set_value(key: str, new: Any) -> None:
    """Keep ``new`` under ``key`` (seeds a widget before it is drawn)."""
    st.session_state[key] = new


def take_value(key: str, default: Any = None) -> Any:
    """Remove and return what is kept under ``key``."""
    return st.session_state.pop(key, default)


def value_list(key: str) -> list[Any]:
    """The list kept under ``key``, created empty the first time."""
    return st.session_state.setdefault(key, [])

