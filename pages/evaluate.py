"""Evaluate: would the baseline, a random page or other learning settings have done better? From the log.

On any backend: the embedded engine runs evaluations in this process; a remote server (an embedded
``serve``, or any replica of a scaled-out deployment whose trainer runs them) through its API.
"""

import contextlib
import time
from datetime import UTC, datetime
from typing import Any

import streamlit as st

from personalizer.contract import PersonalizerError
from personalizer.dashboard import charts, offline, policy_history, routing, state, widgets
from personalizer.dashboard.backend import evaluations_for, log_lift
from personalizer.dashboard.capabilities import EvaluationJobs, local_engine
from personalizer.dashboard.lift import LATER_SLOTS_CAVEAT, from_history
from personalizer.dashboard.offline import EvaluationView
from personalizer.dashboard.ranking import BACKEND_ERRORS, error_text
from personalizer.dashboard.text import md, percent, plural
from personalizer.evaluation import PRESET_POLICIES
from personalizer.interface import Personalizer

RESULT_COLUMNS = {
    "policy": st.column_config.TextColumn("Policy", width="medium", pinned=True),
    "estimate": st.column_config.ProgressColumn("Estimated accept rate", format="%.1f%%", min_value=0.0,
                                                max_value=100.0, width="medium",
                                                help="Self-normalized IPS estimate from the logged events."),
    "interval": st.column_config.TextColumn("95% interval"),
    "vsOnline": st.column_config.NumberColumn("vs online", format="%+.1f pts",
                                              help="Difference to what the served policy earned."),
    "support": st.column_config.NumberColumn("Events informing it", format="%.0f%%",
                                             help="Share of events where this policy could have shown what was "
                                                  "shown: only those carry its estimate."),
    "best": st.column_config.CheckboxColumn("Best", help="Best first-slot estimate among online and candidates."),
    "arguments": st.column_config.TextColumn("Vowpal Wabbit arguments", width="large"),
}
INTERVAL_COLUMNS = {
    "policy": st.column_config.TextColumn("Policy", pinned=True),
    "snips": st.column_config.NumberColumn("SNIPS", format="%.1f%%"),
    "headline": st.column_config.TextColumn("Cressie-Read 95 % (headline)"),
    "gaussian": st.column_config.TextColumn("Gaussian 95 %"),
    "bernstein": st.column_config.TextColumn("Bernstein 95 %"),
    "dr": st.column_config.NumberColumn("DR", format="%.1f%%"),
    "drInterval": st.column_config.TextColumn("DR 95 %"),
    "effective": st.column_config.NumberColumn("Effective events", format="%.0f"),
}


def empty_state(events: int) -> None:
    """Too few rewarded events to estimate anything: say so and point to where events come from."""
    with st.container(border=True):
        st.subheader("Not enough logged events yet", anchor=False)
        st.write(f"An offline evaluation replays the engine's event log: who saw what, with which probability, "
                 f"and the reward. It needs at least {offline.MIN_EVENTS} rewarded events; the log has "
                 f"{events:,}. Let the simulator send a few hundred visitors, or answer some yourself.")
        with st.container(horizontal=True):
            st.page_link("pages/simulator.py", label="Run the simulator", icon=":material/group:")
            st.page_link("pages/rank_and_reward.py", label="Rank & reward", icon=":material/ads_click:")


#: Answers of an endpoint that has no evaluations API (a Personalizer look-alike).
_NO_EVALUATIONS = frozenset({404, 405, 501})


def unavailable_state(exc: BaseException, doing: str) -> None:
    """No evaluations from this backend: why (an endpoint without the API, or an error); the tab's lift still shows."""
    if isinstance(exc, PersonalizerError) and exc.status in _NO_EVALUATIONS:
        st.info(f"**This endpoint does not serve offline evaluations.** {md(error_text(exc))}  \nThis project's "
                "server does (embedded or scaled out); or switch to the embedded engine in the sidebar.",
                icon=":material/cloud_off:")
    else:
        widgets.show_error(exc, doing)
    experiment = state.experiment()
    df = state.history().frame()
    rows = df[df["experiment"] == experiment.number] if experiment is not None else df.iloc[0:0]
    report = from_history(rows)
    if report.headline is not None and report.events:
        widgets.headline_card(report.headline, state.labels(),
                              where=f"this tab's visitors of experiment #{experiment.number} on this endpoint")


