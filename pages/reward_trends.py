"""Reward trends: accept rates per slot, learning curves against the oracle, action mix, the history."""

from collections.abc import Callable
from typing import TypeVar

import streamlit as st

from personalizer.dashboard import charts, routing, state, trends, widgets
from personalizer.dashboard.backend import has_event_log
from personalizer.dashboard.experiments import Experiment
from personalizer.dashboard.history import to_csv
from personalizer.dashboard.labels import Labels
from personalizer.dashboard.lift import LATER_SLOTS_CAVEAT, LiftReport, from_history
from personalizer.dashboard.text import md, percent, plural

T = TypeVar("T")
WINDOWS = [10, 25, 50, 100, 250, 500]
SPAN_SINCE = "Since last change"
SPAN_WHOLE = "Whole log"
OTHER = "Other actions"
HISTORY_COLUMNS = {
    "visitor": st.column_config.NumberColumn("Visitor", format="%d", width="small", pinned=True),
    "slot": st.column_config.TextColumn("Slot"),
    "action": st.column_config.TextColumn("Shown"),
    "reward": st.column_config.NumberColumn("Reward", format="%.0f", width="small", help="Empty until answered"),
    "baseline": st.column_config.TextColumn("Without personalization"),
    "probability": st.column_config.NumberColumn("Probability", format="percent", width="small"),
    "exploration": st.column_config.CheckboxColumn("Explored", help="Not the model's top pick (manual ranks)"),
    "context": st.column_config.TextColumn("Context"),
    "source": st.column_config.TextColumn("Source", width="small"),
    "backend": st.column_config.TextColumn("Backend"),
    "scenario": st.column_config.TextColumn("Scenario"),
    "policy": st.column_config.TextColumn("Policy"),
    "experiment": st.column_config.NumberColumn("Experiment", format="#%d", width="small"),
    "time": st.column_config.DatetimeColumn("Time (UTC)", format="YYYY-MM-DD HH:mm:ss"),
    "eventId": st.column_config.TextColumn("Event id", width="small"),
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


def choose_experiment() -> tuple[Experiment | None, list[int]]:
    """The experiment to show (the current one unless a past one is picked) and the span: its numbers."""
    book = state.experiments()
    current = state.experiment()
    numbers = [e.number for e in reversed(book.items)]
    if not numbers:
        return None, []
    # A new experiment (another backend, scenario or model) is shown at once; a past one stays picked
    # only while the current one has not changed.
    if state.get("trend-experiment") not in numbers or (
            current is not None and state.get("trend-current") != current.number):
        st.session_state["trend-experiment"] = current.number if current is not None else numbers[0]
    st.session_state["trend-current"] = current.number if current is not None else None
    left, right = st.columns([3, 2], vertical_alignment="bottom")
    with left:
        number = st.selectbox("Experiment", numbers, key="trend-experiment",
                              format_func=lambda n: book.get(n).label + (" · current" if current is not None
                                                                          and n == current.number else ""),
                              help="One backend, one scenario, one model: a reset, a new policy or a switch "
                                   "of backend or scenario starts a new experiment. Past ones stay here.")
    with right:
        span = st.segmented_control("Span", [SPAN_SINCE, SPAN_WHOLE], default=SPAN_SINCE, key="trend-span",
                                    required=True,
                                    help="Since last change: this experiment only. Whole log: every experiment "
                                         "on this backend and catalog, with a rule where each began.") or SPAN_SINCE
    chosen = book.get(number)
    if chosen is None:
        return None, []
    if span == SPAN_WHOLE:
        return chosen, [e.number for e in book.series(chosen)]
    return chosen, [chosen.number]


def describe(experiment: Experiment, numbers: list[int]) -> None:
    """One line on what the numbers below cover."""
    policy = f", policy {md(experiment.policy)}" if experiment.policy else ""
    if len(numbers) > 1:
        st.caption(f"Whole log on {md(experiment.backend)} with this catalog: experiments "
                   f"{', '.join(f'#{n}' for n in numbers)}; rules on the curves mark where each began.")
    else:
        st.caption(f"Experiment #{experiment.number}: {md(experiment.backend)}, scenario "
                   f"{md(experiment.scenario)}{policy}, since {experiment.started:%Y-%m-%d %H:%M:%S} UTC "
                   f"({md(experiment.reason[:1].lower() + experiment.reason[1:])}). Only this tab's visitors count.")


def metrics(summary: trends.Summary, labels: Labels) -> None:
    with st.container(horizontal=True, gap="medium"):
        st.metric("Visitors answered", f"{summary.answered_events:,}", border=True,
                  help=f"Visitors with at least one answer: {plural(summary.manual, 'manual visitor')}, "
                       f"{plural(summary.simulated, 'simulated visitor')} in this view.")
        st.metric("Answers", f"{summary.rewarded:,}", border=True,
                  help=f"{summary.accepted:,} accepted, {summary.rewarded - summary.accepted:,} rejected.")
        st.metric("Accept rate", percent(summary.rate, 1), border=True)
        if summary.answered_events > 1:
            delta = f"{(summary.recent - summary.rate) * 100:+.1f} pts"
            st.metric(f"Last {plural(summary.recent_window, 'visitor')}", percent(summary.recent, 1),
                      delta=delta if summary.answered_events > summary.recent_window else None, border=True,
                      help="Accept rate over the most recent answered visitors; the delta compares with overall.")
    with st.container(horizontal=True, gap="medium"):
        for slot in summary.slots:
            st.metric(md(labels.slot(slot.slot)), percent(slot.rate, 1), border=True,
                      delta=f"last {plural(summary.recent_window, 'visitor')}: {percent(slot.recent, 1)}",
                      delta_color="off", delta_arrow="off",
                      help=f"{slot.accepted:,} accepted of {slot.rewarded:,} answered.")


def lift_section(report: LiftReport, labels: Labels) -> None:
    """Lift over baseline per slot and the multi-slot caveat (the headline card is above)."""
    st.subheader("Lift over baseline, per slot", anchor=False)
    st.caption(f"From {plural(report.events, 'visitor')} of this view with every slot answered. Baseline: each "
               "slot's baselineAction, estimated from the visitors that happened to be shown it.")
    widgets.lift_metrics(report, labels)
    if len(report.lifts) > 1:
        st.caption(LATER_SLOTS_CAVEAT)
    if has_event_log(state.backend()):
        st.page_link("pages/evaluate.py", label="Compare other learning settings on the Evaluate page",
                     icon=":material/science:")


def cached(name: str, key: tuple, compute: Callable[[], T]) -> T:
    """``compute()`` once per ``key`` (the history's version and the experiments shown): reruns stay cheap."""
    slot = st.session_state.get(f"trend-cache-{name}")
    if slot is None or slot[0] != key:
        slot = (key, compute())
        st.session_state[f"trend-cache-{name}"] = slot
    return slot[1]


def main() -> None:
    st.title("Reward trends", anchor=False)
    history = state.history()
    labels = state.labels()
    experiment, numbers = choose_experiment()
    key = (history.version, tuple(numbers))
    df = cached("rows", key, lambda: trends.in_experiments(history.frame(), numbers))
    if experiment is not None:
        describe(experiment, numbers)
    done = trends.rewarded_rows(df)
    if done.empty:
        empty_state(not df.empty)
    else:
        report = cached("lift", key, lambda: from_history(df))
        widgets.headline_card(report.headline, labels)
        summary = trends.summarize(df)
        metrics(summary, labels)
        slot_order = [s.slot for s in summary.slots]
        names = {s: labels.slot(s) for s in slot_order}
        left, right = st.columns(2, gap="large")
        with left:
            st.subheader("Accept rate per slot", anchor=False)
            rates = trends.slot_rates(df).assign(slot=lambda f: f["slot"].map(names))
            st.altair_chart(charts.accept_rate_bars(rates, list(names.values())), key="chart-rates")
            if trends.has_simulated(df):
                st.caption("Green tick: the expected accept rate of an oracle that never explores, for the "
                           "same simulated visitors.")
        with right:
            st.subheader("Action mix per slot", anchor=False)
            mix = trends.action_mix(df).assign(slot=lambda f: f["slot"].map(names),
                                               action=lambda f: f["action"].map(labels.action))
            st.altair_chart(charts.action_mix_chart(trends.top_actions(mix, other=OTHER), list(names.values()),
                                                    other=OTHER), key="chart-mix")
        st.subheader("Accept rate over visitors", anchor=False)
        default = trends.default_window(df, WINDOWS)
        window = st.segmented_control("Rolling window (visitors)", WINDOWS, default=default, key="trend-window",
                                      help="Each point is the accept rate of the last N answered visitors "
                                           "of that slot.") or default
        curves = trends.learning_curves(df, window)
        book = state.experiments()
        marks = cached("marks", key, lambda: trends.markers(df, {e.number: e.reason for e in book.items}))
        columns = st.columns(min(2, len(slot_order)) or 1)
        for i, slot in enumerate(slot_order):
            with columns[i % len(columns)]:
                st.markdown(f"**{md(names[slot])}**")
                st.altair_chart(charts.learning_curve(curves[curves["slot"] == slot], window,
                                                      marks[marks["slot"] == slot]), key=f"chart-curve-{i}")
        if not trends.has_simulated(df):
            st.caption("Run the simulator to see the oracle's expected accept rate as a reference line.")
        if report.lifts:
            lift_section(report, labels)
    st.subheader("History", anchor=False)
    everything = history.frame()
    st.caption(f"{plural(len(df), 'row')} in this view, one per visitor and slot, newest first "
               f"({plural(len(everything), 'row')} in this tab's history, every experiment). Only this tab "
               "sees them; the CSV holds them all, with backend, scenario, policy and experiment on every row.")
    if not df.empty:
        st.dataframe(df.iloc[::-1], hide_index=True, column_config=HISTORY_COLUMNS, height=360, key="history-table",
                     column_order=list(HISTORY_COLUMNS))
    with st.container(horizontal=True):
        st.download_button("Download CSV", data=lambda: to_csv(everything), file_name="personalizer-history.csv",
                           mime="text/csv", icon=":material/download:", key="download-history",
                           disabled=everything.empty, on_click="ignore")
        st.button("Clear history", key="clear-history", icon=":material/delete:", on_click=clear_history,
                  disabled=everything.empty, help="Forget this tab's history. The model keeps what it learned.")


routing.require_app()
main()
