"""The shared sidebar: backend (settings, events learned, reset) and scenario (built-in or uploaded)."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import streamlit as st

from ..contract import DEFAULT_EXPLORATION, PersonalizerError
from ..evaluation import apprentice_metrics
from ..interface import LocalEngine, Personalizer
from ..simulation import Scenario
from . import state, widgets
from .backend import (
    EMBEDDED,
    KINDS,
    REMOTE,
    BackendChoice,
    configured_remote,
    embedded_choice,
    remote_choice,
    remote_client,
    remote_endpoint,
)
from .capabilities import local_engine
from .labels import Labels, builtin_labels
from .lift import apprentice_text
from .ranking import BACKEND_ERRORS, error_text
from .remote import SOURCE_TAB, ConnectionCheck, check_connection, key_caption
from .scenarios import DEFAULT_SCENARIO, MAX_UPLOAD_BYTES, builtin, builtin_names, upload_with_labels
from .text import explain_error, md, md_block, plural

log = logging.getLogger(__name__)

UPLOAD = "__upload__"
LEARNING_MODES = {
    "Online": "Online: learn and explore",
    "Apprentice": "Apprentice: serve baselines, learn to imitate",
    "LoggingOnly": "LoggingOnly: serve baselines, only log",
}
_SIDEBAR_FLASH = "studio.sidebar_flash"
_UPLOADED = "studio.uploaded"
_LAST_REMOTE = "studio.last_remote"
_ENDPOINT_SHOWN = "studio.endpoint_shown"
_KIND = "backend-kind"
_ENDPOINT = "remote-endpoint"
_KEY = "remote-key"
_APPRENTICE = "apprentice-metrics"
_LEARNING_MODE = "engine-learning-mode"
_EXPLORATION = "engine-exploration"
_SHORT_KINDS = {EMBEDDED: "Embedded", REMOTE: "Remote"}  # fits one row of the sidebar


def draw() -> Callable[[], None]:
    """Draw the sidebar, put this run's scenario in the session; return a function that refreshes the counts.

    ``app.py`` calls the returned function after the page ran, so "events
    learned" includes what the page (an answer, a simulation) just taught.
    """
    with st.sidebar:
        refresh = _backend_section()
        st.divider()
        state.set_scenario(_scenario_section())
    return refresh


# ---------------------------------------------------------------- backend

def _sidebar_flash(kind: str, text: str) -> None:
    state.value_list(_SIDEBAR_FLASH).append((kind, text))


def _apply(field: str, key: str, convert: Callable[[Any], Any]) -> None:
    """Callback of a settings widget: write one service-configuration field to the backend."""
    try:
        state.backend().update_service_configuration({field: convert(state.value(key))})
    except BACKEND_ERRORS as exc:
        log.warning("could not set %s: %r", field, exc)
        _sidebar_flash("error", f"Could not change {field}. {error_text(exc)}")


def _reset_model() -> None:
    """Callback of the confirmed reset."""
    state.set_confirming_reset(False)
    try:
        state.backend().reset_model()
    except BACKEND_ERRORS as exc:
        log.warning("could not reset the model: %r", exc)
        _sidebar_flash("error", f"Could not reset the model. {error_text(exc)}")
        return
    _sidebar_flash("success", "Model reset: it starts fresh. The event log and your history are kept.")


def _set_kind() -> None:
    """Callback of the Embedded / Remote switch: keep this tab's remote settings across switches."""
    current = state.backend_choice()
    if state.value(_KIND) == REMOTE:
        state.set_backend_choice(state.value(_LAST_REMOTE) or remote_choice(configured_remote()))
    else:
        if current.remote:
            state.set_value(_LAST_REMOTE, current)
        state.set_backend_choice(embedded_choice())


def _set_endpoint() -> None:
    """Callback of the endpoint field."""
    value = (state.value(_ENDPOINT) or "").strip()
    state.set_backend_choice(replace(state.backend_choice(), endpoint=value or None))