def catalog_of_sidebar() -> tuple[frozenset[str], tuple[str, ...]] | None:
    """The sidebar scenario's catalog as the log filter wants it (action ids, slot ids in order)."""
    scenario = state.scenario()
    return None if scenario is None else (frozenset(scenario.action_ids), tuple(scenario.slot_ids))


def model_start(backend: Personalizer) -> float | None:
    """When the current model started (its last reset, import or policy change), epoch seconds."""
    try:
        return offline.parse_timestamp(backend.model_properties().get("creationTime"))
    except BACKEND_ERRORS:
        return None


def settings(manager: EvaluationJobs, covered: tuple[float, float], since: float | None) -> dict[str, Any] | None:
    """Time range and candidates; "Run evaluation" queues one (on the manager's worker, or the server's).

    Returns the evaluation just created (None when none was).
    """
    with st.container(border=True):
        left, right = st.columns([1, 2], gap="large")
        with left:
            choice = st.selectbox("Time range", offline.range_choices(since), key="eval-range",
                                  help="Since last change: the events the current model served (since its "
                                       "last reset or policy change).")
            dates = None
            if choice == offline.RANGE_CUSTOM:
                lo, hi = (datetime.fromtimestamp(t, UTC).date() for t in covered)
                picked = st.date_input("Days (UTC)", value=(lo, hi), key="eval-dates")
                dates = list(picked) if isinstance(picked, (list, tuple)) else [picked]
            st.caption(f"The log covers {offline.range_label(*covered)}.")
        with right:
            presets = st.pills("Candidate policies", list(PRESET_POLICIES), selection_mode="multi", wrap=True,
                               default=list(PRESET_POLICIES), key="eval-presets",
                               help="Learning settings, each replayed over the log in a fresh model.  \n"
                                    + "  \n".join(f"**{n}**: `{a}`" for n, a in PRESET_POLICIES.items()))
            custom = st.text_area("Custom policies (optional)", key="eval-custom", height=68,
                                  placeholder="Faster learning: --ccb_explore_adf --epsilon 0.1 -l 0.5 -q ::",
                                  help="One a line: `name: arguments`, or just the Vowpal Wabbit arguments. "
                                       "Without --epsilon a policy explores at the engine's current setting.")
        run = st.button("Run evaluation", key="eval-run", type="primary", icon=":material/play_arrow:")
    if not run:
        return None
    try:
        policies = offline.candidate_policies(presets, custom)
        start, end = offline.time_window(choice, covered, time.time(), dates, since)
        name = f"{choice} · {len(policies)} candidate{'s' if len(policies) != 1 else ''}"
        created = manager.create(None, name, start, end, policies)
    except ValueError as exc:
        st.error(md(exc), icon=":material/error:")
        return None
    except BACKEND_ERRORS as exc:
        st.error(f"**The evaluation was refused.** {md(error_text(exc))}", icon=":material/error:")
        return None
    state.set_evaluation_id(created["id"])
    return created


@st.fragment(run_every=0.5)
def progress(manager: EvaluationJobs, evaluation_id: str) -> None:
    """Polls the background evaluation; the page is redrawn in full once it finished (or cannot be read)."""
    try:
        info = manager.get(evaluation_id)
    except BACKEND_ERRORS:
        info = {"status": "deleted"}
    if info["status"] != "pending":
        st.rerun()
    done = float(info.get("progress") or 0.0)
    with st.container(horizontal=True, vertical_alignment="center"):
        st.progress(done, text=f"Evaluating {md(info.get('name', ''))} · {done:.0%}")
        st.button("Cancel", key="eval-cancel", on_click=cancel, args=(manager, evaluation_id))


def cancel(manager: EvaluationJobs, evaluation_id: str) -> None:
    """Callback of "Cancel": stop and forget the running evaluation."""
    with contextlib.suppress(PersonalizerError):  # already finished and deleted elsewhere
        manager.delete(evaluation_id)
    state.set_evaluation_id(None)


