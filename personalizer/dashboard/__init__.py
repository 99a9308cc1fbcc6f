"""The Streamlit dashboard's building blocks.

Plain modules (no Streamlit import) hold the logic that tests call without a
browser: :mod:`.text` (safe text and formatting), :mod:`.history` (the per-tab
event history), :mod:`.ranking` (rank a visitor, answer a slot), :mod:`.trends`
(accept rates and chart data), :mod:`.charts` (altair charts),
:mod:`.simulator` (simulated visitors into the history), :mod:`.scenarios`
(built-in and uploaded scenarios), :mod:`.remote` (remote endpoint settings and
"Test connection"), :mod:`.lift` (lift over baseline from the log or a tab's
history, and the one verdict rule: winning / too early / losing),
:mod:`.experiments` (one backend + one scenario + one model: which history rows
belong together), :mod:`.labels` (display names for slots, actions and context
fields), :mod:`.offline` (the Evaluate page: time ranges, candidates, results,
the live policy, settings in words), :mod:`.log_trends` (the engine's event log as
trend rows, read incrementally), :mod:`.insight` ("why this action?" in words, the
feature-importance chart and advice), :mod:`.report` (the shareable HTML report) and
:mod:`.capabilities` (every backend is an ``interface.Personalizer``; what only the
embedded engine offers is decided there, once).

Streamlit-facing modules: :mod:`.backend` (which backend: the shared embedded
engine or a remote client via ``st.cache_resource``, plus per-engine caches for
evaluations, lift, feature-importance jobs and the log's trend rows),
:mod:`.state` (what lives in ``st.session_state``: the only module that touches it),
:mod:`.sidebar` and :mod:`.widgets` (drawing helpers the pages share),
:mod:`.session` (the run's experiment, settled between sidebar and page) and
:mod:`.routing` (every page runs inside ``app.py``, even on a fresh server's
first deep link, with public Streamlit calls only).
"""
