"""Reward trends: accept rates per slot, learning curves against the oracle, action mix, the history."""

import pandas as pd
import streamlit as st

from personalizer.dashboard import charts, routing, state, trends, widgets
from personalizer.dashboard.backend import has_event_log, log_lift
from personalizer.dashboard.history import to_csv
from personalizer.dashboard.lift import LATER_SLOTS_CAVEAT, LiftReport, from_history
from personalizer.dashboard.ranking import error_text
from personalizer.dashboard.text import md, percent

WINDOWS = [10, 25, 50, 100, 250, 500]
HISTORY_COLUMNS = {
    "visitor": st.column_config.NumberColumn("Visitor", format="%d", width="small"),
    "time": st.column_config.DatetimeColumn("Time (UTC)", format="YYYY-MM-DD HH:mm:ss"),
    "eventId": st.column_config.TextColumn("Event id", width="medium"),
    "context": st.column_config.TextColumn("Context"),
    "slot": st.column_config.TextColumn("Slot"),
    "action": st.column_config.TextColumn("Chosen action"),
    "baseline": st.column_config.TextColumn("Baseline"),
    "probability": st.column_config.NumberColumn("Probability", format="percent"),
    "exploration": st.column_config.CheckboxColumn("Explored", help="Not the model's top pick (manual ranks)"),
    "reward": st.column_config.NumberColumn("Reward", format="%.0f", help="Empty until answered"),
    "source": st.column_config.TextColumn("Source"),
    "scenario": st.column_config.TextColumn("Scenario"),
    "expected": st.column_config.NumberColumn("Expected", format="percent",
                                              help="Simulated: hidden accept probability of the shown action"),
    "oracle": st.column_config.NumberColumn("Oracle", format="percent",
                                            help="Simulated: best feasible page's accept probability"),
    "baselineExpected": st.column_config.NumberColumn("Baseline exp.", format="percent",
                                                      help="Simulated: the baseline action's accept probability"),
}


def clear_history() -> None:
    state.history().clear()
    state.set_event(None)
    state.set_simulation_result(None)


def empty_state(has_rows: bool) -> None:
    with st.container(border=True):
        st.subheader("No rewards yet", anchor=False)
        if has_rows:
            st.write("Visitors were ranked but none was answered. Accept or reject a slot, or let the "
                     "simulator send a few hundred visitors.")
        else:
            st.write("Trends appear here once slots get rewards. Answer a few visitors yourself, or let the "
                     "simulator play hundreds of visitors with hidden preferences and watch the model learn.")
        with st.container(horizontal=True):
            st.page_link("pages/rank_and_reward.py", label="Rank & reward", icon=":material/ads_click:")
            st.page_link("pages/simulator.py", label="Run the simulator", icon=":material/group:")


def metrics(summary: trends.Summary) -> None:
    with st.container(horizontal=True, gap="medium"):
        st.metric("Events", f"{summary.events:,}", border=True,
                  help=f"Visitors ranked in this tab: {summary.manual:,} manual, {summary.simulated:,} simulated; "
                       f"{summary.answered_events:,} answered.")
        st.metric("Rewarded slots", f"{summary.rewarded:,}", border=True,
                  help=f"{summary.accepted:,} accepted, {summary.rewarded - summary.accepted:,} rejected.")
        st.metric("Accept rate", percent(summary.rate, 1), border=True)
        delta = None if summary.rewarded == 0 else f"{(summary.recent - summary.rate) * 100:+.1f} pts"
        st.metric(f"Last {summary.recent_window} events", percent(summary.recent, 1), delta=delta, border=True,
                  help="Accept rate over the most recent answered events; the delta compares with overall.")
    with st.container(horizontal=True, gap="medium"):
        for slot in summary.slots:
            st.metric(md(slot.slot), percent(slot.rate, 1), border=True,
                      delta=f"last {summary.recent_window}: {percent(slot.recent, 1)}", delta_color="off",
                      delta_arrow="off",
                      help=f"{slot.accepted:,} accepted of {slot.rewarded:,} rewarded.")


