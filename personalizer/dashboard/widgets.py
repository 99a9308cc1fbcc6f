"""Streamlit drawing helpers the pages share: context selectors, slot cards, messages.

Every string from a scenario goes through :func:`.text.md` before it reaches an
element that renders Markdown; nothing here uses ``unsafe_allow_html``.
"""

from __future__ import annotations

import logging

import streamlit as st

from ..contract import PersonalizerError
from ..evaluation import Lift
from ..interface import Personalizer
from ..simulation import Scenario
from . import state
from .insight import WhyLines
from .labels import Labels
from .lift import LOSING, TOO_EARLY, WINNING, LiftReport, points, sentence, verdict
from .ranking import BACKEND_ERRORS, RankedEvent, SlotChoice, answer, error_text, exploration_label
from .text import currency, describe_features, is_true, lookup, md, md_block, percent, plural

log = logging.getLogger(__name__)

#: Feature names a card shows in their own place rather than in the feature line.
_CARD_FEATURES = ("category", "price", "onSale")
CARDS_PER_ROW = 3


def show_error(exc: BaseException, doing: str) -> None:
    """A backend error as a readable message with its Personalizer code; the page goes on."""
    log.warning("%s: %r", doing, exc)
    st.error(f"**{md(doing)}.** {md(error_text(exc))}", icon=":material/error:")


_MESSAGES = {"error": (st.error, ":material/error:"), "warning": (st.warning, ":material/warning:"),
             "success": (st.success, ":material/check_circle:"), "info": (st.info, ":material/info:")}


def show_message(kind: str, text: str, *, icon: bool = True) -> None:
    """One queued message (``error``, ``warning``, ``success``, ``info``; else info), Markdown-escaped."""
    element, symbol = _MESSAGES.get(kind, _MESSAGES["info"])
    element(md_block(text), icon=symbol if icon else None)


def show_flashes() -> None:
    """Messages queued by callbacks (a refused reward, a reset model) for this draw."""
    for kind, text in state.take_flashes():
        show_message(kind, text)


def current_backend() -> Personalizer | None:
    """This tab's backend, or None after saying why there is none (a remote endpoint without a URL...)."""
    try:
        return state.backend()
    except (PersonalizerError, OSError) as exc:  # no usable endpoint, or a home the engine cannot open
        log.info("no backend: %r", exc)
        st.info(f"**No backend yet.** {md(error_text(exc))}  \nChoose one in the sidebar.",
                icon=":material/settings_ethernet:")
        return None


def scenario_and_backend() -> tuple[Scenario, Personalizer] | None:
    """The sidebar's scenario and this tab's backend, or None after saying what is missing."""
    scenario = state.scenario()
    if scenario is None:
        scenario_missing()
        return None
    backend = current_backend()
    return None if backend is None else (scenario, backend)


def scenario_missing() -> None:
    """What a page shows while the sidebar has no valid scenario: every problem of an upload, or what to do."""
    problem = state.scenario_problem()
    if problem:
        st.error(f"**This scenario file cannot be used.**  \n{md_block(problem)}  \nFix the file and upload it "
                 "again, or choose a built-in scenario in the sidebar.", icon=":material/error:")
        return
    st.info("Choose a built-in scenario in the sidebar, or upload a scenario JSON file (at most 1 MB).",
            icon=":material/upload_file:")


def context_selectors(scenario: Scenario, event: RankedEvent | None, labels: Labels) -> dict[str, str]:
    """One selector per context feature of the scenario; returns the chosen context.

    A selector's value survives a visit to another page: when Streamlit has dropped
    the widget's state, it is restored from the visitor being shown.
    """
    names = list(scenario.context_options)
    columns = st.columns(len(names) + 1, vertical_alignment="bottom")
    context: dict[str, str] = {}
    for name, column in zip(names, columns, strict=False):
        key = f"ctx-{name}"
        options = scenario.context_options[name]
        if state.value(key) not in options:
            shown = event.context.get(name) if event is not None and event.scenario == scenario.name else None
            state.set_value(key, shown if shown in options else options[0])
        context[name] = column.selectbox(md(labels.field(name)), options, key=key,
                                         format_func=lambda v, n=name: labels.value(n, v))
    columns[-1].button("Next visitor", key="next-visitor", icon=":material/person_add:",
                       on_click=state.request_new_visitor, width="stretch",
                       help="Rank again for the same context with a new eventId.")
    return context


