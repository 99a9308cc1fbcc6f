"""What one browser tab keeps in ``st.session_state``, behind small accessors.

Each tab (a Streamlit session) has its own history, current visitor, messages
and simulator result; the backend is shared (see :mod:`.backend`). ``app.py``
puts this run's backend and scenario here before the page runs.
"""

from __future__ import annotations

from typing import Any

import streamlit as st

from ..simulation import Scenario
from .backend import BackendChoice, default_choice, open_backend
from .history import History
from .ranking import Backend, RankedEvent
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


def backend() -> Backend:
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


def get(key: str, default: Any = None) -> Any:
    """Any other session value (widgets' state)."""
    return st.session_state.get(key, default)
