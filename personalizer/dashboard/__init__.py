"""The Streamlit dashboard's building blocks.

Plain modules (no Streamlit import) hold the logic that tests call without a
browser: :mod:`.text` (safe text and formatting), :mod:`.history` (the per-tab
event history), :mod:`.ranking` (rank a visitor, answer a slot), :mod:`.trends`
(accept rates and chart data), :mod:`.charts` (altair charts),
:mod:`.simulator` (simulated visitors into the history) and :mod:`.scenarios`
(built-in and uploaded scenarios).

Streamlit-facing modules: :mod:`.backend` (which backend, one shared engine via
``st.cache_resource``), :mod:`.state` (what lives in ``st.session_state``),
:mod:`.sidebar` and :mod:`.widgets` (drawing helpers the pages share) and
:mod:`.routing` (every page runs inside ``app.py``, even on a fresh server's
first deep link).
"""
