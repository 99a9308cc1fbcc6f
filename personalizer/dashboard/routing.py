"""Make sure every page runs inside ``app.py`` (its navigation and sidebar), with public Streamlit calls only.

Because the repository has a ``pages/`` folder, Streamlit starts in its older
"pages directory" mode and stays there until ``st.navigation`` is first called
in the server process. So the very first run of a fresh server for a deep link
such as ``/simulator`` (or a tab that reconnects after a restart, and every run
under AppTest, which resets that mode) runs ``pages/simulator.py`` on its own,
without ``app.py``: no sidebar, no backend choice, the wrong menu. ``app.py``
marks each run; a page that finds no mark runs ``app.py`` itself, whose
``st.navigation`` switches the old mode off and runs the page the URL asked
for, and then stops its own run.
"""

from __future__ import annotations

import runpy
from pathlib import Path

import streamlit as st

from . import state

APP = Path(__file__).resolve().parents[2] / "app.py"


def begin_app_run() -> None:
    """Called by ``app.py`` before the page runs."""
    state.set_app_run(True)


def end_app_run() -> None:
    """Called by ``app.py`` after the page ran."""
    state.set_app_run(False)


def require_app() -> None:
    """First line of every page: when Streamlit ran the page on its own, run it through ``app.py`` instead."""
    if state.app_run():
        return
    runpy.run_path(str(APP), run_name="__main__")
    st.stop()
