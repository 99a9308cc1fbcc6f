"""Make sure every page runs inside ``app.py`` (its navigation and sidebar).

Because the repository has a ``pages/`` folder, Streamlit's older "pages
directory" mode is on until ``st.navigation`` is first called in the server
process. So the very first run of a fresh server for a deep link such as
``/simulator`` (or a tab that reconnects after a restart) runs
``pages/simulator.py`` on its own, without ``app.py``: no sidebar, no backend
choice, the wrong menu. ``app.py`` marks each run; a page that finds no mark
switches that old mode off and reruns, which then goes through ``app.py`` and
lands on the same page.
"""

from __future__ import annotations

import logging

import streamlit as st

log = logging.getLogger(__name__)

_MARK = "studio.app_run"


def begin_app_run() -> None:
    """Called by ``app.py`` before the page runs."""
    st.session_state[_MARK] = True


def end_app_run() -> None:
    """Called by ``app.py`` after the page ran."""
    st.session_state.pop(_MARK, None)


def require_app() -> None:
    """First line of every page: rerun through ``app.py`` when Streamlit ran the page on its own."""
    if st.session_state.get(_MARK):
        return
    try:
        from streamlit.runtime.pages_manager import PagesManager

        PagesManager.uses_pages_directory = False  # what st.navigation would have done
    except Exception:  # a Streamlit without that switch: go to the app's default page instead
        log.debug("cannot leave the pages-directory mode", exc_info=True)
        st.switch_page("app.py")
    st.rerun()