def delete(manager: EvaluationJobs, evaluation_id: str, name: str) -> None:
    """Callback of "Delete": remove a finished evaluation (for every tab: it is the backend's)."""
    try:
        manager.delete(evaluation_id)
    except BACKEND_ERRORS as exc:
        # Deleted elsewhere meanwhile (404): gone either way.
        if not (isinstance(exc, PersonalizerError) and exc.status == 404):
            state.flash("error", f"Could not delete {name}. {error_text(exc)}")
            return
    state.set_evaluation_id(None)
    state.flash("success", f"Deleted the evaluation {name}.")


def apply(manager: EvaluationJobs, evaluation_id: str, policy: str, in_process: bool) -> None:
    """Callback of "Apply": the backend takes the policy's learning settings (in process: and its replay's model)."""
    try:
        applied = manager.apply(evaluation_id, policy, who="person")
    except BACKEND_ERRORS as exc:
        state.flash("error", f"Could not apply {policy}. {error_text(exc)}")
        return
    arguments = str(applied.get("arguments", ""))
    state.set_applied_policy({"name": policy, "arguments": arguments})
    if in_process:
        state.flash("success", f"Applied {policy}: the engine now {offline.describe_arguments(arguments)}. It "
                               "starts from the model the replay trained; a new experiment begins.")
    else:  # the server starts from the replay's model while it holds it (its own, or the trainer's that ran it)
        state.flash("success", f"Applied {policy}: the server now {offline.describe_arguments(arguments)}, "
                               "starting from the model the replay trained while it still holds it. "
                               "A new experiment begins.")


def pick_evaluation(listed_oldest_first: list[dict[str, Any]]) -> str | None:
    """The evaluation to show: this tab's, else the newest; a selector when there are several."""
    listed = list(reversed(listed_oldest_first))  # newest first
    ids = [e["id"] for e in listed]
    current = state.evaluation_id()
    if current not in ids:
        current = ids[0] if ids else None
        state.set_evaluation_id(current)
    if len(ids) > 1:
        names = {e["id"]: f"{e['name']} · {(e.get('creationTime') or '')[:19].replace('T', ' ')} UTC"
                 for e in listed}
        state.set_value(state.EVALUATION_PICK_WIDGET, current)
        st.selectbox("Evaluation", ids, key=state.EVALUATION_PICK_WIDGET, format_func=names.get,
                     on_change=lambda: state.set_evaluation_id(state.value(state.EVALUATION_PICK_WIDGET)))
    return current


def delete_button(manager: EvaluationJobs, evaluation_id: str, name: str) -> None:
    """A quiet "Delete" for the evaluation shown."""
    st.button("Delete", key="eval-delete", type="tertiary", icon=":material/delete:",
              on_click=delete, args=(manager, evaluation_id, name),
              help="Remove this evaluation and its results (for every tab and app using this backend).")


#: Statuses (v1.1 and the 2022 listing's words) after which an evaluation's results never change.
_SETTLED = frozenset({"completed", "failed", "optimalPolicyApplied", "onlinePolicyRetained",
                      "Succeeded", "Failed", "OptimalPolicyApplied", "OnlinePolicyRetained"})


@st.cache_data(show_spinner=False, max_entries=32)
def _settled(backend_id: int, evaluation_id: str, status: str, created: str | None,
             _manager: EvaluationJobs) -> tuple[dict[str, Any], EvaluationView | None]:
    """A settled evaluation, read once per status: its answer carries every time bucket (MBs for a
    long log; over HTTP 0.1-0.2 s a read), the page needs its totals (the view) and its fields."""
    info = _manager.get(evaluation_id)
    return {k: v for k, v in info.items() if k != "policyResults"}, EvaluationView.from_wire(info)


def evaluation_answer(manager: EvaluationJobs, backend: Personalizer, evaluation_id: str,
                      listed: dict[str, Any]) -> tuple[dict[str, Any], EvaluationView | None]:
    """The evaluation's fields and results: read again only while it runs or when the listing's status moved."""
    status = str(listed.get("status", ""))
    if status in _SETTLED:
        return _settled(id(backend), evaluation_id, status, listed.get("creationTime"), manager)
    info = manager.get(evaluation_id)
    return info, EvaluationView.from_wire(info)


