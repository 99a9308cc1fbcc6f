"""Personalizer Studio: the Streamlit entry point (page config, navigation, shared sidebar).

Run it with ``streamlit run app.py``. Pages live in ``pages/``; everything they
use lives in ``personalizer.dashboard``.
"""

import streamlit as st

from personalizer.dashboard import routing, session, sidebar

# "auto": the sidebar is open on wide screens and folded away on phones (and after navigating there).
st.set_page_config(page_title="Personalizer Studio", page_icon="🎯", layout="wide",
                   initial_sidebar_state="auto")

page = st.navigation([
    st.Page("pages/rank_and_reward.py", title="Rank & reward", icon=":material/ads_click:", default=True),
    st.Page("pages/reward_trends.py", title="Reward trends", icon=":material/monitoring:"),
    st.Page("pages/evaluate.py", title="Evaluate", icon=":material/science:"),
    st.Page("pages/what_drives.py", title="What drives the choices", icon=":material/insights:"),
    st.Page("pages/simulator.py", title="Simulator", icon=":material/group:"),
])
routing.begin_app_run()
try:
    refresh_counts = sidebar.draw()
    session.settle_experiment()
    page.run()
    refresh_counts()
finally:  # also when the page stops or reruns (Streamlit's own exceptions): the next run starts clean
    routing.end_app_run()