def lift_report(df: pd.DataFrame) -> LiftReport | None:
    """Lift from the engine's log (embedded), else from this tab's history (remote); None if neither is readable."""
    try:
        backend = state.backend()
        if has_event_log(backend):
            return log_lift(backend)
    except Exception as exc:
        st.caption(f"Lift over baseline unavailable: {md(error_text(exc))}")
        return None
    return from_history(df)


def lift_section(report: LiftReport) -> None:
    """Lift over baseline per slot, its source, the headline sentence and the multi-slot caveat."""
    st.subheader("Lift over baseline", anchor=False)
    if report.source == "log":
        source = (f"From the engine's event log: {report.events:,} rewarded events, from every tab and app. "
                  "Baseline: each slot's baselineAction, estimated from the events that happened to show it.")
    else:
        source = (f"From this tab's history: {report.events:,} visitors with every slot answered (the remote "
                  "server's log is not read here). Baseline: each slot's baselineAction.")
    st.caption(source)
    widgets.lift_headline(report.headline)
    widgets.lift_metrics(report)
    if len(report.lifts) > 1:
        st.caption(LATER_SLOTS_CAVEAT)
    if report.source == "log":
        st.page_link("pages/evaluate.py", label="Compare other learning settings on the Evaluate page",
                     icon=":material/science:")


def main() -> None:
    st.title("Reward trends", anchor=False)
    history = state.history()
    df = history.frame()
    done = trends.rewarded_rows(df)
    if done.empty:
        empty_state(not df.empty)
    else:
        summary = trends.summarize(df)
        metrics(summary)
    report = lift_report(df)
    if report is not None and report.lifts:
        lift_section(report)
    if not done.empty:
        slot_order = [s.slot for s in summary.slots]
        left, right = st.columns(2, gap="large")
        with left:
            st.subheader("Accept rate per slot", anchor=False)
            st.altair_chart(charts.accept_rate_bars(trends.slot_rates(df), slot_order), key="chart-rates")
            if trends.has_simulated(df):
                st.caption("Green tick: the oracle's expected accept rate for the same simulated visitors.")
        with right:
            st.subheader("Action mix per slot", anchor=False)
            st.altair_chart(charts.action_mix_chart(trends.action_mix(df), slot_order), key="chart-mix")
        st.subheader("Accept rate over visitors", anchor=False)
        default = trends.default_window(df, WINDOWS)
        window = st.segmented_control("Rolling window (visitors)", WINDOWS, default=default, key="trend-window",
                                      help="Each point is the accept rate of the last N rewarded visitors "
                                           "of that slot.") or default
        curves = trends.learning_curves(df, window)
        columns = st.columns(min(2, len(slot_order)) or 1)
        for i, slot in enumerate(slot_order):
            with columns[i % len(columns)]:
                st.markdown(f"**{md(slot)}**")
                st.altair_chart(charts.learning_curve(curves[curves["slot"] == slot], window), key=f"chart-curve-{i}")
        if not trends.has_simulated(df):
            st.caption("Run the simulator to see the oracle's expected accept rate as a reference line.")
    st.subheader("History", anchor=False)
    st.caption(f"{len(df):,} rows, one per visitor and slot, newest first. Only this tab sees them.")
    if not df.empty:
        st.dataframe(df.iloc[::-1], hide_index=True, column_config=HISTORY_COLUMNS, height=360, key="history-table")
    with st.container(horizontal=True):
        st.download_button("Download CSV", data=lambda: to_csv(df), file_name="personalizer-history.csv",
                           mime="text/csv", icon=":material/download:", key="download-history",
                           disabled=df.empty, on_click="ignore")
        st.button("Clear history", key="clear-history", icon=":material/delete:", on_click=clear_history,
                  disabled=df.empty, help="Forget this tab's history. The model keeps what it learned.")


routing.require_app()
main()
