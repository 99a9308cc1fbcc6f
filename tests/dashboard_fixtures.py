"""Fixtures and helpers for the dashboard's AppTest tests.

tests/conftest.py registers this module as a pytest plugin, so test modules use the fixtures by name;
the fixtures are named ``app`` and ``studio_home``.

Each test gets its own data directory (``PERSONALIZER_HOME`` in a temp dir), so
the shared ``st.cache_resource`` engine is a fresh one; it is released (closed)
after the test. Nothing of Streamlit's internals is patched: AppTest runs a page
on its own (the old pages-directory mode), and the page runs itself through
``app.py`` (see ``personalizer/dashboard/routing.py``), as on a fresh server.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pytest
import streamlit as st
from server_fixtures import KEY, ThreadedServer
from streamlit.testing.v1 import AppTest

from personalizer.dashboard.backend import clear_caches, embedded_engine, evaluations_for, resolve_home
from personalizer.engine import LocalPersonalizer

ROOT = Path(__file__).resolve().parents[1]

APP = str(ROOT / "app.py")
RANK = "pages/rank_and_reward.py"
TRENDS = "pages/reward_trends.py"
SIMULATOR = "pages/simulator.py"
EVALUATE = "pages/evaluate.py"
SLOTS = ["BigHeroPosition", "SmallSidebar"]


@pytest.fixture(name="studio_home")
def studio_home_fixture(tmp_path: Path) -> Iterator[Path]:
    """A fresh data directory for the embedded engine; the cached engine is closed afterwards."""
    home = tmp_path / "personalizer-home"
    with pytest.MonkeyPatch.context() as patch:  # its own patcher: tests may undo theirs freely
        patch.setenv("PERSONALIZER_HOME", str(home))
        for name in ("PERSONALIZER_ENDPOINT", "PERSONALIZER_KEY"):  # zero configuration: the embedded engine
            patch.delenv(name, raising=False)
        # Nor a developer's .streamlit/secrets.toml (a test's own ``at.secrets`` still applies).
        patch.setattr(st.secrets, "_secrets", {})
        yield home
        clear_caches()


@pytest.fixture(name="app")
def app_fixture(studio_home: Path) -> AppTest:
    """The dashboard after its first run (the rank page, a visitor ranked)."""
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    assert not at.exception, at.exception
    return at


@pytest.fixture(name="server")
def server_fixture(tmp_path: Path) -> Iterator[ThreadedServer]:
    """The REST server (uvicorn thread, key ``KEY``) around its own engine and data directory."""
    engine = LocalPersonalizer(tmp_path / "server-data")
    try:
        with ThreadedServer(engine, key=KEY) as server:
            yield server
    finally:
        engine.close()


def shared_engine() -> LocalPersonalizer:
    """The shared engine the app in this test uses."""
    return embedded_engine(resolve_home())


def history(at: AppTest) -> pd.DataFrame:
    """The tab's history as a DataFrame."""
    return at.session_state["studio.history"].frame()


def event_id(at: AppTest) -> str:
    """The eventId of the visitor on the rank page."""
    return at.session_state["studio.event"].event_id


def raw_texts(at: AppTest) -> str:
    """All markdown, caption, alert and metric text of the last run as sent (Markdown source)."""
    parts: list[str] = []
    for kind in ("markdown", "caption", "error", "warning", "success", "info", "title", "subheader"):
        parts.extend(str(e.value) for e in getattr(at, kind))
    parts.extend(f"{m.label} {m.value}" for m in at.metric)
    return "\n".join(parts)


def unescape(markdown: str) -> str:
    """Markdown source with backslash escapes removed: what a person reads."""
    return re.sub(r"\\([!-/:-@\[-`{-~])", r"\1", markdown)


def texts(at: AppTest) -> str:
    """:func:`raw_texts` as a person reads it (escapes removed)."""
    return unescape(raw_texts(at))


def charts(at: AppTest) -> list[Any]:
    """The Vega-Lite chart elements of the main area (altair charts), in page order."""
    return [e for e in at.main if getattr(e, "type", None) == "vega_lite_chart"]


def spec(chart: Any) -> dict[str, Any]:
    """A chart's Vega-Lite spec, read from the element proto."""
    return json.loads(chart.proto.spec)


def chart_data(chart: Any) -> pd.DataFrame:
    """All rows of a chart's datasets (Arrow in the proto), concatenated."""
    frames = [pa.ipc.open_stream(d.data.data).read_all().to_pandas() for d in chart.proto.datasets]
    if chart.proto.data.data:
        frames.append(pa.ipc.open_stream(chart.proto.data.data).read_all().to_pandas())
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def run_simulator(at: AppTest, visitors: int = 200) -> AppTest:
    """Open the simulator page and run it for ``visitors`` visitors."""
    at.switch_page(SIMULATOR).run()
    at.number_input(key="sim-visitors").set_value(visitors)
    at.button(key="sim-run").click().run()
    assert not at.exception, at.exception
    return at


def run_evaluation(at: AppTest) -> AppTest:
    """Click "Run evaluation", wait for the background worker, and redraw (what the progress fragment does)."""
    at.button(key="eval-run").click().run()
    assert not at.exception, at.exception
    evaluation_id = at.session_state["studio.evaluation"]
    assert evaluations_for(shared_engine()).wait(evaluation_id, timeout=60)["status"] == "completed"
    at.run()
    assert not at.exception, at.exception
    return at


def metric_values(at: AppTest) -> dict[str, str]:
    """The metrics of the last run, label (as a person reads it) to value."""
    return {unescape(m.label): m.value for m in at.metric}


def layers(chart_spec: dict[str, Any]) -> list[dict[str, Any]]:
    """A Vega-Lite spec's layers (the spec itself when it has none)."""
    return chart_spec.get("layer", [chart_spec])