def _on_answer(event_id: str, slot_id: str, value: float) -> None:
    """Accept / Reject callback: one reward for one slot of the visitor on screen."""
    event = state.current_event()
    if event is None or event.event_id != event_id:
        state.flash("warning", "That visitor is gone (a new one was ranked); nothing was sent.")
        return
    try:
        sent = answer(state.backend(), event, slot_id, value)
    except BACKEND_ERRORS as exc:
        log.warning("reward for %s/%s failed: %r", event_id, slot_id, exc)
        state.flash("error", f"Could not send the reward for slot {slot_id}. {error_text(exc)}")
        return
    if sent:
        state.history().set_reward(event_id, slot_id, value)


def event_header(event: RankedEvent) -> None:
    """The visitor line above the cards: context, answers so far, eventId."""
    done = event.answered
    total = len(event.slots)
    if done == total:
        badge = ":green-badge[:material/done_all: All slots answered]"
    elif done:
        badge = f":blue-badge[:material/pending: {done} of {total} answered]"
    else:
        badge = ":gray-badge[:material/hourglass_empty: Waiting for answers]"
    st.markdown(f"**Visitor** · {md(state.labels().context_line(event.context))} &nbsp; {badge}")
    st.caption(f"eventId {md(event.event_id)}")
    if state.new_catalog():
        st.info("**New catalog: the model has not seen this catalog yet.** Its picks below are guesses until "
                "visitors are answered (or the simulator runs).", icon=":material/fiber_new:")


def why_section(why: WhyLines | None) -> None:
    """"Why this action?" on a card: the strongest reasons in words, or "explored", or why there are none."""
    if why is None:
        return
    st.caption("WHY THIS ACTION?")
    if why.explored:
        st.markdown(f":orange-badge[:material/explore: Explored] :small[{md(why.note)}]")
        return
    if why.lines:
        st.markdown("\n".join(f"- :small[{md(line)}]" for line in why.lines))
    if why.note:
        st.caption(md(why.note))


def slot_card(event: RankedEvent, slot: SlotChoice, why: WhyLines | None = None) -> None:
    """One slot: where it is, what was chosen (category, price, sale, features), baseline, exploration, answer."""
    with st.container(border=True):
        labels = state.labels()
        where = md(describe_features(slot.slot_features))
        st.markdown(f":material/view_quilt: **{md(labels.slot(slot.slot_id))}**"
                    + (f" :gray[· {where}]" if where else ""))
        st.caption("CHOSEN ACTION")
        st.markdown(f"### {md(labels.action(slot.action_id))}")
        if labels.action(slot.action_id) != slot.action_id:
            st.caption(f"id {md(slot.action_id)}")
        features = slot.action_features
        with st.container(horizontal=True, vertical_alignment="center", gap="small"):
            category = lookup(features, "category")
            if category is not None:
                st.badge(md(category), icon=":material/sell:", color="blue")
            price = currency(lookup(features, "price"))
            if price is not None:
                st.markdown(f"**{md(price)}**")
            if is_true(lookup(features, "onSale")):
                st.badge("On sale", icon=":material/percent:", color="green")
        rest = describe_features(features, skip=_CARD_FEATURES)
        if rest:
            st.caption(md(rest))
        same = slot.baseline_id == slot.action_id
        st.caption(f"Without personalization: **{md(labels.action(slot.baseline_id))}**"
                   + (" (the same)" if same else ""))
        icon = ":material/explore:" if slot.exploration else ":material/target:"
        line = exploration_label(slot, event, labels.action)
        if state.new_catalog() and event.learning_mode in (None, "Online"):
            line = f"A guess: the model has not seen this catalog yet · {line}"
        st.caption(f"{icon} {md(line)}")
        why_section(why)
        decided = slot.decision is not None
        with st.container(horizontal=True, gap="small"):
            st.button("Accept", key=f"accept-{slot.slot_id}", type="primary", icon=":material/thumb_up:",
                      disabled=decided, on_click=_on_answer, args=(event.event_id, slot.slot_id, 1.0))
            st.button("Reject", key=f"reject-{slot.slot_id}", icon=":material/thumb_down:",
                      disabled=decided, on_click=_on_answer, args=(event.event_id, slot.slot_id, 0.0))
        if slot.decision is not None:
            if slot.decision > 0:
                st.success("Accepted · reward 1 sent", icon=":material/check_circle:")
            else:
                st.info("Rejected · reward 0 sent", icon=":material/cancel:")


