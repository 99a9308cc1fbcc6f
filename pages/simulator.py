"""Simulator: visitors with hidden preferences go through the same backend, so learning becomes visible."""

import streamlit as st

from personalizer.dashboard import routing, state, widgets
from personalizer.dashboard.scenarios import preference_profiles
from personalizer.dashboard.simulator import MAX_VISITORS, MIN_VISITORS, SimulationResult, run_simulation
from personalizer.dashboard.text import md, percent


def show_result(result: SimulationResult) -> None:
    st.success(f"Simulated **{result.visitors:,}** visitors with the {md(result.profile)} preferences in "
               f"{result.seconds:.1f} s ({result.per_second:,.0f} visitors/s).", icon=":material/check_circle:")
    with st.container(horizontal=True, gap="medium"):
        st.metric("Accept rate, this run", percent(result.accept_rate, 1), border=True)
        st.metric("First 10 % of visitors", percent(result.first_rate, 1), border=True)
        st.metric("Last 10 % of visitors", percent(result.last_rate, 1), border=True,
                  delta=f"{(result.last_rate - result.first_rate) * 100:+.1f} pts")
        st.metric("Oracle (expected)", percent(result.oracle_rate, 1), border=True,
                  help="The best feasible page for every visitor, always shown (no exploration).")
        st.metric("Without personalization", percent(result.baseline_rate, 1), border=True,
                  help="Each slot's baseline action for every visitor.")
    st.page_link("pages/reward_trends.py", label="See the learning curve in Reward trends",
                 icon=":material/monitoring:")


def main() -> None:
    st.title("Simulator", anchor=False)
    st.caption("Simulated visitors arrive from random contexts and accept each slot's action with a hidden "
               "probability. They go through the same backend as the rank page, so the model really learns, "
               "and their rows join this tab's history as simulated.")
    scenario = state.scenario()
    if scenario is None:
        widgets.scenario_missing()
        return
    backend = widgets.current_backend()
    if backend is None:
        return
    profiles = preference_profiles(scenario)
    left, right = st.columns([2, 1], vertical_alignment="top")
    with left:
        name = st.selectbox("Visitors' hidden preferences", list(profiles), key="sim-profile",
                            help="Built-in profiles that share this scenario's catalog.")
        if profiles[name].description:
            st.caption(md(profiles[name].description))
    with right:
        visitors = st.number_input("Visitors", min_value=MIN_VISITORS, max_value=MAX_VISITORS, value=1000,
                                   step=100, key="sim-visitors")
    run = st.button("Run simulation", key="sim-run", type="primary", icon=":material/play_arrow:")
    if run:
        state.set_simulation_result(None)
        bar = st.progress(0.0, text="Starting…")

        def progress(done: int, total: int, seconds: float) -> None:
            rate = done / seconds if seconds > 0 else 0.0
            bar.progress(done / total, text=f"{done:,} / {total:,} visitors · {rate:,.0f}/s")

        try:
            result = run_simulation(backend, profiles[name], int(visitors), state.history(),
                                    on_progress=progress)
        except Exception as exc:
            bar.empty()
            widgets.show_error(exc, "The simulation stopped")
            return
        bar.empty()
        state.set_simulation_result(result)
    result = state.simulation_result()
    if result is not None:
        show_result(result)


routing.require_app()
main()
