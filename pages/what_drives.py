"""What drives the choices: a feature-importance report over a time range, in a chart and in words."""

import time
import uuid
from datetime import UTC, datetime
from typing import Any

import streamlit as st

from personalizer.contract import PersonalizerError
from personalizer.dashboard import insight, offline, routing, state, widgets
from personalizer.dashboard.backend import importances_for
from personalizer.dashboard.capabilities import FeatureImportanceJobs
from personalizer.dashboard.ranking import error_text
from personalizer.dashboard.text import md, plural
from personalizer.interface import Personalizer

POLL_SECONDS = 0.25
SCORE_COLUMNS = {
    "feature": st.column_config.TextColumn("Feature", pinned=True),
    "kind": st.column_config.TextColumn("Kind"),
    "score": st.column_config.ProgressColumn("Score", format="percent", min_value=0.0, max_value=1.0),
    "drop": st.column_config.NumberColumn("Reward lost per visitor without it", format="%+.3f"),
    "low": st.column_config.NumberColumn("95% from", format="%+.3f"),
    "high": st.column_config.NumberColumn("95% to", format="%+.3f"),
}


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat()


def covered(backend: Personalizer) -> tuple[float, float] | None:
    """The log's first and last rank time, or None when it is empty or the backend does not say."""
    try:
        return offline.log_range(backend.log_properties())
    except (PersonalizerError, OSError):
        return None


def settings(jobs: FeatureImportanceJobs, span: tuple[float, float]) -> None:
    """Time range and "Run report": a job on the backend's background worker."""
    experiment = state.experiment()
    since = offline.parse_timestamp(experiment.model) if experiment is not None and experiment.model else None
    with st.container(border=True):
        with st.container(horizontal=True, vertical_alignment="bottom"):
            choice = st.selectbox("Time range", offline.range_choices(since), key="why-range", width=360,
                                  help="Since last change: the events the current model served (since its last "
                                       "reset or policy change).")
            dates = None
            if choice == offline.RANGE_CUSTOM:
                lo, hi = (datetime.fromtimestamp(t, UTC).date() for t in span)
                picked = st.date_input("Days (UTC)", value=(lo, hi), key="why-dates", width=260)
                dates = list(picked) if isinstance(picked, (list, tuple)) else [picked]
            run = st.button("Run report", key="why-run", type="primary", icon=":material/play_arrow:")
        st.caption(f"The log covers {offline.range_label(*span)}. Each feature is dropped in turn and the "
                   "current policy replayed over these events without it: its score is the share of the "
                   "reward lost. A few seconds per 10,000 events.")
    if not run:
        return
    try:
        start, end = offline.time_window(choice, span, time.time(), dates, since)
        job_id = f"dashboard-{uuid.uuid4().hex[:12]}"
        jobs.create_feature_importance(job_id, {"name": f"{choice} ({offline.range_label(start, end)})",
                                                "startTime": _iso(start), "endTime": _iso(end)})
    except ValueError as exc:
        st.error(md(exc), icon=":material/error:")
        return
    except PersonalizerError as exc:
        st.error(f"**The report was refused.** {md(error_text(exc))}", icon=":material/error:")
        return
    state.set_importance_job(job_id)


def wait(jobs: FeatureImportanceJobs, job_id: str) -> dict[str, Any]:
    """Poll a running report with a progress bar until it finished; returns it."""
    job = jobs.get_feature_importance(job_id)
    if job.get("status") != "Running":
        return job
    bar = st.progress(0.0, text="Replaying the log without each feature…")
    while job.get("status") == "Running":
        progress = float(job.get("progress") or 0.0)
        bar.progress(min(progress, 1.0), text=f"Replaying the log without each feature… {progress:.0%}")
        time.sleep(POLL_SECONDS)
        job = jobs.get_feature_importance(job_id)
    bar.empty()
    return job


def result(job: dict[str, Any]) -> None:
    """A finished report: chart split by kind, guidance in words, the numbers in a table."""
    status = job.get("status")
    if status != "Succeeded":
        st.error(f"**The report {md(str(status).lower())}.** {md(job.get('description') or '')}",
                 icon=":material/error:")
        return
    labels = state.labels()
    frame = insight.score_frame(job.get("featureScores") or [], labels)
    st.subheader(md(job.get("name") or "Feature importances"), anchor=False)
    start, end = (offline.parse_timestamp(job.get(k)) for k in ("startTime", "endTime"))
    arguments = str(job.get("arguments") or "").replace("`", "'")
    st.caption(f"{plural(int(job.get('events') or 0), 'logged event')} from {offline.range_label(start, end)}, "
               f"policy `{arguments}`.")
    if frame.empty:
        st.info("No features in these events.", icon=":material/info:")
        return
    left, right = st.columns([3, 2], gap="large")
    with left:
        st.altair_chart(insight.importance_chart(frame), key="chart-importance")
    with right:
        st.markdown("**What it means**")
        for line in insight.guidance(frame):
            st.markdown(f"- {line}")
    with st.expander("All scores"):
        st.dataframe(frame.drop(columns=["name"]), hide_index=True, column_config=SCORE_COLUMNS,
                     key="importance-table")
        st.caption(md(job.get("description") or ""))


def reports(jobs: FeatureImportanceJobs) -> list[dict[str, Any]]:
    """Every report of this backend (any tab), newest first; [] when the backend lists none."""
    try:
        return list(reversed(jobs.list_feature_importances()))
    except PersonalizerError:
        return []


def _pick() -> None:
    state.set_importance_job(state.value(state.IMPORTANCE_PICK_WIDGET))


def report_chooser(items: list[dict[str, Any]]) -> None:
    """The reports to show again, the one on screen picked."""
    if not items:
        return
    names = {j["id"]: f"{j.get('name') or j['id']} · {j.get('status')} · made {str(j.get('creationTime'))[:19]}"
             for j in items}
    current = state.importance_job()
    if current in names:  # the report on screen (just started, or picked before) is the one shown picked
        state.set_value(state.IMPORTANCE_PICK_WIDGET, current)
    st.selectbox("Reports", list(names), key=state.IMPORTANCE_PICK_WIDGET, format_func=lambda i: names.get(i, i),
                 on_change=_pick,
                 help="Every report of this backend (any tab); the newest first.")


def main() -> None:
    st.title("What drives the choices", anchor=False)
    st.caption("Which features of the visitor and of the actions the model relies on, measured on the logged "
               "events: drop useless features, trust the useful ones. Each slot card on Rank & reward also "
               "says why it got its action.")
    backend = widgets.current_backend()
    if backend is None:
        return
    span = covered(backend)
    if span is None:
        with st.container(border=True):
            st.subheader("No logged events yet", anchor=False)
            st.write("A report replays the event log. Let the simulator send a few hundred visitors, or answer "
                     "some yourself.")
            st.page_link("pages/simulator.py", label="Run the simulator", icon=":material/group:")
        return
    jobs = importances_for(backend)
    settings(jobs, span)
    chooser = st.container()  # filled once the report finished, so the status it lists is the final one
    job_id = state.importance_job()
    if job_id is None:  # nothing picked in this tab yet: the newest report of this backend, if any
        newest = reports(jobs)
        job_id = newest[0]["id"] if newest else None
        state.set_importance_job(job_id)
    if job_id is None:
        return
    try:
        job = wait(jobs, job_id)
    except PersonalizerError as exc:
        if exc.status == 404:  # deleted meanwhile (another tab): forget it
            state.set_importance_job(None)
            return
        widgets.show_error(exc, "Could not read the report")
        return
    with chooser:
        report_chooser(reports(jobs))
    result(job)


routing.require_app()
main()
