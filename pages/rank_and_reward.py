"""Rank & reward: set the visitor's context, see one card per slot, accept or reject each."""

import streamlit as st

from personalizer.dashboard import routing, state, widgets
from personalizer.dashboard.ranking import contexts_equal, rank_visitor


def main() -> None:
    st.title("Rank & reward", anchor=False)
    st.caption("Pick the visitor's context. Each slot shows what the model ranked for it; Accept sends "
               "reward 1 and Reject 0 for that slot. A visitor is learned once you answer one of its slots; "
               "slots left unanswered get the default reward after the reward wait time.")
    scenario = state.scenario()
    if scenario is None:
        widgets.scenario_missing()
        return
    backend = widgets.current_backend()
    if backend is None:
        return
    event = state.current_event()
    context = widgets.context_selectors(scenario, event)
    if state.take_new_visitor_request() or not contexts_equal(event, scenario, context):
        try:
            event = rank_visitor(backend, scenario, context)
        except Exception as exc:
            state.set_event(None)
            widgets.show_flashes()
            widgets.show_error(exc, "Could not rank this visitor")
            return
        state.set_event(event)
        state.history().add_ranked(event.event_id, ", ".join(f"{k}={v}" for k, v in context.items()),
                                   scenario.name, event.history_slots())
    widgets.show_flashes()
    widgets.event_header(event)
    widgets.slot_cards(event)


routing.require_app()
main()
