"""The "Policy history" section of the Evaluate page: every policy change, newest first, with one-click rollback.

Drawn by :func:`section` from any backend (the embedded engine, or a client of this
project's server: both keep a policy history); the text helpers below it are plain
functions that tests import without Streamlit.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import streamlit as st

from ..contract import PersonalizerError
from ..interface import Personalizer
from ..policy_history import same_arguments
from . import state, widgets
from .capabilities import local_engine
from .ranking import BACKEND_ERRORS, error_text
from .text import md, md_block

log = logging.getLogger(__name__)

#: How many of the newest changes the section lists.
SHOWN_CHANGES = 10
_ICONS = {"success": ":material/check_circle:", "error": ":material/error:"}
_WHO = {"auto": "automatic optimization", "person": "a person (dashboard)", "api": "the API"}
_ACTION = {"update": "New policy", "reset": "Reset to the default", "evaluation": "Applied from an evaluation",
           "auto": "Applied automatically", "rollback": "Rollback"}


def headline(change: dict[str, Any]) -> str:
    """``Applied automatically: A → B`` (Markdown-safe): what the change did."""
    action = _ACTION.get(change.get("action", ""), str(change.get("action", "")))
    before, after = change.get("before") or {}, change.get("after") or {}
    return f"**{md(action)}**: {md(before.get('name', '?'))} → {md(after.get('name', '?'))}"


def details(change: dict[str, Any]) -> str:
    """When, by whom, from which evaluation, and the estimated lift with its interval (Markdown-safe)."""
    when = str(change.get("time") or "")[:19].replace("T", " ")
    parts = [f"{md(when)} UTC", f"by {md(_WHO.get(change.get('who', ''), change.get('who', '')))}"]
    if change.get("rollbackOf"):
        parts.append(f"undoes change {md(change['rollbackOf'])}")
    lift = lift_text(change.get("estimate"))
    if lift:
        parts.append(lift)
    return " · ".join(parts)


def lift_text(estimate: dict[str, Any] | None) -> str | None:
    """``estimated +12.3 points (+5.1 to +19.0) over 1,499 events`` for a change from an evaluation, else None."""
    if not estimate:
        return None
    lift = estimate.get("lift")
    lo, hi = (estimate.get("liftInterval") or [None, None])[:2]
    if not _finite(lift):
        return None
    interval = f" ({100 * lo:+.1f} to {100 * hi:+.1f})" if _finite(lo) and _finite(hi) else ""
    events = estimate.get("events")
    over = f" over {int(events):,} events" if isinstance(events, int) else ""
    return f"estimated {100 * lift:+.1f} accept-rate points{interval} against the online policy{over}"


def restores_live(change: dict[str, Any], live: dict[str, Any], exploration: float) -> bool:
    """True when rolling ``change`` back would install what already runs (its "before" is live)."""
    before = change.get("before") or {}
    try:
        same = same_arguments(str(before.get("arguments", "")), str(live.get("arguments", "")))
    except (ValueError, PersonalizerError):  # an unparsable stored policy: rolling back to it is refused with a reason
        return False
    return same and before.get("explorationPercentage") == exploration


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def rollback(backend: Personalizer, change_id: str) -> None:
    """Callback of "Roll back": restore the policy a change replaced (tried like any new policy)."""
    engine = local_engine(backend)
    try:
        # The engine records who asked; through a server the change is the API's.
        done = engine.rollback_policy(change_id, who="person") if engine is not None \
            else backend.rollback_policy(change_id)
    except BACKEND_ERRORS as exc:
        log.warning("rollback of %s failed: %r", change_id, exc)
        state.set_rollback_message("error", f"Could not roll back change {change_id}. {error_text(exc)}")
        return
    state.set_rollback_message("success", f"Rolled back change {change_id}: the engine now learns with "
                                          f"{(done.get('after') or {}).get('arguments', '')} (a fresh model).")


def section(backend: Personalizer) -> None:
    """Policy history with one-click rollback."""
    st.subheader("Policy history", anchor=False)
    try:
        changes = backend.policy_history()[:SHOWN_CHANGES]
        live = backend.get_policy()
        config = backend.get_service_configuration()
    except BACKEND_ERRORS as exc:
        widgets.show_error(exc, "Could not read the policy history")
        return
    auto = "on" if config.get("isAutoOptimizationEnabled") else "off"
    engine = local_engine(backend)
    last = engine.auto_optimization_state().get("lastRun") if engine is not None else None
    note = f" Last run {md(str(last.get('time', ''))[:16].replace('T', ' '))} UTC: {md(last.get('decision', ''))}, " \
           f"{md(last.get('reason', ''))}." if last else ""
    st.caption(f"Every change of the learning settings, by a person, the API or automatic optimization "
               f"(now {auto}; set it in the service configuration).{note} Rolling back restores the settings "
               "a change replaced; the model starts fresh with them.")
    message = state.take_rollback_message()  # "Rolled back ...": next to the buttons that did it
    if message is not None:
        kind, text = message
        (st.success if kind == "success" else st.error)(md_block(text), icon=_ICONS[kind])
    if not changes:
        st.caption("No policy change yet.")
        return
    exploration = float(config.get("explorationPercentage", 0.2))
    for change in changes:
        with st.container(border=True, horizontal=True, vertical_alignment="center"):
            with st.container():
                st.markdown(headline(change))
                st.caption(details(change))
            live_already = restores_live(change, live, exploration)
            st.button("Roll back", key=f"policy-rollback-{change['id']}", on_click=rollback,
                      args=(backend, change["id"]), disabled=live_already, icon=":material/undo:",
                      help="Its previous settings are the live ones already." if live_already else
                      f"Back to {(change.get('before') or {}).get('arguments', '')}")
