"""Reward trends: accept rates per slot, learning curves against the oracle, action mix, the history."""

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TypeVar

import altair as alt
import pandas as pd
import streamlit as st

from personalizer.contract import PersonalizerError
from personalizer.dashboard import charts, log_trends, report, routing, session, state, trends, widgets
from personalizer.dashboard.backend import log_rows_for
from personalizer.dashboard.capabilities import local_engine
from personalizer.dashboard.experiments import Experiment
from personalizer.dashboard.history import to_csv
from personalizer.dashboard.labels import Labels
from personalizer.dashboard.lift import LATER_SLOTS_CAVEAT, LiftReport, from_history, points, sentence, verdict
from personalizer.dashboard.log_trends import parse_time
from personalizer.dashboard.text import md, percent, plural

T = TypeVar("T")
WINDOWS = [10, 25, 50, 100, 250, 500]
SPAN_SINCE = "Since last change"
SPAN_WHOLE = "Whole log"
OTHER = "Other actions"
VIEW_TAB = "This tab's history"
VIEW_LOG = "All events in the log"
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
    if state.value(state.TREND_EXPERIMENT_WIDGET) not in numbers or (
            current is not None and state.value(state.TREND_CURRENT) != current.number):
        state.set_value(state.TREND_EXPERIMENT_WIDGET, current.number if current is not None else numbers[0])
    state.set_value(state.TREND_CURRENT, current.number if current is not None else None)
    left, right = st.columns([3, 2], vertical_alignment="bottom")
    with left:
        number = st.selectbox("Experiment", numbers, key=state.TREND_EXPERIMENT_WIDGET,
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


def describe(experiment: Experiment, numbers: list[int]) -> str:
    """One line on what the numbers below cover (shown, and returned in plain text for the report)."""
    policy = f", policy {experiment.policy}" if experiment.policy else ""
    if len(numbers) > 1:
        text = (f"Whole log on {experiment.backend} with this catalog: experiments "
                f"{', '.join(f'#{n}' for n in numbers)}; rules on the curves mark where each began.")
    else:
        text = (f"Experiment #{experiment.number}: {experiment.backend}, scenario {experiment.scenario}{policy}, "
                f"since {experiment.started:%Y-%m-%d %H:%M:%S} UTC "
                f"({experiment.reason[:1].lower() + experiment.reason[1:]}). Only this tab's visitors count.")
    st.caption(md(text))
    return text


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
    if local_engine(state.backend()) is not None:
        st.page_link("pages/evaluate.py", label="Compare other learning settings on the Evaluate page",
                     icon=":material/science:")


def cached(name: str, key: tuple, compute: Callable[[], T]) -> T:
    """``compute()`` once per ``key`` (the history's version and the experiments shown): reruns stay cheap.

    The log view's work is kept with the log's reader instead (shared by every tab), so a fresh tab or
    a reload over a large log draws from it at once.
    """
    if key and key[0] == "log":  # ("log", the LogRows, its version, catalog, since)
        return key[1].memo((name, *key[2:]), compute)
    slot = state.value(f"trend-cache-{name}")
    if slot is None or slot[0] != key:
        slot = (key, compute())
        state.set_value(f"trend-cache-{name}", slot)
    return slot[1]


@dataclass
class Drawn:
    """What a trends view drew: its numbers and chart specs, for the shareable report."""

    title: str
    scope: str
    summary: trends.Summary | None = None
    report: LiftReport | None = None
    charts: list[tuple[str, alt.TopLevelMixin]] = field(default_factory=list)
    time_range: tuple[datetime, datetime] | None = None


def draw_trends(df: pd.DataFrame, key: tuple, labels: Labels, drawn: Drawn,
                extra_marks: Callable[[pd.DataFrame], pd.DataFrame] | None = None) -> None:
    """Headline card, metrics, accept rates, action mix, learning curves and lift of these rows.

    ``key`` says when the rows changed (cached work is redone only then); ``extra_marks``
    draws other rules than the experiments' (the log view's model start and policy changes).
    """
    report = cached("lift", key, lambda: from_history(df))
    drawn.report = report
    done_times = trends.rewarded_rows(df)["time"]
    drawn.time_range = (done_times.min().floor("us").to_pydatetime(), done_times.max().floor("us").to_pydatetime())
    widgets.headline_card(report.headline, labels)
    summary = cached("summary", key, lambda: trends.summarize(df))
    drawn.summary = summary
    metrics(summary, labels)
    slot_order = [s.slot for s in summary.slots]
    names = {s: labels.slot(s) for s in slot_order}
    left, right = st.columns(2, gap="large")
    with left:
        st.subheader("Accept rate per slot", anchor=False)
        rates = cached("rates", key, lambda: trends.slot_rates(df)).assign(slot=lambda f: f["slot"].map(names))
        chart = charts.accept_rate_bars(rates, list(names.values()))
        drawn.charts.append(("Accept rate per slot", chart))
        st.altair_chart(chart, key="chart-rates")
        if trends.has_simulated(df):
            st.caption("Green tick: the expected accept rate of an oracle that never explores, for the "
                       "same simulated visitors.")
    with right:
        st.subheader("Action mix per slot", anchor=False)
        mix = cached("mix", key, lambda: trends.action_mix(df)).assign(
            slot=lambda f: f["slot"].map(names), action=lambda f: f["action"].map(labels.action))
        chart = charts.action_mix_chart(trends.top_actions(mix, other=OTHER), list(names.values()), other=OTHER)
        drawn.charts.append(("Action mix per slot", chart))
        st.altair_chart(chart, key="chart-mix")
    st.subheader("Accept rate over visitors", anchor=False)
    default = cached("window", key, lambda: trends.default_window(df, WINDOWS))
    window = st.segmented_control("Rolling window (visitors)", WINDOWS, default=default, key="trend-window",
                                  help="Each point is the accept rate of the last N answered visitors "
                                       "of that slot.") or default
    curves = cached(f"curves-{window}", key, lambda: trends.learning_curves(df, window))
    book = state.experiments()
    marks = cached("marks", key, lambda: (extra_marks or (lambda frame: trends.markers(
        frame, {e.number: e.reason for e in book.items})))(df))
    columns = st.columns(min(2, len(slot_order)) or 1)
    for i, slot in enumerate(slot_order):
        with columns[i % len(columns)]:
            st.markdown(f"**{md(names[slot])}**")
            chart = charts.learning_curve(curves[curves["slot"] == slot], window, marks[marks["slot"] == slot])
            drawn.charts.append((f"Accept rate over visitors: {names[slot]}", chart))
            st.altair_chart(chart, key=f"chart-curve-{i}")
    if not trends.has_simulated(df) and not (df["source"] == log_trends.SOURCE_LOG).all():
        st.caption("Run the simulator to see the oracle's expected accept rate as a reference line.")
    if report.lifts:
        lift_section(report, labels)


def choose_view(history_rows: bool) -> str:
    """This tab's history or every event in the log: the person's choice, else the tab's when it has rows."""
    chosen = state.trend_view_choice()
    default = chosen if chosen in (VIEW_TAB, VIEW_LOG) else (VIEW_TAB if history_rows else VIEW_LOG)
    if state.value(state.TREND_VIEW_WIDGET) not in (VIEW_TAB, VIEW_LOG):
        state.set_value(state.TREND_VIEW_WIDGET, default)

    def remember() -> None:
        state.set_trend_view_choice(state.value(state.TREND_VIEW_WIDGET))

    return st.segmented_control(
        "Show", [VIEW_TAB, VIEW_LOG], key=state.TREND_VIEW_WIDGET, required=True, on_change=remember,
        help="This tab's history: the visitors answered here (and the simulator's). All events in the log: "
             "everything the backend logged for the sidebar's catalog, from any tab, app or earlier run.",
    ) or default


def tab_view(labels: Labels) -> Drawn:
    """The tab's history of one experiment (or its whole series)."""
    history = state.history()
    experiment, numbers = choose_experiment()
    key = ("tab", history.version, tuple(numbers))
    df = cached("rows", key, lambda: trends.in_experiments(history.frame(), numbers))
    drawn = Drawn("This tab's history", "")
    if experiment is not None:
        drawn.scope = describe(experiment, numbers)
    if trends.rewarded_rows(df).empty:
        empty_state(not df.empty)
    else:
        draw_trends(df, key, labels, drawn)
    history_section(df)
    return drawn


def cannot_list(error: PersonalizerError | None) -> None:
    """Why the log view is empty: the backend does not list its log (a server without ``logs/events``)."""
    why = f" It answered {error.code} ({error.status}): {md(error.message)}" if error is not None else ""
    st.info("**The server's log cannot be listed from here.** It does not offer this project's log listing "
            f"(GET …/logs/events), so only this tab's history can be charted: switch Show to This tab's history.{why}",
            icon=":material/cloud_off:")


def log_view(labels: Labels) -> Drawn:
    """Every logged event of the sidebar's catalog on this backend, since the last change or all of it."""
    drawn = Drawn("All events in the log", "")
    backend = widgets.current_backend()
    scenario = state.scenario()
    if backend is None or scenario is None:
        return drawn
    span = st.segmented_control("Span", [SPAN_SINCE, SPAN_WHOLE], default=SPAN_SINCE, key="trend-log-span",
                                required=True,
                                help="Since last change: events the current model served (since its last reset "
                                     "or policy change). Whole log: every logged event of this catalog, with "
                                     "a rule where the current model began.") or SPAN_SINCE
    bar = st.empty()  # the first read of a large log takes seconds (then only what is new): show how far it got
    try:
        rows = log_rows_for(backend, progress=lambda share: bar.progress(
            share, text=f"Reading the event log for the first time… {share:.0%}"))
    except PersonalizerError as exc:  # e.g. a Personalizer look-alike without the log listing
        bar.empty()
        cannot_list(exc)
        return drawn
    bar.empty()
    catalog = rows.catalog_number((frozenset(scenario.action_ids), tuple(scenario.slot_ids)))
    experiment = state.experiment()
    model_start = parse_time(experiment.model) if experiment is not None else None
    since = model_start if span == SPAN_SINCE else None
    key = ("log", rows, rows.version, catalog, since)
    df = cached("rows", key, lambda: log_trends.in_scope(rows.frame(), catalog, since))
    where = f"since the last change ({_clock(model_start)})" if since is not None else "the whole log"
    drawn.scope = (f"Every event the {session.backend_label().lower()} logged for the catalog of scenario "
                   f"{scenario.name}, {where}: from any tab, app or earlier run. Unanswered slots count with "
                   "the default reward once their wait ran out, as the model learned them.")
    st.caption(md(drawn.scope))
    if trends.rewarded_rows(df).empty:
        if since is None or trends.rewarded_rows(log_trends.in_scope(rows.frame(), catalog)).empty:
            empty_state(not df.empty)
        else:
            with st.container(border=True):
                st.subheader("No rewards since the last change", anchor=False)
                st.write("The current model has no rewarded events of this catalog yet. Choose Whole log to "
                         "see the events served before the last change, or answer a few visitors.")
        return drawn

    def log_marks(frame: pd.DataFrame) -> pd.DataFrame:
        marks = log_trends.policy_change_times(backend)
        if since is None and model_start is not None:
            marks = [*marks, (model_start, "Current model began")]
        return log_trends.time_markers(frame, marks)

    draw_trends(df, key, labels, drawn, extra_marks=log_marks)
    st.download_button("Download CSV", data=lambda: to_csv(rows.with_event_ids(df)), file_name="personalizer-log.csv",
                       mime="text/csv", icon=":material/download:", key="download-log", on_click="ignore",
                       help="The rows of this view, one per event and slot, with the events' ids.")
    return drawn


def _clock(epoch: float | None) -> str:
    return "unknown" if epoch is None else f"{datetime.fromtimestamp(epoch, UTC):%Y-%m-%d %H:%M:%S} UTC"


def history_section(df: pd.DataFrame) -> None:
    """The tab's history table and its CSV."""
    history = state.history()
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


def build_report(drawn: Drawn, labels: Labels) -> str:
    """The view on screen as one self-contained HTML file (numbers, time range, policy, chart specs)."""
    numbers: list[tuple[str, str]] = []
    notes: list[str] = []
    headline = drawn.report.headline if drawn.report is not None else None
    if headline is not None:
        word, needed = verdict(headline)
        plain = sentence(headline).replace("**", "")
        numbers.append(("Verdict", word.capitalize()))
        notes.append(f"{plain} (first slot, {labels.slot(headline.slot_id)}: the unbiased headline)"
                     + (f"; about {plural(needed, 'more answered visitor')} would settle it" if needed else "") + ".")
    summary = drawn.summary
    if summary is not None:
        numbers += [("Visitors answered", f"{summary.answered_events:,}"), ("Answers", f"{summary.rewarded:,}"),
                    ("Accept rate", percent(summary.rate, 1))]
        numbers += [(f"{labels.slot(s.slot)}: accept rate", f"{percent(s.rate, 1)} of {s.rewarded:,}")
                    for s in summary.slots]
    if drawn.report is not None:
        for lift in drawn.report.lifts:
            if lift.enough_data:
                lo, hi = lift.interval
                numbers.append((f"{labels.slot(lift.slot_id)}: lift over baseline",
                                f"{points(lift.lift)} pts (95% {points(lo)} to {points(hi)})"))
        if len(drawn.report.lifts) > 1:
            notes.append(LATER_SLOTS_CAVEAT)
    engine = local_engine(state.backend())
    stats = engine.stats() if engine is not None else None
    experiment = state.experiment()
    policy = (f"{stats.get('policy')} ({stats.get('arguments')}), learning mode {stats.get('learningMode')}, "
              f"exploration {float(stats.get('explorationPercentage') or 0):.0%}") if stats else \
        (experiment.policy if experiment is not None else "")
    document = report.Report(title=f"Personalizer Studio · Reward trends · {drawn.title}", scope=drawn.scope,
                             policy=policy, time_range=drawn.time_range, numbers=numbers, notes=notes,
                             charts=[(title, chart.to_dict()) for title, chart in drawn.charts])
    return report.render(document)


def report_button(drawn: Drawn) -> None:
    """"Download report": the view on screen as one HTML file that opens offline."""
    labels = state.labels()

    def document() -> str:
        return build_report(drawn, labels)

    # The very callable the button downloads, kept for this tab (tests read the file through it: AppTest
    # has no media server to download from).
    state.set_trend_report(document if drawn.charts else None)
    st.download_button("Download report", data=document,
                       file_name="personalizer-report.html", mime="text/html", icon=":material/summarize:",
                       key="download-report", disabled=not drawn.charts, on_click="ignore",
                       help="One HTML file with these numbers, the time range, the policy and the charts "
                            "(drawn inside the file: it opens offline, to mail or archive).")


def main() -> None:
    st.title("Reward trends", anchor=False)
    labels = state.labels()
    has_rows = not trends.rewarded_rows(state.history().frame()).empty
    view = choose_view(has_rows)
    drawn = log_view(labels) if view == VIEW_LOG else tab_view(labels)
    report_button(drawn)


routing.require_app()
main()
