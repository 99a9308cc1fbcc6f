"""Rank & reward: set the visitor's context, see one card per slot, accept or reject each."""

import streamlit as st

from personalizer.contract import PersonalizerError
from personalizer.dashboard import routing, session, state, widgets
from personalizer.dashboard.capabilities import top_picks
from personalizer.dashboard.insight import WhyLines, why_lines
from personalizer.dashboard.ranking import BACKEND_ERRORS, RankedEvent, contexts_equal, error_text, rank_visitor
from personalizer.interface import Personalizer


def stale(event: RankedEvent | None) -> bool:
    """True when the visitor on screen no longer shows what the backend would serve.

    A reset, a new policy or another backend or scenario (a new experiment), or another
    learning mode (Apprentice serves baselines): the visitor is ranked again at once.
    """
    if event is None:
        return True
    experiment = state.experiment()
    if experiment is not None and event.experiment != experiment.number:
        return True
    config = state.service_config()
    return config is not None and event.learning_mode is not None \
        and config.get("learningMode") != event.learning_mode


def main() -> None:
    st.title("Rank & reward", anchor=False)
    st.caption("Pick the visitor's context. Each slot shows what the model ranked for it; Accept sends "
               "reward 1 and Reject 0 for that slot. A visitor is learned once you answer one of its slots; "
               "slots left unanswered get the default reward after the reward wait time.")
    chosen = widgets.scenario_and_backend()
    if chosen is None:
        return
    scenario, backend = chosen
    event = state.current_event()
    context = widgets.context_selectors(scenario, event, state.labels())
    if state.take_new_visitor_request() or not contexts_equal(event, scenario, context) or stale(event):
        if event is not None and event.answered == 0:
            # Only looked at: never activated, so the backend drops it; the history forgets it too
            # (no trail of unanswered visitors in the counts).
            state.history().discard(event.event_id)
        try:
            event = rank_visitor(backend, scenario, context, greedy=top_picks(backend))
        except BACKEND_ERRORS as exc:
            state.set_event(None)
            widgets.show_flashes()
            widgets.show_error(exc, "Could not rank this visitor")
            return
        experiment = state.experiment()
        event.experiment = experiment.number if experiment is not None else None
        state.set_event(event)
        state.history().add_ranked(event.event_id, ", ".join(f"{k}={v}" for k, v in context.items()),
                                   scenario.name, event.history_slots(), tags=session.tags(experiment))
    widgets.show_flashes()
    widgets.event_header(event)
    widgets.slot_cards(event, explain(backend, event))


def explain(backend: Personalizer, event: RankedEvent) -> dict[str, WhyLines]:
    """Why each slot of the visitor on screen got its action, asked once per visitor (ranks never pay for it).

    By the model as it was when the visitor was first shown; a backend without explanations
    (an older server) says so on each card.
    """
    cached = state.explanations(event.event_id)
    if cached is not None:
        return cached
    labels = state.labels()
    try:
        answer = backend.explain_event(event.event_id)
        whys = {s["id"]: why_lines(s.get("explanation"), labels) for s in answer.get("slots", [])}
    except PersonalizerError as exc:
        whys = {s.slot_id: WhyLines([], f"Not available from this backend ({error_text(exc)}).") for s in event.slots}
    except OSError:  # unreachable just now: the next visitor asks again
        return {}
    state.set_explanations(event.event_id, whys)
    return whys


routing.require_app()
main()