def _set_key() -> None:
    """Callback of the key field: take the key into this tab's choice and empty the field at once.

    The field is a password input, and it does not keep the key either: after
    entry, the key is in no widget, so the page never sends it back to the browser.
    """
    value = (state.value(_KEY) or "").strip()
    state.set_value(_KEY, "")
    if value:
        state.set_backend_choice(replace(state.backend_choice(), key=value, key_source=SOURCE_TAB))
        _sidebar_flash("success", "Key saved for this tab. It is not shown again.")


def _forget_key() -> None:
    """Callback of "Forget key": back to the configured key (secrets, env), or none."""
    configured = configured_remote()
    state.set_backend_choice(replace(state.backend_choice(), key=configured.key, key_source=configured.key_source))


def _test_connection() -> None:
    """Callback of "Test connection": health, then an authenticated call; the result stays until the next change."""
    choice = state.backend_choice()
    try:
        client = remote_client(remote_endpoint(choice), choice.key or None)
    except PersonalizerError as exc:  # no usable URL
        state.set_connection_check(ConnectionCheck(False, choice.endpoint or "", (error_text(exc),), exc.code))
        return
    state.set_connection_check(check_connection(client, client.endpoint, has_key=bool(choice.key)))


def _remote_settings(choice: BackendChoice) -> None:
    """Endpoint, key (write-only) and "Test connection" for a remote backend."""
    if not state.has_value(_ENDPOINT) or state.value(_ENDPOINT_SHOWN) != choice.endpoint:
        state.set_value(_ENDPOINT, choice.endpoint or "")  # the field shows this tab's endpoint
        state.set_value(_ENDPOINT_SHOWN, choice.endpoint)
    st.text_input("Endpoint URL", key=_ENDPOINT, on_change=_set_endpoint, placeholder="http://127.0.0.1:8000",
                  help="Base URL of a Personalizer-compatible service, e.g. `python -m personalizer serve`. "
                       "Set it once in .streamlit/secrets.toml or PERSONALIZER_ENDPOINT.")
    placeholder = "Key set · type to replace it" if choice.key else "Paste the key, press Enter"
    st.text_input("Subscription key", key=_KEY, type="password", on_change=_set_key, placeholder=placeholder,
                  autocomplete="off",
                  help="Sent as Ocp-Apim-Subscription-Key. Once entered it is kept for this tab only and never "
                       "shown again. Set it once in .streamlit/secrets.toml or PERSONALIZER_KEY.")
    st.caption(md(key_caption(choice.key is not None and choice.key != "", choice.key_source)))
    with st.container(horizontal=True, gap="small"):
        st.button("Test connection", key="test-connection", icon=":material/network_check:",
                  on_click=_test_connection, help="Health check, then one call that needs the key.")
        if choice.key and choice.key_source == SOURCE_TAB:
            st.button("Forget key", key="forget-key", type="tertiary", on_click=_forget_key,
                      help="Drop the key entered in this tab (back to the configured one, if any).")
    check = state.connection_check()
    if check is not None:
        lines = "  \n".join(md(line) for line in check.lines)
        if check.ok:
            st.success(f"**Connected** to {md(check.endpoint)}  \n{lines}", icon=":material/check_circle:")
        else:
            st.error(f"**Connection failed** ({md(check.code or 'error')})  \n{lines}", icon=":material/error:")


def _apprentice(engine: LocalEngine, learned: int) -> dict[str, Any]:
    """Apprentice metrics of the engine's recent events, recomputed only when it learned more."""
    cached = state.value(_APPRENTICE)
    if cached is None or cached[0] != learned:
        cached = (learned, apprentice_metrics(engine, recent=500))
        state.set_value(_APPRENTICE, cached)
    return cached[1]