def results(manager: EvaluationJobs, backend: Personalizer, evaluation_id: str, listed: dict[str, Any],
            covered: tuple[float, float] | None) -> None:
    """A finished evaluation: the lift sentence, the chart and table for one slot, "Apply" and "Delete"."""
    info, result = evaluation_answer(manager, backend, evaluation_id, listed)
    if info["status"] == "pending":
        progress(manager, evaluation_id)
        return
    if info["status"] == "failed":
        st.error(f"**The evaluation failed.** {md(info.get('message', ''))}", icon=":material/error:")
        delete_button(manager, evaluation_id, str(info.get("name", evaluation_id)))
        return
    if result is None:
        return
    first = offline.headline_slot(result)
    with st.container(horizontal=True, vertical_alignment="bottom"):
        st.subheader("Results", anchor=False)
        delete_button(manager, evaluation_id, str(info["name"]))
    shown_end = min(result.end, covered[1]) if result.end is not None and covered else result.end
    st.caption(f"{md(info['name'])} · {plural(result.events, 'event')}, "
               f"{offline.range_label(result.start, shown_end)}")
    newer = offline.log_grew(covered, result.end, info.get("creationTime"))
    if newer:
        st.warning(f"**These results are older than the log.** {md(newer)} Run the evaluation again for numbers "
                   "that include them.", icon=":material/update:")
    in_process = local_engine(backend) is not None
    widgets.headline_card(log_lift(backend, result.start, result.end, catalog_of_sidebar()).headline,
                          state.labels(), where="the evaluated events of the sidebar's catalog, from the "
                                                + ("engine's log" if in_process else "server's log"))
    if result.deterministic_share >= 0.005:  # below that, a rounded "0 %" would only alarm
        st.warning(f"{result.deterministic_share:.1%} of the logged slots were served without exploration "
                   "(Apprentice, LoggingOnly or 0 % exploration). There, only policies that pick the same action "
                   "can be estimated, so the other policies' estimates rest on the remaining slots.",
                   icon=":material/warning:")
    slots = offline.slot_order(result)
    slot = first
    if len(slots) > 1:
        slot = st.segmented_control("Slot", slots, default=first, key="eval-slot", required=True,
                                    format_func=lambda s: f"{s} (headline)" if s == first else s) or first
    frame = offline.result_frame(result, slot)
    live = offline.live_candidate(result, backend.get_policy())
    if live is not None:
        frame["policy"] = [f"{p} (live)" if p == live else p for p in frame["policy"]]
    st.altair_chart(charts.policy_estimates(frame, offline.KIND_COLORS, offline.KIND_ONLINE), key="chart-policies")
    if slot != first:
        st.caption(f"Slot {md(slot)} is filled after {md(first)}. " + LATER_SLOTS_CAVEAT
                   + " The best policy is chosen on the first slot.")
    st.dataframe(offline.table_frame(frame), hide_index=True, column_config=RESULT_COLUMNS, key="eval-table",
                 column_order=list(RESULT_COLUMNS))
    with st.expander("Details: every interval, and the doubly robust estimate"):
        st.caption("Headline: Cressie-Read empirical likelihood, which holds its 95 % at every sample size. "
                   "The Gaussian (SNIPS) and empirical-Bernstein intervals are shown for comparison; DR adds the "
                   "replayed learner's reward model to the estimate. Effective events: how many events the "
                   "estimate really rests on.")
        st.dataframe(offline.interval_details(result, slot), hide_index=True, key="eval-intervals",
                     column_config=INTERVAL_COLUMNS)
    apply_section(manager, evaluation_id, result, info, live, in_process)


