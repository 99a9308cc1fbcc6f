"""Shared fixtures: a controllable clock and an engine on a temporary data directory.

Helpers for one area live in their own modules (server_fixtures.py, dashboard_fixtures.py)
so the suites do not fight over this file.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from timing import FakeClock

from personalizer.engine import LocalPersonalizer

# Fixtures of one area, shared by name (pyproject's ``pythonpath`` puts tests/ on the import path).
pytest_plugins = ["server_fixtures", "dashboard_fixtures", "pg_fixtures"]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def engine(tmp_path: Path, clock: FakeClock) -> Iterator[LocalPersonalizer]:
    eng = LocalPersonalizer(tmp_path / "data", clock=clock)
    yield eng
    eng.close()
