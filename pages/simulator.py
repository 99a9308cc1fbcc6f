"""Simulator: visitors with hidden preferences go through the same backend, so learning becomes visible."""

import streamlit as st

from personalizer.contract import DEFAULT_EXPLORATION
from personalizer.dashboard import routing, session, state, widgets
from personalizer.dashboard.ranking import BACKEND_ERRORS
from personalizer.dashboard.simulator import MAX_VISITORS, MIN_VISITORS, SimulationResult, run_simulation
from personalizer.dashboard.text import md, percent, plural

DEFAULT_VISITORS = 1000
#: A backend's failures, and ValueError for an answer the simulation cannot use (a slot missing).
SIMULATION_ERRORS: tuple[type[Exception], ...] = (*BACKEND_ERRORS, ValueError)


def show_result(result: SimulationResult) -> None:
    """The run's headline card, then its numbers beside the references."""
    st.success(f"Simulated **{result.visitors:,}** visitors with the {md(result.profile)} preferences in "
               f"{result.seconds:.1f} s ({result.per_second:,.0f} visitors/s).", icon=":material/check_circle:")
    widgets.headline_card(result.lift, state.labels(), where=f"this run of {plural(result.visitors, 'visitor')}")
    explore = f"{result.epsilon:.0%}"
    with st.container(horizontal=True, gap="medium"):
        st.metric("All slots: personalized", percent(result.accept_rate, 1), border=True,
                  help="Share of all slots accepted in this run (the card above is the first slot's).")
        st.metric("All slots: without personalization", percent(result.baseline_rate, 1), border=True,
                  help="Expected accept rate had each slot shown its baseline action to the same visitors.")
        st.metric(f"All slots: oracle exploring {explore}", percent(result.exploring_oracle_rate, 1), border=True,
                  help=f"Knows the hidden preferences and explores as often as the model ({explore}): the "
                       "ceiling this model can reach.")
        st.metric("All slots: oracle never exploring", percent(result.oracle_rate, 1), border=True,
                  help="The best feasible page for every visitor, always shown.")
        st.metric("Last 10 % of visitors", percent(result.last_rate, 1), border=True,
                  delta=f"{(result.last_rate - result.first_rate) * 100:+.1f} pts from {percent(result.first_rate, 1)}")
    st.page_link("pages/reward_trends.py", label="See the learning curve in Reward trends",
                 icon=":material/monitoring:")


def remember_visitors() -> None:
    """Callback of the Visitors field: keep the number for this tab, across pages."""
    state.set_sim_visitors(state.value(state.SIM_VISITORS_WIDGET))


def main() -> None:
    st.title("Simulator", anchor=False)
    st.caption("Simulated visitors arrive from random contexts and accept each slot's action with the hidden "
               "probabilities of the sidebar's scenario. They go through the same backend as the rank page, so "
               "the model really learns, and their rows join this tab's history as simulated.")
    chosen = widgets.scenario_and_backend()
    if chosen is None:
        return
    scenario, backend = chosen
    st.markdown(f"**Visitors' hidden preferences:** {md(scenario.name)} (the sidebar's scenario)")
    if scenario.description:
        st.caption(md(scenario.description))
    # survives a visit to another page
    state.set_value(state.SIM_VISITORS_WIDGET, state.sim_visitors(DEFAULT_VISITORS))
    with st.container(horizontal=True, vertical_alignment="bottom"):
        visitors = st.number_input("Visitors", min_value=MIN_VISITORS, max_value=MAX_VISITORS, step=100,
                                   key=state.SIM_VISITORS_WIDGET, on_change=remember_visitors, width=220)
        run = st.button("Run simulation", key="sim-run", type="primary", icon=":material/play_arrow:")
    if run:
        state.set_sim_visitors(int(visitors))
        state.set_simulation_result(None)
        bar = st.progress(0.0, text="Starting…")

        def progress(done: int, total: int, seconds: float) -> None:
            rate = done / seconds if seconds > 0 else 0.0
            bar.progress(done / total, text=f"{done:,} / {total:,} visitors · {rate:,.0f}/s")

        config = state.service_config() or {}
        online = config.get("learningMode", "Online") == "Online"
        epsilon = float(config.get("explorationPercentage", DEFAULT_EXPLORATION)) if online else 0.0
        experiment = state.experiment()
        try:
            result = run_simulation(backend, scenario, int(visitors), state.history(), on_progress=progress,
                                    epsilon=epsilon, tags=session.tags(experiment))
        except SIMULATION_ERRORS as exc:
            bar.empty()
            widgets.show_error(exc, "The simulation stopped")
            return
        bar.empty()
        state.set_simulation_result(result)
    result = state.simulation_result()
    if result is not None:
        current = state.experiment()
        if current is not None and result.experiment is not None and result.experiment != current.number:
            st.caption(f"The last run belongs to experiment #{result.experiment}; the sidebar's settings have "
                       "changed since. Run again to measure this one.")
        show_result(result)


routing.require_app()
main()