def apply_section(manager: EvaluationJobs, evaluation_id: str, result: EvaluationView, info: dict[str, Any],
                  live: str | None, in_process: bool) -> None:
    """The best candidate with its one-click "Apply" (or why there is nothing to apply), and the others.

    The policy the engine already runs is never offered again.
    """
    widgets.show_flashes()  # "Applied ...": next to the button that did it
    applied = state.applied_policy()
    if applied is not None:
        with st.expander("Details: the Vowpal Wabbit arguments now running"):
            st.code(applied["arguments"], language=None)
    if live is not None:
        runs = "the engine runs" if in_process else "the server runs"
        st.caption(f":material/radio_button_checked: **{md(live)}** is live: {runs} these settings now.")
    best = offline.best_candidate(result)
    if best is not None and best == live:
        st.info(f"The live policy, {md(live)}, is estimated best among these candidates: nothing to apply.",
                icon=":material/verified:")
        best = None
        others = [c for c in offline.candidates(result) if c != live]
        if others:
            with st.expander("Apply another candidate"):
                other = st.selectbox("Candidate", others, key="eval-apply-other")
                st.button("Apply", key="eval-apply-other-button", on_click=apply,
                          args=(manager, evaluation_id, other, in_process))
        return
    head = offline.result_frame(result).set_index("policy")
    if info["status"] == "optimalPolicyApplied":
        st.caption(":material/check_circle: A policy from this evaluation was applied.")
    if best is not None:
        row = head.loc[best]
        online = head.loc["Online", "estimate"] if "Online" in head.index else float("nan")
        sure = row["low"] > online  # its interval clears what was served
        st.markdown(f"**Best: {md(best)}**, estimated {percent(row['estimate'], 1)} "
                    f"({percent(row['low'], 1)} to {percent(row['high'], 1)}) on slot "
                    f"{md(state.labels().slot(offline.headline_slot(result)))}, "
                    f"{row['vsOnline']:+.1f} points against the online policy"
                    + ("." if sure else ", within this log's noise: more events would tell for sure."))
        st.button(f"Apply {md(best)}", key="eval-apply", type="primary", icon=":material/published_with_changes:",
                  on_click=apply, args=(manager, evaluation_id, best, in_process),
                  help="Every tab and app using this engine switches to these learning settings, starting from "
                       "the model the replay trained." if in_process else
                       "Every tab and app using this server switches to these learning settings, starting "
                       "from the model the replay trained while the server (or the trainer that ran it) holds it.")
    else:
        st.info("The online policy is estimated best among these candidates: nothing to apply.",
                icon=":material/verified:")
    others = [c for c in offline.candidates(result) if c not in (best, live)]
    if others:
        with st.expander("Apply another candidate"):
            other = st.selectbox("Candidate", others, key="eval-apply-other")
            st.button("Apply", key="eval-apply-other-button", on_click=apply,
                      args=(manager, evaluation_id, other, in_process))


def main() -> None:
    st.title("Evaluate", anchor=False)
    st.caption("Would no personalization, a random page or other learning settings have done better? Each is "
               "estimated from the logged events, offline: no visitor sees anything. Intervals are 95 %.")
    backend = widgets.current_backend()
    if backend is None:
        return
    try:
        stats = backend.stats()
        covered = offline.log_range(backend.log_properties())
    except BACKEND_ERRORS as exc:  # a look-alike without this server's log extensions, or no answer
        unavailable_state(exc, "Could not read the event log")
        return
    events = int(stats.get("learned", 0)) + int(stats.get("logged", 0))
    if events < offline.MIN_EVENTS or covered is None:
        empty_state(events)
        policy_history.section(backend)
        return
    try:
        manager = evaluations_for(backend)
        listed = manager.details()
    except BACKEND_ERRORS as exc:
        unavailable_state(exc, "Could not list the offline evaluations")
        policy_history.section(backend)
        return
    created = settings(manager, covered, model_start(backend))
    if created is not None:
        listed.append(created)
    evaluation_id = pick_evaluation(listed)
    if evaluation_id is not None:
        try:
            results(manager, backend, evaluation_id, next(e for e in listed if e["id"] == evaluation_id), covered)
        except BACKEND_ERRORS as exc:  # the server went away, or the evaluation was deleted meanwhile
            widgets.show_error(exc, "Could not show the evaluation")
    widgets.show_flashes()  # anything the results did not show (a failed apply of a deleted evaluation)
    policy_history.section(backend)


routing.require_app()
main()