def _backend_section() -> Callable[[], None]:
    """Which backend (and its connection settings), its learning settings, events learned, reset."""
    st.subheader("Backend", anchor=False)
    choice = state.backend_choice()
    _backend_kind(choice)
    for kind, text in state.take_value(_SIDEBAR_FLASH, []):
        widgets.show_message(kind, text, icon=False)
    opened = _open_backend(choice)
    if opened is None:
        return lambda: None
    backend, config = opened
    shared = "every app using this endpoint" if choice.remote else "every tab"
    _learning_settings(config, shared)
    refresh = _counts(backend, config)
    refresh()
    _reset_model_buttons(shared)
    return refresh


def _backend_kind(choice: BackendChoice) -> None:
    """The Embedded / Remote switch, then the remote settings or the embedded data directory."""
    state.set_value(_KIND, choice.kind)
    st.segmented_control("Backend", list(KINDS), key=_KIND, required=True, format_func=_SHORT_KINDS.get,
                         on_change=_set_kind, label_visibility="collapsed", width="stretch",
                         help="Embedded: the engine in this process (zero configuration). Remote: any "
                              "Personalizer-compatible endpoint, such as this project's REST server.")
    if choice.remote:
        _remote_settings(choice)
    else:
        st.caption(f"Data in {md(choice.home or '')}")


def _open_backend(choice: BackendChoice) -> tuple[Personalizer, dict[str, Any]] | None:
    """This tab's backend and its service configuration, or None after saying why it is not available."""
    try:
        backend = state.backend()
        config = backend.get_service_configuration()
    except BACKEND_ERRORS as exc:
        log.warning("backend %s not available: %r", choice.label, exc)
        if not choice.remote:
            st.error(f"The backend is not available. {md(error_text(exc))}", icon=":material/error:")
        elif (check := state.connection_check()) is None or check.ok:  # a failed check already says why
            code = exc.code if isinstance(exc, PersonalizerError) else type(exc).__name__
            meaning = explain_error(code) or "Check the endpoint and key, then Test connection."
            st.warning(f"Not connected. {md(meaning)} :gray[({md(code)})]", icon=":material/link_off:")
        state.set_service_config(None)
        return None
    state.set_service_config(config)
    return backend, config


def _learning_settings(config: dict[str, Any], shared: str) -> None:
    """Learning mode and exploration: the backend's values (shared by every tab), not this tab's last ones."""
    state.set_value(_LEARNING_MODE, config.get("learningMode", "Online"))
    state.set_value(_EXPLORATION, round(100 * float(config.get("explorationPercentage", DEFAULT_EXPLORATION))))
    st.selectbox("Learning mode", list(LEARNING_MODES), key=_LEARNING_MODE,
                 format_func=LEARNING_MODES.get, on_change=_apply,
                 args=("learningMode", _LEARNING_MODE, str),
                 help=f"Shared by {shared}. Apprentice and LoggingOnly show each slot's baseline action.")
    st.slider("Exploration", 0, 100, key=_EXPLORATION, format="%d%%", on_change=_apply,
              args=("explorationPercentage", _EXPLORATION, lambda v: v / 100),
              help=f"Share of ranks that try something other than the model's top pick (shared by {shared}).")


def _counts(backend: Personalizer, config: dict[str, Any]) -> Callable[[], None]:
    """A placeholder for "events learned", and the function that fills it (again after the page ran)."""
    counts = st.empty()
    engine = local_engine(backend)

    def refresh() -> None:
        try:
            stats = backend.stats()
        except BACKEND_ERRORS as exc:
            log.warning("counts unavailable: %r", exc)
            text = "This endpoint does not report counts." if isinstance(exc, PersonalizerError) \
                and exc.status == 404 else f"Counts unavailable: {md(error_text(exc))}"
            counts.caption(text)
            return
        learned = int(stats.get("learned", 0))
        experiment = state.experiment()
        base = experiment.learned_base if experiment is not None else None
        with counts.container():
            if base is not None and base <= learned:
                st.markdown(f"**{plural(learned - base, 'event')}** learned since the model changed",
                            help="Events the model trained on since its last reset or policy change seen from "
                                 "this tab (an applied policy starts from the model its replay trained).")
                st.caption(f"{plural(learned, 'event')} learned in the log in all · "
                           f"{plural(int(stats.get('pending', 0)), 'visitor')} open")
            else:
                st.markdown(f"**{plural(learned, 'event')}** learned",
                            help="Events the model trained on.")
                st.caption(f"{plural(int(stats.get('pending', 0)), 'visitor')} open")
            if config.get("learningMode") == "Apprentice" and engine is not None:
                st.caption(md(apprentice_text(_apprentice(engine, learned))))

    return refresh