def slot_cards(event: RankedEvent, whys: dict[str, WhyLines] | None = None) -> None:
    """The slot cards in slot order, up to three per row (each with its "why" when given)."""
    per_row = min(CARDS_PER_ROW, len(event.slots))
    for start in range(0, len(event.slots), per_row):
        columns = st.columns(per_row)
        for column, slot in zip(columns, event.slots[start:start + per_row], strict=False):
            with column:
                slot_card(event, slot, (whys or {}).get(slot.slot_id))


_VERDICT_STYLE = {WINNING: ("green", ":material/trending_up:"), LOSING: ("red", ":material/trending_down:"),
                  TOO_EARLY: ("gray", ":material/hourglass_top:")}


def headline_card(lift: Lift | None, labels: Labels, where: str = "") -> None:
    """The experiment's answer in one card: personalized vs without, the difference, its interval, n, a verdict.

    ``where`` names what the numbers cover (the experiment, a simulator run).
    """
    if lift is None:
        return
    word, needed = verdict(lift)
    color, icon = _VERDICT_STYLE[word]
    with st.container(border=True, key="headline-card"):
        st.markdown(f":{color}-badge[{icon} {word.capitalize()}] &nbsp; {sentence(lift)}")
        notes = [f"First slot, {md(labels.slot(lift.slot_id))}: the unbiased headline"]
        if word == TOO_EARLY and needed:
            notes.append(f"about {plural(needed, 'more answered visitor')} would settle it")
        if where:
            notes.append(md(where))
        st.caption(" · ".join(notes))


def lift_headline(lift: Lift | None) -> None:
    """The headline card without display names (slot ids as they are)."""
    headline_card(lift, Labels())


def lift_metrics(report: LiftReport, labels: Labels | None = None) -> None:
    """Per slot: lift in accept-rate points with its 95 % interval, or why there is not enough data yet."""
    with st.container(horizontal=True, gap="medium"):
        for lift in report.lifts:
            where = "first slot, headline" if lift.position == 0 else "later slot"
            label = f"{md((labels or Labels()).slot(lift.slot_id))} · {where}"
            if not lift.enough_data:
                st.metric(label, "—", delta=f"Not enough data: {lift.reason}", delta_color="off",
                          delta_arrow="off", border=True)
                continue
            lo, hi = lift.interval
            st.metric(label, f"{points(lift.lift)} pts", border=True, delta_color="off", delta_arrow="off",
                      delta=f"95% interval {points(lo)} to {points(hi)} pts",
                      help=f"Served policy: {percent(lift.online, 1)} accepted. Baseline action "
                           f"{percent(lift.baseline, 1)} (estimated from the {lift.support:,} of {lift.events:,} "
                           f"events that showed it{'' if lift.position == 0 else ' on the whole page'}).")