def _reset_model_buttons(shared: str) -> None:
    """"Reset model…", then its confirmation."""
    if not state.confirming_reset():
        st.button("Reset model…", key="reset-model", icon=":material/restart_alt:",
                  on_click=state.set_confirming_reset, args=(True,),
                  help="Start a fresh model. The event log and this tab's history are kept.")
        return
    st.warning(f"Reset the model? It forgets everything it learned, for {shared}. "
               "The event log is kept.", icon=":material/warning:")
    with st.container(horizontal=True, gap="small"):
        st.button("Yes, reset", key="reset-confirm", type="primary", on_click=_reset_model)
        st.button("Cancel", key="reset-cancel", on_click=state.set_confirming_reset, args=(False,))


# ---------------------------------------------------------------- scenario

def _label(name: str) -> str:
    if name == UPLOAD:
        return "Upload a scenario JSON…"
    return f"{name} (quickstart catalog)" if name == DEFAULT_SCENARIO else name


def _uploaded(data: bytes, filename: str) -> tuple[Scenario, Labels]:
    """Parse an upload once per content (reruns reuse it)."""
    digest = hashlib.sha256(data).hexdigest()
    cached = state.value(_UPLOADED)
    if cached is not None and cached[0] == digest:
        if isinstance(cached[1], Exception):
            raise cached[1]
        return cached[1]
    try:
        loaded = upload_with_labels(data, filename)
    except ValueError as exc:
        state.set_value(_UPLOADED, (digest, exc))
        raise
    state.set_value(_UPLOADED, (digest, loaded))
    return loaded


def _scenario_section() -> Scenario | None:
    st.subheader("Scenario", anchor=False)
    state.set_scenario_problem(None)
    state.set_labels(Labels())
    options = [*builtin_names(), UPLOAD]
    if state.value(state.SCENARIO_WIDGET) not in options:
        state.set_value(state.SCENARIO_WIDGET, DEFAULT_SCENARIO if DEFAULT_SCENARIO in options else options[0])
    choice = st.selectbox("Catalog and visitors", options, key=state.SCENARIO_WIDGET, format_func=_label,
                          help="The actions, slots and context selectors of the rank page, and the hidden "
                               "preferences of simulated visitors.")
    scenario: Scenario | None = None
    if choice == UPLOAD:
        upload = st.file_uploader("Scenario JSON", type=["json"], key="scenario-upload",
                                  max_upload_size=max(1, MAX_UPLOAD_BYTES // 1_000_000),
                                  help="Same format as personalizer/scenarios/*.json, plus an optional "
                                       "\"display\" block of names for slots, actions and context fields.")
        if upload is None:
            st.caption("Upload a file to use it; the pages wait for it.")
            return None
        try:
            scenario, labels = _uploaded(upload.getvalue(), upload.name)
        except ValueError as exc:
            state.set_scenario_problem(str(exc))
            st.error("This file cannot be used: the page lists why.", icon=":material/error:")
            return None
        state.set_labels(labels)
        st.success(f"Loaded {md(scenario.name)}", icon=":material/check_circle:")
    else:
        try:
            scenario = builtin(choice)
        except ValueError as exc:
            state.set_scenario_problem(str(exc))
            st.error(md_block(exc))
            return None
        state.set_labels(builtin_labels(choice))
    if scenario.description:
        with st.expander("About this scenario"):
            st.caption(md(scenario.description))
    return scenario
